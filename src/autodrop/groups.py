"""The optimizer's param groups as AutoDrop sees them: their parameters, LRs, base LRs and floors.

Groups may be added while training (``optimizer.add_param_group``, e.g. unfreezing
for fine-tuning): a new group's base LR is its ``initial_lr`` and its floor the
common ``min_lr``, unless floors were given per group. Removing groups or
parameters is not supported. An LR may be a float or a one-element tensor; a
tensor keeps its type and is changed in place, as torch's schedulers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .checks import check_list, check_real
from .distributed import local_tensor

__all__ = [
    "changed_params",
    "check_lrs",
    "check_min_lr",
    "dropped",
    "finite_newcomers",
    "group_settings",
    "initial_lr",
    "lrs",
    "optimizer_params",
    "set_lr",
]


def set_lr(group: dict, lr: float | Tensor) -> None:
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def lrs(optimizer: Optimizer) -> list[float | Tensor]:
    """Every group's LR as torch's schedulers report it: a tensor LR as a copy, else the number."""
    return [group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"] for group in optimizer.param_groups]


def dropped(lrs: Sequence[float], floors: Sequence[float], factor: float) -> list[float]:
    """``max(floor, factor * lr)`` per group; a group already below its floor keeps its LR (a drop never raises one)."""
    return [min(lr, max(floor, factor * lr)) for lr, floor in zip(lrs, floors)]


def initial_lr(group: dict) -> float | Tensor:
    """A group's ``initial_lr`` (set to its LR now when missing), a tensor LR as a copy, as torch keeps it."""
    if "initial_lr" not in group:
        lr = group["lr"]
        group["initial_lr"] = lr.clone() if isinstance(lr, Tensor) else lr
    initial = group["initial_lr"]
    return initial.clone() if isinstance(initial, Tensor) else float(initial)


def check_lrs(name: str, values: Any, groups: int, allow_tensor: bool) -> list[float | Tensor]:
    """One LR ``>= 0`` per group: numbers, or (``allow_tensor``) one-element tensors, returned as copies."""
    checked = []
    for index, value in enumerate(check_list(name, values, groups)):
        if allow_tensor and isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name}[{index}] must be a one-element tensor, got shape {tuple(value.shape)}")
            check_real(f"{name}[{index}]", value.item(), "[0, inf)")
            checked.append(value.clone())
        else:
            checked.append(check_real(f"{name}[{index}]", value, "[0, inf)"))
    return checked


def check_min_lr(min_lr: float | Sequence[float], groups: int) -> list[float]:
    """``min_lr`` as one floor per group (a number is every group's floor)."""
    if isinstance(min_lr, (list, tuple)):
        if len(min_lr) != groups:
            raise ValueError(f"min_lr has {len(min_lr)} values, the optimizer has {groups} param groups")
        return check_lrs("min_lr", min_lr, groups, allow_tensor=False)
    return [check_real("min_lr", min_lr, "[0, inf)")] * groups


def optimizer_params(optimizer: Optimizer) -> list[Tensor]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        raise ValueError("optimizer has no parameters: there is nothing to measure")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("a parameter appears in more than one param group of the optimizer")
    return params


def group_settings(
    optimizer: Optimizer, base_lrs: list, min_lrs: list[float], per_group: bool
) -> tuple[list, list[float]]:
    """``base_lrs`` and ``min_lrs`` for every param group now, groups added since included; raises
    (before anything changes) when a group was removed, or added without a floor while floors are per group."""
    groups = optimizer.param_groups
    if len(groups) < len(base_lrs):
        raise ValueError(
            f"the optimizer has {len(groups)} param groups, AutoDrop was tracking {len(base_lrs)}: "
            "removing param groups is not supported (build a new AutoDrop)"
        )
    if per_group and len(min_lrs) != len(groups):
        raise ValueError(
            f"the optimizer now has {len(groups)} param groups but min_lrs has {len(min_lrs)} floors "
            "(min_lr was given per group): append the new groups' floors to scheduler.min_lrs"
        )
    added = groups[len(base_lrs) :]
    return base_lrs + [initial_lr(group) for group in added], min_lrs + min_lrs[:1] * (len(groups) - len(min_lrs))


def changed_params(optimizer: Optimizer, tracked: list[Tensor]) -> list[Tensor] | None:
    """The optimizer's parameters if they differ from ``tracked``, else None; raises when tracked ones were removed."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) == len(tracked) and all(p is q for p, q in zip(params, tracked)):
        return None
    params = optimizer_params(optimizer)
    present = {id(p) for p in params}
    removed = sum(id(p) not in present for p in tracked)
    if removed:
        raise ValueError(
            f"{removed} parameter(s) measured by AutoDrop are no longer in the optimizer's param "
            "groups; removing parameters is not supported (build a new AutoDrop)"
        )
    return params


def finite_newcomers(params: list[Tensor], tracked: list[Tensor]) -> bool:
    """Whether the parameters that would join are finite (a non-finite one would poison the snapshot)."""
    known = {id(p) for p in tracked}
    return all(bool(torch.isfinite(local_tensor(p)).all()) for p in params if id(p) not in known)
