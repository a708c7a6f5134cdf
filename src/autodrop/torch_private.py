"""Every private name of torch that this package relies on, each in one place with a test of its own.

torch's schedulers and optimizers talk to each other through a few private
names; a composition (``SequentialLR``, ``GradScaler``) only works with AutoDrop
and ActiveLR if they use them the way torch does. ``tests/test_torch_private.py``
checks each against the installed torch, so a torch release that changes one
fails there, by name, rather than somewhere in a composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "SchedulerProtocol",
    "hookable_optimizer",
    "inner_schedulers",
    "opt_out_of_amp_scaling",
    "restore_amp_scaling",
    "set_last_lr",
]


class SchedulerProtocol:
    """The private methods and attributes torch's compositions use on a scheduler.

    ``SequentialLR`` calls ``_initial_step()`` on the scheduler that runs first and
    ``_update_lr(0)`` on the one it hands over to at a milestone; ``get_last_lr()``
    returns ``_last_lr``; ``_step_count`` counts ``step()`` calls plus the initial step.
    A subclass implements ``count_initial_step()`` and ``step(epoch=None)``.
    """

    _last_lr: list[float | Tensor]
    _step_count: int

    def _initial_step(self) -> None:
        self.count_initial_step()

    def _update_lr(self, epoch: int | None = None) -> None:
        self.step(epoch)


def hookable_optimizer(optimizer: Optimizer) -> Optimizer | None:
    """The optimizer whose ``step()`` runs torch's step hooks: ``optimizer``, or the one a wrapper
    (e.g. accelerate's ``AcceleratedOptimizer``, which never runs its own) holds as ``.optimizer``;
    None where neither keeps them."""
    while isinstance(optimizer, Optimizer):
        if hasattr(optimizer, "_optimizer_step_pre_hooks"):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def inner_schedulers(scheduler: Any) -> Sequence[Any]:
    """The schedulers a ``SequentialLR`` or ``ChainedScheduler`` holds (none for another scheduler)."""
    return getattr(scheduler, "_schedulers", ())


def set_last_lr(scheduler: Any, lrs: list[float | Tensor]) -> None:
    """What ``scheduler.get_last_lr()`` returns from now on."""
    scheduler._last_lr = lrs


def opt_out_of_amp_scaling(optimizer: Optimizer) -> Any:
    """Tell ``torch.amp.GradScaler`` to unscale the gradients before ``optimizer.step()`` (an optimizer
    whose class sets ``_step_supports_amp_scaling`` would be handed scaled ones); returns what the object
    itself held before (None: nothing), for :func:`restore_amp_scaling`."""
    previous = optimizer.__dict__.get("_step_supports_amp_scaling")
    optimizer._step_supports_amp_scaling = False
    return previous


def restore_amp_scaling(optimizer: Optimizer, previous: Any) -> None:
    """Undo :func:`opt_out_of_amp_scaling`: the class's own declaration, or ``previous``, applies again."""
    del optimizer.__dict__["_step_supports_amp_scaling"]
    if previous is not None:
        optimizer._step_supports_amp_scaling = previous
