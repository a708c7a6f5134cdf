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

Not in the paper: when no drop is possible any more (``max_drops`` reached, or every
LR at its floor), step 4 averages but converges instead of dropping; an interval whose
step is not finite or zero is recorded as skipped and changes nothing else.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from . import groups
from .checks import check_bool, check_choice, check_int, check_real
from .detectors import Detector, make_detector
from .history import make_record
from .interrupts import deferred_signals
from .state import ATTRIBUTES, INTERVALS, ON_NONFINITE, checked_state, state_of
from .torch_private import SchedulerProtocol, hookable_optimizer
from .trajectory import NONFINITE, Measurement, ParameterTrajectory
from .velocity import omega_of

__all__ = ["AutoDrop"]

SINGLE_STEP_WARNING_AFTER = 10
"""With ``interval="epoch"``, warn once when this many intervals in a row held one optimizer step each."""
_OWNERS: weakref.WeakKeyDictionary[Optimizer, weakref.ref] = weakref.WeakKeyDictionary()  # one AutoDrop each


def _before_optimizer_step(scheduler: weakref.ref, target: weakref.ref) -> Callable[..., None]:
    """The pre-hook on ``target``: a deep copy of the optimizer carries it along, and must not call it."""

    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        owner = scheduler()
        if owner is not None and optimizer is target():
            owner._before_optimizer_step()

    return hook


@dataclass
class _Interval:
    """One interval as :meth:`AutoDrop._decide` decided it; :meth:`AutoDrop._commit` installs it."""

    measurement: Measurement
    omega: float | None
    trajectory: ParameterTrajectory
    sums: list[Tensor] | None
    detector: Detector
    base_lrs: list[float]
    min_lrs: list[float]
    lrs: list[float]
    pending: bool
    delay_count: int
    num_drops: int
    converged: bool
    fault: str | None = None
    statistics: dict[str, Any] = field(default_factory=dict)
    delta: float | None = None
    event: str | None = None
    weight: float = 0.0
    average: bool = False


