"""AutoDrop (Teng, Wang, Choromanska, arXiv 2111.15317), Algorithm 1.

Once per measurement interval (an epoch by default):

1. measure omega_i, the angle between the last two parameter steps;
2. trigger: if no drop is pending and the saturation detector says omega has
   saturated (the paper's rule: |omega_bar_i - omega_bar_{i-1}| < theta; the
   default: a trend test, see :mod:`autodrop.detectors`), open the delay
   window (k := 0, z := 0); a pending drop is never re-armed;
3. while pending, the trigger interval included: k := k + 1, z := z + k x_i;
4. at k == n_d: x := z / (n_d (n_d + 1) / 2) when averaging; for every group
   lr := max(alpha_min, rho lr); the detector starts its next phase (the
   paper's rule: theta := min(theta_max, theta / rho));
   with n_d = 0 the drop happens at the trigger with no averaging;
5. the next step is measured from the averaged parameters.

Not in the paper: when no drop is possible any more (``max_drops`` reached,
or every group's LR at its floor), the window of step 4 still averages, but
instead of dropping the run is declared converged (:attr:`AutoDrop.converged`)
and nothing changes from then on.

An interval whose step is not finite or zero is skipped: it is recorded, and
nothing else happens (see :class:`AutoDrop`, "Faults").
"""

from __future__ import annotations

import operator
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .averaging import WeightedAverage
from .checks import (
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_keys,
    check_list,
    check_optional_real,
    check_real,
)
from .detectors import Detector, PaperRule, make_detector
from .distributed import local_tensor
from .interrupts import deferred_signals
from .trajectory import NONFINITE, ZERO_STEP, Measurement, ParameterTrajectory
from .velocity import AngularVelocity

__all__ = ["AutoDrop"]

STATE_VERSION = 3
ON_NONFINITE = ("warn", "skip", "raise")
INTERVALS = ("epoch", "steps")
SINGLE_STEP_WARNING_AFTER = 10
"""With ``interval="epoch"``, warn once when this many intervals in a row held one optimizer step each."""
EVENTS = (None, "trigger", "drop", "converged", "skipped")
REASONS = (NONFINITE, ZERO_STEP)
CHILDREN = (("detector", "detector"), ("velocity", "velocity"), ("averaging", "window_average"))
"""State keys whose values are a child's own state: ``(key, attribute)``."""
RECORD_KEYS = ("interval", "omega", "delta", "threshold", "lrs", "event", "reason")


