"""AutoDrop (Teng, Wang, Choromanska, arXiv 2111.15317), Algorithm 1.

Once per measurement interval (an epoch by default):

1. measure omega_i, the angle between the last two parameter steps;
2. trigger: if no drop is pending and |omega_bar_i - omega_bar_{i-1}| < theta,
   open the delay window (k := 0, z := 0); a pending drop is never re-armed;
3. while pending, the trigger interval included: k := k + 1, z := z + k x_i;
4. at k == n_d: x := z / (n_d (n_d + 1) / 2) when averaging; for every group
   lr := max(alpha_min, rho lr); theta := min(theta_max, theta / rho);
   with n_d = 0 the drop happens at the trigger with no averaging;
5. the next step is measured from the averaged parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .averaging import WeightedAverage
from .detector import SaturationDetector
from .velocity import AngularVelocity

__all__ = ["AutoDrop"]

STATE_VERSION = 1


def _check_real(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number ({allowed}), got {value!r}")
    if not (math.isfinite(value) and ok(float(value))):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _set_lr(group: dict, lr: float) -> None:
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


class AutoDrop(LRScheduler):
    r"""Drops the learning rate when the angular velocity of the parameters saturates.

    Call :meth:`step` once per measurement interval (an epoch), after training on
    it. Each call measures the angle :math:`\omega_i` (degrees) between the last
    two parameter steps :math:`s_i = x_i - x_{i-1}` over all parameters of the
    optimizer. When the window-averaged :math:`\bar\omega` changes by less than the
    threshold :math:`\theta`, a drop is triggered; the next :math:`n_d` intervals
    (the trigger's included) accumulate :math:`z = \sum_{k=1}^{n_d} k\,x_k`, and at
    the :math:`n_d`-th the parameters become :math:`z / (n_d(n_d+1)/2)`, every
    group's LR becomes :math:`\max(\alpha_{min}, \rho\,\mathrm{lr})` and
    :math:`\theta \leftarrow \min(\theta_{max}, \theta / \rho)`.

    Args:
        optimizer: any ``torch.optim.Optimizer``; all its param groups are
            measured together and all their LRs are dropped.
        factor: rho, the LR multiplier at a drop, ``0 < factor < 1`` (default 0.2).
        min_lr: alpha_min, the LR floor; a float, or one float per param group
            (default 1e-4).
        threshold: theta_0, degrees, ``> 0`` (default 0.01).
        max_threshold: theta_max, degrees, ``>= threshold`` (default 1.0).
        delay: n_d, intervals between the trigger and the drop, ``>= 0`` (default 20).
        average: replace the parameters by their linearly weighted average over
            the delay window at the drop (default True).
        window: number of omega values averaged before their change is taken,
            ``>= 1`` (default 1, the paper's deep-learning setting).
        eps: added to the norm product in the angle, ``> 0`` (default 1e-8).
        snapshot_device: device of the snapshot, step and averaging buffers;
            ``None`` keeps them beside the parameters, ``"cpu"`` keeps them off
            the accelerator.
        after_average: called with no arguments right after the parameters were
            averaged, e.g. to recompute BatchNorm statistics with
            ``torch.optim.swa_utils.update_bn(loader, model)`` (running
            statistics are buffers, not parameters, and are not averaged).
        process_group: torch.distributed group the decision's sums are reduced
            over; ``None`` (default) = the default group when torch.distributed
            is initialized. DDP and FSDP2/DTensor parameters need nothing: every
            rank takes the same decision, identical to a single process's (see
            :mod:`autodrop.distributed`). Every rank must call :meth:`step`.

    Parameters the optimizer does not move in an interval (frozen, or no
    gradient) simply contribute a zero step. Memory: two parameter-sized buffers
    (in at least fp32), a third inside the delay window.

    Example:
        >>> model = torch.nn.Linear(8, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> scheduler = AutoDrop(optimizer, delay=2)
        >>> for epoch in range(5):
        ...     for _ in range(10):
        ...         optimizer.zero_grad()
        ...         model(torch.randn(16, 8)).square().mean().backward()
        ...         optimizer.step()
        ...     scheduler.step()
        >>> len(scheduler.history)
        5
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 0.2,
        min_lr: float | Sequence[float] = 1e-4,
        threshold: float = 0.01,
        max_threshold: float = 1.0,
        delay: int = 20,
        average: bool = True,
        window: int = 1,
        eps: float = 1e-8,
        snapshot_device: torch.device | str | None = None,
        after_average: Callable[[], None] | None = None,
        process_group: Any = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.factor = _check_real("factor", factor, "in (0, 1)", lambda v: 0 < v < 1)
        self.min_lrs = self._check_min_lr(min_lr)
        threshold = _check_real("threshold", threshold, "> 0", lambda v: v > 0)
        max_threshold = _check_real(
            "max_threshold", max_threshold, f">= threshold ({threshold})", lambda v: v >= threshold
        )
        self.delay = _check_int("delay", delay, 0)
        if not isinstance(average, bool):
            raise TypeError(f"average must be a bool, got {average!r}")
        self.average = average
        window = _check_int("window", window, 1)
        eps = _check_real("eps", eps, "> 0", lambda v: v > 0)
        if after_average is not None and not callable(after_average):
            raise TypeError(f"after_average must be callable or None, got {after_average!r}")
        self.after_average = after_average

        self.velocity = AngularVelocity(
            self._optimizer_params(),
            eps=eps,
            snapshot_device=self._check_device(snapshot_device),
            process_group=process_group,
        )
        self.detector = SaturationDetector(threshold, max_threshold, window)
        self.averager = WeightedAverage(self.velocity.trajectory)

        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._step_count = 0
        self._last_lr = self._current_lrs()
        self.pending = False
        self.delay_count = 0
        self.num_drops = 0
        self.history: list[dict[str, Any]] = []

    def _check_min_lr(self, min_lr: float | Sequence[float]) -> list[float]:
        num_groups = len(self.optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != num_groups:
                raise ValueError(
                    f"min_lr has {len(min_lr)} values, the optimizer has {num_groups} param groups"
                )
            return [_check_real(f"min_lr[{i}]", v, ">= 0", lambda v: v >= 0) for i, v in enumerate(min_lr)]
        return [_check_real("min_lr", min_lr, ">= 0", lambda v: v >= 0)] * num_groups

    @staticmethod
    def _check_device(device: torch.device | str | None) -> torch.device | None:
        if device is None or isinstance(device, torch.device):
            return device
        if not isinstance(device, str):
            raise TypeError(f"snapshot_device must be None, a str or a torch.device, got {device!r}")
        try:
            return torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"snapshot_device {device!r} is not a valid device: {error}") from None

    def _optimizer_params(self) -> list[Tensor]:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if not params:
            raise ValueError("optimizer has no parameters: there is nothing to measure")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears in more than one param group of the optimizer")
        return params

    def _current_lrs(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    @property
    def omega(self) -> float | None:
        """Latest angular velocity in degrees, or None while undefined."""
        return self.velocity.omega

    @property
    def threshold(self) -> float:
        """Current threshold theta on the change of omega, degrees."""
        return self.detector.threshold

    def buffer_bytes(self) -> int:
        """Bytes of the tensors AutoDrop holds: snapshot and step, plus the sum in the window.

        ``2 P e_b`` outside the delay window and ``3 P e_b`` inside, for P parameters
        with buffer element size ``e_b = max(4, parameter element size)`` per bucket.
        """
        return self.velocity.trajectory.buffer_bytes() + self.averager.buffer_bytes()

    def get_lr(self) -> list[float]:
        """The optimizer's current LRs (AutoDrop changes them only in :meth:`step`)."""
        return self._current_lrs()

    def step(self, epoch: int | None = None) -> None:
        """Close one measurement interval: measure, decide, and drop if due.

        ``epoch`` exists for signature compatibility with ``LRScheduler`` and must
        stay ``None``: AutoDrop reacts to measured intervals and cannot jump to one.
        """
        if epoch is not None:
            raise ValueError(f"epoch must be None (AutoDrop cannot jump to an interval), got {epoch!r}")
        self._step_count += 1
        self.last_epoch += 1
        omega = self.velocity.update()
        delta = self.detector.observe(omega) if omega is not None else None

        event = None
        if not self.pending and self.detector.saturated(delta):
            self.pending, self.delay_count, event = True, 0, "trigger"
            if self.average and self.delay > 0:
                self.averager.start()
        if self.pending:
            if self.delay_count < self.delay:
                self.delay_count += 1
                if self.averager.active:
                    self.averager.add(float(self.delay_count))
            if self.delay_count == self.delay:
                self._drop()
                event = "drop"

        self._last_lr = self._current_lrs()
        self.history.append(
            {
                "interval": self.last_epoch,
                "omega": omega,
                "delta": delta,
                "threshold": self.detector.threshold,
                "lrs": list(self._last_lr),
                "event": event,
            }
        )

    def _drop(self) -> None:
        if self.averager.active:
            self.averager.apply()
            if self.after_average is not None:
                self.after_average()
        for group, floor in zip(self.optimizer.param_groups, self.min_lrs, strict=True):
            _set_lr(group, max(floor, self.factor * float(group["lr"])))
        self.detector.grow_threshold(self.factor)
        self.pending = False
        self.delay_count = 0
        self.num_drops += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, thresholds, buffers and history.

        Loads with ``torch.load(..., weights_only=True)``. Under torch.distributed it
        holds this rank's shards (save one file per rank); for
        torch.distributed.checkpoint wrap the scheduler in :class:`autodrop.ShardedState`.
        """
        return {
            "version": STATE_VERSION,
            "factor": self.factor,
            "min_lrs": list(self.min_lrs),
            "max_threshold": self.detector.max_threshold,
            "delay": self.delay,
            "average": self.average,
            "window": self.detector.window,
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "step_count": self._step_count,
            "last_lr": list(self._last_lr),
            "pending": self.pending,
            "delay_count": self.delay_count,
            "num_drops": self.num_drops,
            "history": [dict(record, lrs=list(record["lrs"])) for record in self.history],
            "detector": self.detector.state_dict(),
            "velocity": self.velocity.state_dict(),
            "averaging": self.averager.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (hyper-parameters included, as torch does)."""
        version = state_dict.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"AutoDrop state version {version!r} is not supported (expected {STATE_VERSION})")
        if len(state_dict["min_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state has {len(state_dict['min_lrs'])} param groups, "
                f"the optimizer has {len(self.optimizer.param_groups)}"
            )
        self.velocity.load_state_dict(state_dict["velocity"])
        self.averager.load_state_dict(state_dict["averaging"])
        self.detector.window = state_dict["window"]
        self.detector.max_threshold = state_dict["max_threshold"]
        self.detector.load_state_dict(state_dict["detector"])
        self.factor = state_dict["factor"]
        self.min_lrs = list(state_dict["min_lrs"])
        self.delay = state_dict["delay"]
        self.average = state_dict["average"]
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict["step_count"]
        self._last_lr = list(state_dict["last_lr"])
        self.pending = state_dict["pending"]
        self.delay_count = state_dict["delay_count"]
        self.num_drops = state_dict["num_drops"]
        self.history = [dict(record) for record in state_dict["history"]]