class AutoDrop(SchedulerProtocol, LRScheduler):
    r"""Drops the learning rate when the angular velocity of the parameters saturates (the module's Algorithm 1).

    Call :meth:`step` once per measurement interval (an epoch), after training on it.
    It measures :math:`\omega_i` (degrees), the angle between the last two steps
    :math:`s_i = x_i - x_{i-1}` of all the optimizer's parameters at once, and hands it
    to the detector. Once it says omega saturated, the next :math:`n_d` intervals (the
    trigger's included) accumulate :math:`z = \sum_{k=1}^{n_d} k\,x_k`; at the
    :math:`n_d`-th the parameters become :math:`z / (n_d(n_d+1)/2)`, every group's LR
    :math:`\max(\alpha_{min}, \rho\,\mathrm{lr})` (never raised), and the detector starts
    its next phase. Memory: two parameter-sized buffers (at least fp32), a third in the window.

    Args:
        optimizer: any ``torch.optim.Optimizer``, all its groups measured and dropped
            together; one AutoDrop per optimizer.
        factor: rho, the LR multiplier at a drop, in (0, 1) (default 0.2).
        min_lr: alpha_min, the LR floor: a float, or one per param group (default 1e-4).
        max_drops: drops after which the LR stays (an int >= 0); ``None`` (default):
            until every group is at its floor. The next saturation is convergence.
        detector: ``"trend"`` (default, :class:`~autodrop.TrendTest`, calibrated to
            omega's noise), ``"paper"`` (:class:`~autodrop.PaperRule`, ``|delta omega| <
            theta``), or an object with the :class:`~autodrop.detectors.Detector` protocol
            (each step works on a ``copy.deepcopy`` and keeps it: read :attr:`detector`).
        threshold, max_threshold, window: ``detector="paper"`` only: theta_0 (degrees,
            default 0.01), theta_max (default 1.0), omega window (default 1).
        delay: n_d, intervals from the trigger to the drop, >= 0 (default 20).
        average: average the parameters over the delay window at the drop (default True).
        eps: added to the norm product in the angle, > 0 (default 1e-8).
        snapshot_device: where the buffers live (``None``: beside the parameters).
        after_average: called after the parameters were averaged, e.g.
            ``lambda: torch.optim.swa_utils.update_bn(loader, model)`` (BatchNorm
            statistics are buffers, not parameters, and are not averaged).
        process_group: torch.distributed group the sums are reduced over (default: the
            default group when initialized). DDP and FSDP2/DTensor parameters need
            nothing; every rank must call :meth:`step` and decides the same.
        on_nonfinite: a step with NaN/Inf parameters: ``"warn"`` (default) skips the
            interval and warns once, ``"skip"`` skips silently, ``"raise"`` raises
            ``FloatingPointError`` with nothing changed.
        max_history: records kept, an int >= 1 (default ``None``: all, ~0.4 kB each).
        interval: what a :meth:`step` closes: ``"epoch"`` (default; warns if it follows
            every optimizer step for 10 intervals in a row) or ``"steps"`` (intended).

    Convergence: once no drop is possible, the next window averages but the LR stays,
    the event is ``"converged"`` and :attr:`converged` True (the trajectory stalled at
    its last LR, not a statement about validation error); later steps only measure and
    record, :meth:`allow_drops` continues.

    All or nothing: :meth:`step` measures and decides on copies, changing nothing, then
    commits: the tensor writes (which allocate nothing) and plain assignments, with
    signals (Ctrl-C) held until the step ends. An exception before the commit changes
    nothing; a failure inside the writes (a device fault) cannot be undone, so the
    scheduler then refuses to go on (:meth:`step`, :meth:`state_dict` and the optimizer's
    step raise ``RuntimeError``) until a checkpoint is loaded. If ``after_average`` raises
    or is interrupted, :attr:`refresh_due` stays True (saved too) and it runs again before
    the optimizer's next step or at the next :meth:`step`.

    Faults: a step with a NaN/Inf or elements beyond ~1e154 (``"nonfinite"``), or none
    (``"zero_step"``), is skipped (``event="skipped"``, its ``reason``), warned once.
    Groups added later join at the next interval at their current value (in a window:
    as if they had stayed there); append a floor to :attr:`min_lrs` if floors are per group.

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
        if _OWNERS.get(optimizer, lambda: None)() is not None:
            raise ValueError(
                "this optimizer is already driven by an AutoDrop: a second one would drop its LRs too "
                "(delete the first, or load its state into it with load_state_dict)"
            )
        self.optimizer = optimizer
        self.factor = check_real("factor", factor, "(0, 1)")
        self.min_lr_per_group = isinstance(min_lr, (list, tuple))
        self.min_lrs = groups.check_min_lr(min_lr, len(optimizer.param_groups))
        self.max_drops = None if max_drops is None else check_int("max_drops", max_drops, 0)
        self.detector = make_detector(detector, threshold=threshold, max_threshold=max_threshold, window=window)
        self.delay = check_int("delay", delay, 0)
        self.average = check_bool("average", average)
        self.eps = check_real("eps", eps, "(0, inf)")
        if after_average is not None and not callable(after_average):
            raise TypeError(f"after_average must be callable or None, got {after_average!r}")
        self.after_average = after_average
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, ON_NONFINITE)
        self.max_history = None if max_history is None else check_int("max_history", max_history, 1)
        self.interval = check_choice("interval", interval, INTERVALS)
        self.trajectory = ParameterTrajectory(groups.optimizer_params(optimizer), snapshot_device, process_group)
        self.sums: list[Tensor] | None = None  # z, the delay window's weighted sum
        self.omega: float | None = None  # the latest omega, degrees
        self.base_lrs = [groups.initial_lr(group) for group in optimizer.param_groups]
        self.last_epoch = 0  # torch's counter: compositions such as SequentialLR move it
        self._step_count = 1  # torch's: step() calls plus the initial step
        self._last_lr = groups.lrs(optimizer)
        self.intervals = 0  # AutoDrop's own: the intervals measured, what the history counts
        self.optimizer_steps = 0  # counted by the optimizer hook: each record's x-axis
        self.pending = False
        self.delay_count = 0
        self.num_drops = 0
        self._converged = False
        self.refresh_due = False  # after_average still to run
        self.history: list[dict[str, Any]] = []
        self._steps_in_interval = self._single_step_intervals = 0
        self._warned: set[str] = set()
        self._failed_write: str | None = None  # why the scheduler refuses to go on
        self._in_after_average = False
        self._attach()

    def _attach(self) -> None:
        """Own the optimizer and count its steps (construction, unpickling, deepcopy)."""
        _OWNERS[self.optimizer] = weakref.ref(self)
        target = hookable_optimizer(self.optimizer)
        hook = None if target is None else _before_optimizer_step(weakref.ref(self), weakref.ref(target))
        self._optimizer_hook = None if target is None else target.register_step_pre_hook(hook)

    @property
    def converged(self) -> bool:
        """True from the interval at which, with no drop possible any more, omega saturated again."""
        return self._converged

    @property
    def threshold(self) -> float:
        """The detector's current bound on its statistic (the paper's rule: theta, degrees)."""
        return self.detector.threshold

    def buffer_bytes(self) -> int:
        """Bytes held: ``2 P e_b`` outside the window, ``3 P e_b`` inside (``e_b = max(4, parameter element size)``)."""
        return self.trajectory.buffer_bytes() + sum(s.numel() * s.element_size() for s in self.sums or [])

    def step(self, epoch: int | None = None) -> None:
        """Close one measurement interval: measure, decide, and drop if due (all or nothing).

        ``epoch`` must stay ``None`` (AutoDrop cannot jump to an interval), except
        ``step(0)``, which starts the schedule (older torch's ``SequentialLR`` hands over so).
        """
        if epoch is not None:
            if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch == 0:
                return self._start()
            if isinstance(epoch, (float, Tensor)):
                raise TypeError(f"AutoDrop.step() takes no metric (it measures the parameters), got {epoch!r}")
            raise ValueError(f"epoch must be None (AutoDrop cannot jump to an interval), got {epoch!r}")
        if self._in_after_average:
            raise RuntimeError("AutoDrop.step() was called from inside after_average: call it from the training loop")
        self._check_usable()
        self._run_after_average()  # one that an exception or interrupt cut short
        # signals wait for the end: Python raises them between any two bytecodes, also inside no_grad's switches
        with deferred_signals(), torch.inference_mode(False), torch.no_grad():
            interval = self._decide()
            self._commit(interval)
        if interval.fault is not None:
            self._warn_once(interval.fault)
        self._check_interval_length()
        self._run_after_average()

    def count_initial_step(self) -> None:
        """torch's initial step (``SequentialLR`` calls it on the scheduler that runs first): counters only."""
        self._step_count = 1
        self.last_epoch += 1

    def _start(self) -> None:
        """Start the schedule now (``step(0)``, a ``SequentialLR`` milestone): every group at its base
        LR, measured from the parameters as they are (a warmup's steps are not AutoDrop's intervals)."""
        if self.intervals:
            raise ValueError(
                f"AutoDrop can start only before it measured an interval; it has measured {self.intervals}"
            )
        self._check_usable()
        with deferred_signals(), torch.inference_mode(False), torch.no_grad():
            trajectory = ParameterTrajectory(
                groups.optimizer_params(self.optimizer), self.trajectory.snapshot_device, self.trajectory.process_group
            )
            base_lrs, min_lrs = groups.group_settings(
                self.optimizer, self.base_lrs, self.min_lrs, self.min_lr_per_group
            )
            self.trajectory, self.omega, self.base_lrs, self.min_lrs = trajectory, None, base_lrs, min_lrs
            for group, lr in zip(self.optimizer.param_groups, base_lrs):
                groups.set_lr(group, lr)
            self.last_epoch, self._last_lr = 0, groups.lrs(self.optimizer)

    def _decide(self) -> _Interval:
        """Algorithm 1's trigger, delay window and drop for the interval that ends now; changes nothing."""
        params = groups.changed_params(self.optimizer, self.trajectory.params)
        base_lrs, min_lrs = groups.group_settings(self.optimizer, self.base_lrs, self.min_lrs, self.min_lr_per_group)
        trajectory, sums = self.trajectory, self.sums
        if params is not None and groups.finite_newcomers(params, trajectory.params):
            trajectory, sums = trajectory.with_params(params, sums, self.delay_count * (self.delay_count + 1) / 2)
        measurement = trajectory.measure()
        fault = measurement.statistics.fault
        if fault == NONFINITE and self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"AutoDrop: the parameters contain NaN or Inf at interval {self.intervals + 1} "
                "(on_nonfinite='raise'); the scheduler's state is unchanged"
            )
        lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        progress = (self.pending, self.delay_count, self.num_drops, self._converged)
        omega, statistics = omega_of(measurement.statistics, self.eps), dict.fromkeys(self.detector.statistics())
        interval = _Interval(measurement, omega, trajectory, sums, self.detector, base_lrs, min_lrs, lrs, *progress)
        interval.fault, interval.statistics = fault, statistics
        if fault is not None:
            interval.event = "skipped"
        elif not interval.converged:
            self._decide_window(interval)
        return interval

    def _decide_window(self, interval: _Interval) -> None:
        saturated = False
        if interval.omega is not None:
            interval.detector = copy.deepcopy(self.detector)
            saturated = interval.detector.observe(interval.omega)
            interval.delta, interval.statistics = interval.detector.delta, interval.detector.statistics()
        if not interval.pending and saturated:
            interval.pending, interval.delay_count, interval.event = True, 0, "trigger"
            if self.average and self.delay > 0:
                interval.sums = interval.trajectory.zeros()
        if not interval.pending:
            return
        if interval.delay_count < self.delay:
            interval.delay_count += 1
            interval.weight = float(interval.delay_count) if interval.sums is not None else 0.0
        if interval.delay_count < self.delay:
            return
        # The window closes: average, then drop, or converge when no drop is possible.
        interval.average, interval.pending, interval.delay_count = interval.sums is not None, False, 0
        can_drop = self.max_drops is None or interval.num_drops < self.max_drops
        if not (can_drop and any(lr > floor for lr, floor in zip(interval.lrs, interval.min_lrs))):
            interval.converged, interval.event = True, "converged"
            return
        interval.lrs = groups.dropped(interval.lrs, interval.min_lrs, self.factor)
        interval.detector.on_drop(self.factor)
        interval.num_drops, interval.event = interval.num_drops + 1, "drop"

    def _commit(self, interval: _Interval) -> None:
        """Install what :meth:`_decide` computed: the tensor writes, then plain assignments."""
        self._failed_write = "step() was cut short while it wrote AutoDrop's buffers"
        interval.trajectory.commit(interval.measurement, interval.sums, interval.weight)
        if interval.average:
            interval.trajectory.write_params(interval.sums, self.delay * (self.delay + 1) / 2)
        self._failed_write = None
        self.trajectory, self.omega, self.detector = interval.trajectory, interval.omega, interval.detector
        self.sums = None if interval.average else interval.sums
        self.base_lrs, self.min_lrs = interval.base_lrs, interval.min_lrs
        for group, lr in zip(self.optimizer.param_groups, interval.lrs):
            if lr != float(group["lr"]):
                groups.set_lr(group, lr)
        self.pending, self.delay_count = interval.pending, interval.delay_count
        self.num_drops, self._converged = interval.num_drops, interval.converged
        self.refresh_due = self.refresh_due or interval.average
        self._step_count += 1
        self.last_epoch += 1
        self.intervals += 1
        self._last_lr = groups.lrs(self.optimizer)
        outcome = (interval.omega, interval.delta, self.detector.threshold, interval.lrs, interval.event)
        record = make_record(self.intervals, self.optimizer_steps, *outcome, interval.fault, interval.statistics)
        self.history.append(record)
        if self.max_history is not None and len(self.history) > self.max_history:
            del self.history[: len(self.history) - self.max_history]

    def _check_usable(self) -> None:
        if self._failed_write is not None:
            raise RuntimeError(
                f"AutoDrop: {self._failed_write}; its buffers (at a drop, the parameters too) may be half written. "
                "Resume from the last checkpoint (model, optimizer and scheduler: load_state_dict makes it usable)."
            )

    def _run_after_average(self) -> None:
        """Run ``after_average`` if the parameters were averaged since it last completed."""
        if self.refresh_due and self.after_average is not None:
            try:
                self._in_after_average = True
                self.after_average()
            finally:
                self._in_after_average = False
        self.refresh_due = False

    def _before_optimizer_step(self) -> None:
        """The optimizer step pre-hook: refuse a broken state, finish a cut-short refresh, count the step."""
        self._check_usable()
        self._run_after_average()
        self.optimizer_steps += 1
        self._steps_in_interval += 1

    def allow_drops(self, max_drops: int | None) -> None:
        """Continue with ``max_drops`` drops in all (an int, or None: down to the floor).

        The one way to continue a converged run (the checkpoint's ``max_drops`` overrides the
        constructor's, as every setting): the drop that convergence withheld happens now
        (every LR times ``factor``, the detector's next phase; the next record shows the LRs)
        and the run goes on as before. Raises ``ValueError``, changing nothing, when
        ``max_drops`` is below the drops done, or a converged run still could not drop.
        """
        self._check_usable()
        if max_drops is not None:
            check_int("max_drops", max_drops, self.num_drops + (1 if self._converged else 0))
        lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        if self._converged and all(lr <= floor for lr, floor in zip(lrs, self.min_lrs)):
            raise ValueError(f"every param group's LR is at its floor {self.min_lrs}: lower min_lrs first")
        detector = copy.deepcopy(self.detector)
        if self._converged:
            detector.on_drop(self.factor)
        with deferred_signals():
            self.max_drops = max_drops
            if self._converged:
                for group, lr in zip(self.optimizer.param_groups, groups.dropped(lrs, self.min_lrs, self.factor)):
                    groups.set_lr(group, lr)
                self.detector, self.num_drops, self._converged = detector, self.num_drops + 1, False
                self._last_lr = groups.lrs(self.optimizer)

    def __getstate__(self) -> dict[str, Any]:
        # the hook handle is tied to this process's optimizer object; a copy registers its own
        return {key: value for key, value in self.__dict__.items() if key != "_optimizer_hook"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()

    def __copy__(self) -> AutoDrop:
        raise TypeError("an AutoDrop cannot be copied shallowly (it would drive the same optimizer): use copy.deepcopy")

    def _check_interval_length(self) -> None:
        """Warn once when ``step()`` has followed every single optimizer step for a while."""
        steps, self._steps_in_interval = self._steps_in_interval, 0
        self._single_step_intervals = self._single_step_intervals + 1 if steps == 1 else 0
        if self.interval == "epoch" and self._single_step_intervals == SINGLE_STEP_WARNING_AFTER:
            warnings.warn(
                f"AutoDrop: step() followed every optimizer step for {SINGLE_STEP_WARNING_AFTER} intervals, but each "
                "call closes an interval meant to be an epoch. Call it once per epoch (Hugging Face: AutoDropCallback"
                "; Lightning: 'interval': 'epoch'), or pass AutoDrop(..., interval='steps') if that is intended.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_once(self, fault: str) -> None:
        if fault in self._warned or (fault == NONFINITE and self.on_nonfinite == "skip"):
            return
        self._warned.add(fault)
        what, category = (
            (
                "the parameters contain NaN or Inf, or the step is too large to measure (elements beyond ~1e154)",
                RuntimeWarning,
            )
            if fault == NONFINITE  # the call-order case is a UserWarning, as torch's: filters written for torch match
            else (
                "the parameters did not move (all frozen, no gradients, lr 0, or scheduler.step() called "
                "before optimizer.step())",
                UserWarning,
            )
        )
        warnings.warn(
            f"AutoDrop: {what} in interval {self.intervals}; the interval is skipped (buffers untouched, the next "
            "step is measured from the last good snapshot against the last nonzero step). This warning is shown "
            "once per scheduler.",
            category,
            stacklevel=3,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (:mod:`autodrop.state`): settings, counters, detector, buffers,
        history. Loads with ``torch.load(..., weights_only=True)``. Under torch.distributed it holds
        this rank's shards (one file per rank), or use :class:`autodrop.ShardedState` with DCP."""
        self._check_usable()
        return state_of(self)

    def check_state(self, state: Any) -> None:
        """Raise a ``ValueError``, ``TypeError`` or ``KeyError`` naming what in ``state`` is wrong: version,
        keys, types, ranges, the counters against each other, every history record, every tensor's
        shape, dtype and finiteness against the current parameters. Changes nothing."""
        checked_state(self, state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (settings included, as torch does). The whole state is
        checked first (:meth:`check_state`): a bad one raises and changes nothing. Loading makes a
        scheduler that refused to go on usable again."""
        values = checked_state(self, state_dict)
        detector = copy.deepcopy(self.detector)
        detector.load_state_dict(state_dict["detector"])
        sums = state_dict["sums"]
        sums = None if sums is None else [s.to(t.device).clone() for s, t in zip(sums, self.trajectory.snapshots())]
        with deferred_signals():
            self._failed_write = "load_state_dict() was cut short while it wrote AutoDrop's buffers"
            self.trajectory.load_state_dict(state_dict["trajectory"])
            self._failed_write = None
            vars(self).update({ATTRIBUTES.get(key, key): value for key, value in values.items()})
            self.detector, self.sums = detector, sums