def _upgrade(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """An older state in the current layout; anything else as it is.

    Version 1 (the paper's rule was the only detector) kept the rule's settings
    beside the detector's dict; version 2 had no ``max_drops`` / ``converged``
    (it dropped until ``min_lr`` and never converged).
    """
    version = state.get("version")
    if type(version) is int and version == 1 and {"max_threshold", "window", "detector"} <= set(state):
        upgraded = {key: value for key, value in state.items() if key not in ("max_threshold", "window")}
        detector = state["detector"] if isinstance(state["detector"], Mapping) else {}
        upgraded["detector"] = {
            "name": PaperRule.name,
            "max_threshold": state["max_threshold"],
            "window": state["window"],
            **detector,
        }
        state, version = {**upgraded, "version": 2}, 2
    if type(version) is int and version == 2 and not {"max_drops", "converged", "intervals"} & set(state):
        renamed = {key: value for key, value in state.items() if key not in ("step_count", "last_lr")}
        state = {
            **renamed,
            "max_drops": None,
            "converged": False,
            "version": 3,
            "_step_count": _plus_one(state.get("step_count")),
            "_last_lr": state.get("last_lr"),
            "intervals": state.get("last_epoch"),
        }
    return state


def _plus_one(count: Any) -> Any:
    """A version-2 ``step_count`` (steps) as torch's ``_step_count`` (steps plus the initial one)."""
    return count + 1 if type(count) is int else count


def _set_lr(group: dict, lr: float) -> None:
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _before_optimizer_step(scheduler: weakref.ref) -> Callable[..., None]:
    """An optimizer step pre-hook: completes an AutoDrop's due write-back before the parameters
    move, and counts the optimizer's steps between AutoDrop's."""

    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        owner = scheduler()
        if owner is not None:
            owner.finish_write_back()
            owner._optimizer_steps += 1

    return hook


def _register_step_pre_hook(optimizer: Optimizer, hook: Callable[..., None]) -> Any:
    """Register ``hook`` on ``optimizer``, or on the optimizer a wrapper (e.g. accelerate's
    ``AcceleratedOptimizer``) holds as ``.optimizer``; None where neither has torch's hooks."""
    while isinstance(optimizer, Optimizer):
        if hasattr(optimizer, "_optimizer_step_pre_hooks"):
            return optimizer.register_step_pre_hook(hook)
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def _param_groups_lrs(optimizer: Optimizer) -> list[float | Tensor]:
    """Every group's LR as torch's schedulers report it: a tensor LR as a copy, else the number."""
    return [group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"] for group in optimizer.param_groups]


def _copied(value: Any) -> Any:
    """A copy of a state value that shares nothing mutable with the scheduler (tensors cloned)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_copied(item) for item in value]
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    return value


def _check_lr(name: str, value: Any, allow_tensor: bool) -> float | Tensor:
    """An LR ``>= 0``: a number, or (``allow_tensor``) a one-element tensor, returned as a copy."""
    if allow_tensor and isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a one-element tensor, got shape {tuple(value.shape)}")
        check_real(name, value.item(), ">= 0", lambda v: v >= 0)
        return value.clone()
    return check_real(name, value, ">= 0", lambda v: v >= 0)


def _initial_lr(group: dict) -> float:
    """A group's ``initial_lr`` (set to its LR now when missing; a tensor LR is copied, not aliased)."""
    if "initial_lr" not in group:
        lr = group["lr"]
        group["initial_lr"] = lr.clone() if isinstance(lr, Tensor) else lr
    return float(group["initial_lr"])


@dataclass
class _Interval:
    """One interval as :meth:`AutoDrop._decide` decided it, before anything is committed."""

    measurement: Measurement
    omega: float | None
    trajectory: ParameterTrajectory
    sums: list[Tensor] | None
    total_weight: float
    base_lrs: list[float]
    min_lrs: list[float]
    lrs: list[float]
    pending: bool
    delay_count: int
    num_drops: int
    converged: bool
    fault: str | None
    statistics: dict[str, Any]
    delta: float | None = None
    event: str | None = None
    weight: float = 0.0


class AutoDrop(LRScheduler):
    r"""Drops the learning rate when the angular velocity of the parameters saturates.

    Call :meth:`step` once per measurement interval (an epoch), after training on
    it. Each call measures the angle :math:`\omega_i` (degrees) between the last
    two parameter steps :math:`s_i = x_i - x_{i-1}` over all parameters of the
    optimizer and hands it to the saturation detector. When the detector says
    omega has saturated, a drop is triggered; the next :math:`n_d` intervals
    (the trigger's included) accumulate :math:`z = \sum_{k=1}^{n_d} k\,x_k`, and at
    the :math:`n_d`-th the parameters become :math:`z / (n_d(n_d+1)/2)`, every
    group's LR becomes :math:`\max(\alpha_{min}, \rho\,\mathrm{lr})` (a group
    already below its floor keeps its LR: a drop never raises an LR) and the
    detector starts its next phase.

    Args:
        optimizer: any ``torch.optim.Optimizer``; all its param groups are
            measured together and all their LRs are dropped.
        factor: rho, the LR multiplier at a drop, ``0 < factor < 1`` (default 0.2).
        min_lr: alpha_min, the LR floor; a float, or one float per param group
            (default 1e-4).
        max_drops: the number of drops after which the LR stays where it is
            (an int ``>= 0``); ``None`` (default) drops until every group is at
            its floor. The next saturation after that is convergence (below).
        detector: the saturation test: ``"trend"`` (default,
            :class:`~autodrop.TrendTest`: an equivalence test on omega's trend,
            calibrated to its noise), ``"paper"`` (:class:`~autodrop.PaperRule`:
            the paper's ``|delta omega| < theta``), or any object with the
            :class:`~autodrop.detectors.Detector` protocol (the scheduler owns
            it from then on: every step changes its state).
        threshold, max_threshold, window: the paper rule's theta_0 (degrees,
            default 0.01), theta_max (default 1.0) and the number of omegas
            averaged before their change is taken (default 1); only with
            ``detector="paper"``.
        delay: n_d, intervals between the trigger and the drop, ``>= 0`` (default 20).
        average: replace the parameters by their linearly weighted average over
            the delay window at the drop (default True).
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
        on_nonfinite: what a step with NaN/Inf parameters does: ``"warn"``
            (default) skips the interval and warns once, ``"skip"`` skips it
            silently, ``"raise"`` raises ``FloatingPointError`` with nothing changed.
        max_history: keep only the last ``max_history`` records in
            :attr:`history` (an int ``>= 1``); ``None`` (default) keeps one per
            ``step()`` forever, about 0.4 kB each.
        interval: what one :meth:`step` closes: ``"epoch"`` (default; a warning
            if it follows every single optimizer step for 10 intervals in a row,
            the usual mistake of a per-step scheduler slot) or ``"steps"`` (a
            chosen number of optimizer steps; no warning).

    Convergence: once no drop is possible (``max_drops`` drops done, or every
    group's LR at its floor), the next saturation opens the delay window as
    before, and at its end the parameters are averaged exactly as before a drop
    (when ``average``), the LR stays, the record's event is ``"converged"`` and
    :attr:`converged` is True from then on: the run has stalled at its last LR,
    and more intervals at that LR are unlikely to improve it (a statement about
    the optimizer's trajectory, not about validation error). Stepping on is
    allowed: it measures and records omega and changes nothing else.

    All or nothing: :meth:`step` measures and decides first, changing nothing,
    then commits in one place; an exception before the commit leaves the
    scheduler exactly as it was, and an interrupt (Ctrl-C, or any signal whose
    Python handler raises) that arrives during :meth:`step` or
    :meth:`load_state_dict` is raised when the call ends, so neither is ever
    half done. ``after_average`` runs after the commit: an exception in it (or an
    interrupt then) leaves a complete drop. The averaging sum is never divided in
    place: if the write-back into the parameters is cut short, :attr:`write_back_due`
    stays True, the state (saved, or loaded into a fresh scheduler) keeps the
    sum, and the write-back is completed from it before the optimizer's next
    step, or by the next :meth:`step` or :meth:`finish_write_back`; the
    parameters are never averaged twice.

    Parameters the optimizer does not move in an interval (frozen, or no
    gradient) simply contribute a zero step. Memory: two parameter-sized buffers
    (in at least fp32), a third inside the delay window.

    Faults: an interval whose step contains NaN/Inf (``"nonfinite"``), or whose
    parameters did not move at all (``"zero_step"``: everything frozen, lr 0),
    is skipped: its history record has ``event="skipped"`` and the ``reason``;
    it cannot trigger or drop, the snapshot, the previous step and the
    averaging sum stay exactly as they were, a pending drop's countdown does not
    advance, and the next interval is measured from the last good snapshot
    against the last nonzero step. Each reason warns once per scheduler
    (``on_nonfinite`` governs the NaN/Inf case; a zero step always just warns).

    Param-group changes: parameters added to the optimizer after construction
    (``optimizer.add_param_group``, e.g. unfreezing for fine-tuning) are tracked
    from the next interval on: the interval in which they appear is measured over
    the old parameters only, then they join with their current value as snapshot
    and a zero previous step, and inside an open delay window they count as
    having stayed at that value. A new group's floor is ``min_lr`` when that was
    one float; when it was a list, append the new group's floor to
    :attr:`min_lrs` before the next ``step()``. Removing parameters raises
    ``ValueError`` at the next ``step()``.

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
        max_drops: int | None = None,
        detector: str | Detector = "trend",
        threshold: float | None = None,
        max_threshold: float | None = None,
        delay: int = 20,
        average: bool = True,
        window: int | None = None,
        eps: float = 1e-8,
        snapshot_device: torch.device | str | None = None,
        after_average: Callable[[], None] | None = None,
        process_group: Any = None,
        on_nonfinite: str = "warn",
        max_history: int | None = None,
        interval: str = "epoch",
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.factor = check_real("factor", factor, "in (0, 1)", lambda v: 0 < v < 1)
        self.min_lr_per_group = isinstance(min_lr, (list, tuple))
        self.min_lrs = self._check_min_lr(min_lr)
        self.max_drops = None if max_drops is None else check_int("max_drops", max_drops, 0)
        self.detector = self._make_detector(detector, threshold=threshold, max_threshold=max_threshold, window=window)
        self.delay = check_int("delay", delay, 0)
        self.average = check_bool("average", average)
        eps = check_real("eps", eps, "> 0", lambda v: v > 0)
        snapshot_device = check_device("snapshot_device", snapshot_device)
        if after_average is not None and not callable(after_average):
            raise TypeError(f"after_average must be callable or None, got {after_average!r}")
        self.after_average = after_average
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
        self.max_history = None if max_history is None else check_int("max_history", max_history, 1)
        self.interval = check_choice("interval", interval, INTERVALS)

        self.velocity = AngularVelocity(
            self._optimizer_params(), eps=eps, snapshot_device=snapshot_device, process_group=process_group
        )
        self.window_average = WeightedAverage()
        self._optimizer_steps = 0  # since the last step(), counted by the hook
        self._single_step_intervals = 0  # consecutive intervals of exactly one optimizer step
        self._optimizer_hook = _register_step_pre_hook(optimizer, _before_optimizer_step(weakref.ref(self)))
        self._warned: set[str] = set()

        self.base_lrs = [_initial_lr(group) for group in optimizer.param_groups]
        self.last_epoch = 0  # torch's counter: compositions such as SequentialLR move it
        self._step_count = 1  # torch's: step() calls plus the initial step
        self._last_lr = _param_groups_lrs(optimizer)
        self.intervals = 0  # AutoDrop's own: the intervals measured, what the history counts
        self.pending = False
        self.delay_count = 0
        self.num_drops = 0
        self._converged = False
        self.history: list[dict[str, Any]] = []

    def _check_min_lr(self, min_lr: float | Sequence[float]) -> list[float]:
        num_groups = len(self.optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != num_groups:
                raise ValueError(f"min_lr has {len(min_lr)} values, the optimizer has {num_groups} param groups")
            return [check_real(f"min_lr[{i}]", v, ">= 0", lambda v: v >= 0) for i, v in enumerate(min_lr)]
        return [check_real("min_lr", min_lr, ">= 0", lambda v: v >= 0)] * num_groups

    @staticmethod
    def _make_detector(detector: str | Detector, **paper_options: Any) -> Detector:
        given = {key: value for key, value in paper_options.items() if value is not None}
        if detector == PaperRule.name:
            return PaperRule(**given)
        if given:
            raise ValueError(
                f"{', '.join(given)} configure the paper's rule and need detector='paper' (detector is "
                f"{detector if isinstance(detector, str) else type(detector).__name__!r}); configure another "
                "detector by passing it as an object, e.g. detector=TrendTest(max_wait=40)"
            )
        made = make_detector(detector)
        clashes = sorted(set(made.statistics()) & set(RECORD_KEYS))
        if clashes:
            raise ValueError(f"detector statistics {clashes} clash with the history record's own keys {RECORD_KEYS}")
        return made

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
    def converged(self) -> bool:
        """True from the interval at which, with no drop possible any more, omega saturated again."""
        return self._converged

    def _can_drop(self, num_drops: int, min_lrs: list[float]) -> bool:
        """Whether a drop would still change something: fewer than ``max_drops`` drops so far
        and some group's LR above its floor."""
        if self.max_drops is not None and num_drops >= self.max_drops:
            return False
        return any(float(group["lr"]) > floor for group, floor in zip(self.optimizer.param_groups, min_lrs))

    @property
    def threshold(self) -> float:
        """The detector's current bound on its statistic (the paper's rule: theta, degrees)."""
        return self.detector.threshold

    def buffer_bytes(self) -> int:
        """Bytes of the tensors AutoDrop holds: snapshot and step, plus the sum in the window.

        ``2 P e_b`` outside the delay window and ``3 P e_b`` inside, for P parameters
        with buffer element size ``e_b = max(4, parameter element size)`` per bucket.
        """
        return self.velocity.trajectory.buffer_bytes() + self.window_average.buffer_bytes()

    def get_lr(self) -> list[float]:
        """The optimizer's current LRs (AutoDrop changes them only in :meth:`step`)."""
        return self._current_lrs()

    def step(self, epoch: int | None = None) -> None:
        """Close one measurement interval: measure, decide, and drop if due.

        All or nothing: the interval is measured and decided first, with nothing
        changed; then it is committed in one place. An exception before the commit
        leaves the scheduler exactly as it was; an interrupt (Ctrl-C, a signal
        handler that raises) arrives after the call. ``after_average`` runs last,
        once the drop is complete, so an exception in it leaves a finished drop.

        ``epoch`` exists for compatibility with ``LRScheduler``: AutoDrop reacts to
        measured intervals and cannot jump to one, so it must stay ``None``, except
        ``step(0)``, which starts the schedule as :meth:`_update_lr` does (older torch's
        ``SequentialLR`` hands over that way at a milestone).
        """
        if epoch is not None:
            if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch == 0:
                self._start()
                return
            if isinstance(epoch, (float, Tensor)):
                raise TypeError(
                    f"AutoDrop.step() takes no metric (it measures the parameters), got {epoch!r}; "
                    "call scheduler.step() once per epoch"
                )
            raise ValueError(f"epoch must be None (AutoDrop cannot jump to an interval), got {epoch!r}")
        self.finish_write_back()  # a write-back that an exception cut short after an earlier step's commit
        with deferred_signals(), torch.inference_mode(False), torch.no_grad():
            detector_state = self.detector.state_dict()
            try:
                interval = self._decide()
                interval.trajectory.commit(
                    interval.measurement, interval.sums if interval.weight else None, interval.weight
                )
            except BaseException:
                self.detector.load_state_dict(detector_state)
                raise
            self._commit(interval)
            averaged = self._write_back()
        if interval.fault is not None:
            self._warn_once(interval.fault)
        self._check_interval_length()
        if averaged and self.after_average is not None:
            self.after_average()

    def _initial_step(self) -> None:
        """torch's initial step (``SequentialLR`` calls it on the scheduler that runs first): the
        counters of one step, nothing measured (there is no step of the parameters yet)."""
        self._step_count = 1
        self.last_epoch += 1

    def _update_lr(self, epoch: int | None = None) -> None:
        """torch's hook for a scheduler to set its LRs: ``SequentialLR`` hands over to AutoDrop at a
        milestone with ``_update_lr(0)``, which starts AutoDrop's schedule there (:meth:`_start`)."""
        if epoch is None:
            self.step()
        else:
            self.step(epoch)

    def _start(self) -> None:
        """Start the schedule now: every group at its base LR, the trajectory measured from the
        parameters as they are (the steps before, e.g. a warmup's, are not AutoDrop's intervals)."""
        if self.intervals:
            raise ValueError(
                f"AutoDrop can start (step(0), or a SequentialLR milestone) only before it measured an "
                f"interval; it has measured {self.intervals}"
            )
        with deferred_signals(), torch.inference_mode(False), torch.no_grad():
            trajectory = ParameterTrajectory(
                self._optimizer_params(),
                self.velocity.trajectory.snapshot_device,
                self.velocity.trajectory.process_group,
            )
            base_lrs, min_lrs = self._group_settings()
            self.velocity.trajectory, self.velocity.omega = trajectory, None
            self.base_lrs, self.min_lrs = base_lrs, min_lrs
            for group, lr in zip(self.optimizer.param_groups, base_lrs):
                _set_lr(group, lr)
            self.last_epoch = 0
            self._last_lr = _param_groups_lrs(self.optimizer)

    def _decide(self) -> _Interval:
        """Algorithm 1's trigger, delay window and drop for the interval that ends now, computed
        without changing anything but the detector (which :meth:`step` restores if this raises)."""
        params = self._changed_params()
        base_lrs, min_lrs = self._group_settings()
        trajectory, sums = self.velocity.trajectory, self.window_average.sums
        if params is not None and self._finite_newcomers(params, trajectory):
            joined = trajectory.with_params(params)
            sums = self.window_average.relaid(trajectory, joined) if sums is not None else None
            trajectory = joined
        measurement = trajectory.measure()
        fault = measurement.statistics.fault
        if fault == NONFINITE and self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"AutoDrop: the parameters contain NaN or Inf at interval {self.intervals + 1} "
                "(on_nonfinite='raise'); the scheduler's state is unchanged"
            )
        interval = _Interval(
            measurement=measurement,
            omega=self.velocity.omega_of(measurement.statistics),
            trajectory=trajectory,
            sums=sums,
            total_weight=self.window_average.total_weight,
            base_lrs=base_lrs,
            min_lrs=min_lrs,
            lrs=self._current_lrs(),
            pending=self.pending,
            delay_count=self.delay_count,
            num_drops=self.num_drops,
            converged=self._converged,
            fault=fault,
            statistics=dict.fromkeys(self.detector.statistics()),
        )
        if fault is not None:
            interval.event = "skipped"
        elif not interval.converged:
            self._decide_window(interval)
        return interval

    def _decide_window(self, interval: _Interval) -> None:
        saturated = False
        if interval.omega is not None:
            saturated = self.detector.observe(interval.omega)
            interval.delta, interval.statistics = self.detector.delta, self.detector.statistics()
        if not interval.pending and saturated:
            interval.pending, interval.delay_count, interval.event = True, 0, "trigger"
            if self.average and self.delay > 0:
                interval.sums, interval.total_weight = WeightedAverage.empty_sums(interval.trajectory), 0.0
        if not interval.pending:
            return
        if interval.delay_count < self.delay:
            interval.delay_count += 1
            if interval.sums is not None:
                interval.weight = float(interval.delay_count)
                interval.total_weight += interval.weight
        if interval.delay_count < self.delay:
            return
        # The window closes: average, then drop, or converge when no drop is possible.
        interval.pending, interval.delay_count = False, 0
        if not self._can_drop(interval.num_drops, interval.min_lrs):
            interval.converged, interval.event = True, "converged"
            return
        # A group that starts below its floor keeps its LR: a drop never raises one.
        interval.lrs = [min(lr, max(floor, self.factor * lr)) for lr, floor in zip(interval.lrs, interval.min_lrs)]
        self.detector.on_drop(self.factor)
        interval.num_drops += 1
        interval.event = "drop"

    def _commit(self, interval: _Interval) -> None:
        """Install what :meth:`_decide` computed (plain assignments: nothing here raises)."""
        self.velocity.trajectory = interval.trajectory
        self.velocity.last_statistics, self.velocity.omega = interval.measurement.statistics, interval.omega
        self.window_average.sums, self.window_average.total_weight = interval.sums, interval.total_weight
        self.base_lrs, self.min_lrs = interval.base_lrs, interval.min_lrs
        for group, lr in zip(self.optimizer.param_groups, interval.lrs):
            if lr != float(group["lr"]):
                _set_lr(group, lr)
        self.pending, self.delay_count = interval.pending, interval.delay_count
        self.num_drops, self._converged = interval.num_drops, interval.converged
        self._step_count += 1
        self.last_epoch += 1
        self.intervals += 1
        self._last_lr = _param_groups_lrs(self.optimizer)
        self.history.append(
            {
                "interval": self.intervals,
                "omega": interval.omega,
                "delta": interval.delta,
                "threshold": self.detector.threshold,
                "lrs": list(interval.lrs),
                "event": interval.event,
                "reason": interval.fault,
                **interval.statistics,
            }
        )
        if self.max_history is not None and len(self.history) > self.max_history:
            del self.history[: len(self.history) - self.max_history]

    @property
    def write_back_due(self) -> bool:
        """Whether the delay window's average still has to be written into the parameters: the sum
        is held but no drop is pending (a write-back that an exception cut short)."""
        return self.window_average.active and not self.pending

    def finish_write_back(self) -> None:
        """Complete a parameter write-back that an exception cut short (see :attr:`write_back_due`).

        Runs by itself before the optimizer's next step and at the next :meth:`step`; calling it
        when nothing is due does nothing.
        """
        if not self.write_back_due:
            return
        with deferred_signals(), torch.inference_mode(False), torch.no_grad():
            self._write_back()
        if self.after_average is not None:
            self.after_average()

    def _write_back(self) -> bool:
        """Replace the parameters by the window's average if a drop or convergence is due to; True if it did.

        The sum stays intact until the write-back is complete, so one that an
        exception cut short is repeated from it at the next :meth:`step`.
        """
        if not self.write_back_due:
            return False
        self.window_average.write_back(self.velocity.trajectory)
        self.window_average.discard()
        return True

    def __getstate__(self) -> dict[str, Any]:
        # the optimizer hook's handle is tied to this process's optimizer object; copies register their own
        return {key: value for key, value in self.__dict__.items() if key != "_optimizer_hook"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._optimizer_hook = _register_step_pre_hook(self.optimizer, _before_optimizer_step(weakref.ref(self)))

    def _check_interval_length(self) -> None:
        """Warn once when ``step()`` has followed every single optimizer step for a while (it closes
        an epoch: a per-step call drops the LR to its floor within a few epochs)."""
        steps, self._optimizer_steps = self._optimizer_steps, 0
        self._single_step_intervals = self._single_step_intervals + 1 if steps == 1 else 0
        if self.interval != "epoch" or self._single_step_intervals != SINGLE_STEP_WARNING_AFTER:
            return
        warnings.warn(
            f"AutoDrop: step() has followed every optimizer step for {SINGLE_STEP_WARNING_AFTER} intervals in a row, "
            "but each call closes a measurement interval meant to be an epoch. Call it once per epoch (with the "
            "Hugging Face Trainer: autodrop.integrations.transformers.AutoDropCallback, not Trainer(optimizers=...); "
            "in Lightning: 'interval': 'epoch'), or pass AutoDrop(..., interval='steps') if per-step intervals "
            "are intended.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _warn_once(self, fault: str) -> None:
        if fault in self._warned or (fault == NONFINITE and self.on_nonfinite == "skip"):
            return
        self._warned.add(fault)
        if fault == NONFINITE:
            message = (
                f"AutoDrop: the parameters contain NaN or Inf at interval {self.intervals}; the interval "
                "is skipped (no trigger or drop, snapshots and averaging untouched, the next finite "
                "interval is measured from the last finite snapshot). on_nonfinite='raise' raises instead."
            )
        else:
            message = (
                f"AutoDrop: the parameters did not move in interval {self.intervals} (all frozen, no "
                "gradients, lr 0, or scheduler.step() called before optimizer.step()); the interval is "
                "skipped and the next step is compared with the last nonzero one."
            )
        warnings.warn(message + " This warning is shown once per scheduler.", RuntimeWarning, stacklevel=3)

    def _group_settings(self) -> tuple[list[float], list[float]]:
        """``base_lrs`` and ``min_lrs`` for every param group now (groups added since the last step
        included; an empty group is a group too). Raises before anything changes when a group was
        added and ``min_lr`` was given per group without a floor for it."""
        groups = self.optimizer.param_groups
        if len(groups) < len(self.base_lrs):
            raise ValueError(
                f"the optimizer has {len(groups)} param groups, AutoDrop was tracking {len(self.base_lrs)}: "
                "removing param groups is not supported (build a new AutoDrop)"
            )
        if self.min_lr_per_group and len(self.min_lrs) != len(groups):
            raise ValueError(
                f"the optimizer now has {len(groups)} param groups but min_lrs has {len(self.min_lrs)} floors "
                "(min_lr was given per group): append the new groups' floors to scheduler.min_lrs"
            )
        new = groups[len(self.base_lrs) :]
        base_lrs = self.base_lrs + [_initial_lr(group) for group in new]
        min_lrs = list(self.min_lrs) + self.min_lrs[:1] * (len(groups) - len(self.min_lrs))
        return base_lrs, min_lrs

    def _changed_params(self) -> list[Tensor] | None:
        """The optimizer's parameters if they differ from the tracked ones, else None.

        Raises ``ValueError`` (before anything changes) when tracked parameters were removed.
        """
        tracked = self.velocity.trajectory.params
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if len(params) == len(tracked) and all(map(operator.is_, params, tracked)):
            return None
        params = self._optimizer_params()
        present = {id(p) for p in params}
        removed = sum(id(p) not in present for p in tracked)
        if removed:
            raise ValueError(
                f"{removed} parameter(s) measured by AutoDrop are no longer in the optimizer's param "
                "groups; removing parameters is not supported (build a new AutoDrop)"
            )
        return params

    @staticmethod
    def _finite_newcomers(params: list[Tensor], trajectory: Any) -> bool:
        """Whether the parameters that would join are finite (a non-finite one would poison the
        snapshot; it is tried again at the next interval)."""
        known = {id(p) for p in trajectory.params}
        return all(bool(torch.isfinite(local_tensor(p)).all()) for p in params if id(p) not in known)

    def _fields(self) -> tuple[tuple[str, str, Callable[[str, Any], Any]], ...]:
        """The state's one declaration: ``(key, attribute, check)`` per scalar field, where ``check(name,
        value)`` raises naming what is wrong and returns the value to store. :meth:`state_dict`,
        :meth:`check_state` and :meth:`load_state_dict` are all driven by it; the children (detector,
        velocity, averaging) nest their own states (:data:`CHILDREN`), the relations between fields are
        checked in :meth:`_check_relations`."""

        def per_group(allow_tensor: bool) -> Callable[[str, Any], list]:
            def check(name: str, value: Any) -> list:
                values = check_list(name, value)
                groups = len(self.optimizer.param_groups)
                if len(values) != groups:
                    raise ValueError(f"{name} has {len(values)} values, the optimizer has {groups} param groups")
                return [_check_lr(f"{name}[{index}]", lr, allow_tensor) for index, lr in enumerate(values)]

            return check

        def optional_int(minimum: int) -> Callable[[str, Any], int | None]:
            return lambda name, value: None if value is None else check_int(name, value, minimum)

        def at_least(minimum: int) -> Callable[[str, Any], int]:
            return lambda name, value: check_int(name, value, minimum)

        return (
            ("factor", "factor", lambda name, value: check_real(name, value, "in (0, 1)", lambda v: 0 < v < 1)),
            ("min_lrs", "min_lrs", per_group(allow_tensor=False)),
            ("min_lr_per_group", "min_lr_per_group", check_bool),
            ("max_drops", "max_drops", optional_int(0)),
            ("delay", "delay", at_least(0)),
            ("average", "average", check_bool),
            ("on_nonfinite", "on_nonfinite", lambda name, value: check_choice(name, value, ON_NONFINITE)),
            ("max_history", "max_history", optional_int(1)),
            ("base_lrs", "base_lrs", per_group(allow_tensor=False)),
            # torch's counters: its compositions move them (SequentialLR undoes a step: -1), wrappers count more
            ("last_epoch", "last_epoch", at_least(-1)),
            ("_step_count", "_step_count", at_least(0)),
            ("_last_lr", "_last_lr", per_group(allow_tensor=True)),  # a tensor LR as torch keeps it
            ("intervals", "intervals", at_least(0)),
            ("pending", "pending", check_bool),
            ("delay_count", "delay_count", at_least(0)),
            ("num_drops", "num_drops", at_least(0)),
            ("converged", "_converged", check_bool),
            ("history", "history", self._checked_history),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: counters, thresholds, buffers and history.

        Loads with ``torch.load(..., weights_only=True)``. Under torch.distributed it
        holds this rank's shards (save one file per rank); for
        torch.distributed.checkpoint wrap the scheduler in :class:`autodrop.ShardedState`.
        """
        fields = {key: _copied(getattr(self, attribute)) for key, attribute, _ in self._fields()}
        children = {key: getattr(self, attribute).state_dict() for key, attribute in CHILDREN}
        return {"version": STATE_VERSION, **fields, **children}

    def check_state(self, state: Any) -> None:
        """Raise a ``ValueError``, ``TypeError`` or ``KeyError`` naming what in ``state`` is wrong.

        Checks the version, every key and type, the ranges, the counters against
        each other, every history record, and every tensor's shape and dtype
        against the current parameters (and that it is finite). Changes nothing.
        """
        self._checked(state)

    def _checked(self, state: Any) -> dict[str, Any]:
        """:meth:`check_state`, returning the fields' values to store (keyed by attribute)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"AutoDrop state must be a dict, got {type(state).__name__}")
        state = _upgrade(state)
        version = state.get("version")
        if type(version) is not int or version != STATE_VERSION:
            raise ValueError(f"AutoDrop state version {version!r} is not supported (expected {STATE_VERSION})")
        fields = self._fields()
        check_keys("AutoDrop state", state, ("version", *(key for key, _, _ in fields), *(key for key, _ in CHILDREN)))
        # the detector first: the history's records carry its statistics
        self.detector.check_state(state["detector"], "state['detector']")
        values = {key: check(f"state[{key!r}]", state[key]) for key, _, check in fields}
        self._check_relations(values, state)
        return {attribute: values[key] for key, attribute, _ in fields}

    def _check_relations(self, values: dict[str, Any], state: Mapping[str, Any]) -> None:
        """What the fields must satisfy together, and the children's states."""

        def name(key: str) -> str:
            return f"state[{key!r}]"

        intervals, delay, max_drops = values["intervals"], values["delay"], values["max_drops"]
        check_int(
            name("num_drops"), values["num_drops"], 0, intervals if max_drops is None else min(intervals, max_drops)
        )
        if values["converged"] and values["pending"]:
            raise ValueError(
                f"{name('converged')} and {name('pending')} are both True: a converged run has no window open"
            )
        if values["pending"]:
            check_int(name("delay_count"), values["delay_count"], 1, delay - 1)
        else:
            check_int(name("delay_count"), values["delay_count"], 0, 0)
        expected = intervals if values["max_history"] is None else min(intervals, values["max_history"])
        records = values["history"]
        if len(records) != expected:
            raise ValueError(f"{name('history')} has {len(records)} records, expected {expected} (one per step)")
        for index, record in enumerate(records):
            interval = intervals - len(records) + 1 + index
            check_int(f"{name('history')}[{index}]['interval']", record["interval"], interval, interval)
        self.velocity.check_state(state["velocity"], name("velocity"))
        WeightedAverage.check_state(state["averaging"], self.velocity.trajectory, name("averaging"))
        # Sums are held inside an open averaging window, and after it while its write-back is due.
        averaging = values["average"] and delay > 0
        window_open = values["pending"] and averaging
        has_sums = state["averaging"]["sums"] is not None
        if window_open and not has_sums:
            raise ValueError(f"{name('averaging')} lacks sums, but the state has an open averaging window")
        if has_sums and not (window_open or (averaging and not values["pending"])):
            raise ValueError(
                f"{name('averaging')} has sums, but the state has no averaging window open or to write back"
            )
        k = values["delay_count"] if values["pending"] else delay
        if has_sums and state["averaging"]["total_weight"] != k * (k + 1) / 2:
            raise ValueError(
                f"{name('averaging')}['total_weight'] is {state['averaging']['total_weight']!r}, "
                f"expected {k * (k + 1) / 2} after {k} intervals of the window"
            )

    def _checked_history(self, name: str, history: Any) -> list[dict[str, Any]]:
        """Every record's keys, types and ranges (their interval numbers: :meth:`_check_relations`)."""
        statistics = tuple(self.detector.statistics())
        records = check_list(name, history)
        for index, record in enumerate(records):
            where = f"{name}[{index}]"
            check_keys(where, record, RECORD_KEYS + statistics)
            for key in statistics:
                check_optional_real(f"{where}[{key!r}]", record[key], "a real number", lambda v: True)
            check_int(f"{where}['interval']", record["interval"], 1)
            check_optional_real(f"{where}['omega']", record["omega"], "in [0, 180]", lambda v: 0 <= v <= 180)
            check_optional_real(f"{where}['delta']", record["delta"], ">= 0", lambda v: v >= 0)
            check_real(f"{where}['threshold']", record["threshold"], "> 0", lambda v: v > 0)
            lrs = check_list(f"{where}['lrs']", record["lrs"])
            for position, lr in enumerate(lrs):
                check_real(f"{where}['lrs'][{position}]", lr, ">= 0", lambda v: v >= 0)
            if not (record["event"] is None or isinstance(record["event"], str)) or record["event"] not in EVENTS:
                raise ValueError(f"{where}['event'] must be one of {EVENTS}, got {record['event']!r}")
            reasons = REASONS if record["event"] == "skipped" else (None,)
            reason = record["reason"]
            if not (reason is None or isinstance(reason, str)) or reason not in reasons:
                raise ValueError(
                    f"{where}['reason'] must be one of {reasons} for event {record['event']!r}, got {reason!r}"
                )
        return [dict(record, lrs=list(record["lrs"])) for record in records]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (hyper-parameters included, as torch does).

        The whole state is checked first (:meth:`check_state`); a bad state raises
        and leaves the scheduler exactly as it was.
        """
        values = self._checked(state_dict)
        state_dict = _upgrade(state_dict)
        with deferred_signals():
            self.velocity.load_state_dict(state_dict["velocity"])
            self.window_average.load_state_dict(state_dict["averaging"], self.velocity.trajectory)
            self.detector.load_state_dict(state_dict["detector"])
            vars(self).update(values)
