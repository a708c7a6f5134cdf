"""AutoDrop's state: one version, its fields, and the checks a loaded state must pass.

A state holds the settings (as torch's schedulers do), torch's counters, AutoDrop's
own counters, the history, the detector's state, the trajectory's buffers and the
delay window's sum. :func:`checked_state` checks every key, type and range, the
counters against each other, every history record, and every tensor against the
current parameters, before anything is applied: a state that could resume wrongly is
refused with an error that names the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from torch import Tensor

from . import groups
from .checks import check_bool, check_choice, check_int, check_keys, check_optional_real, check_real, check_tensors_like
from .history import check_history

if TYPE_CHECKING:
    from .scheduler import AutoDrop

__all__ = ["ATTRIBUTES", "INTERVALS", "ON_NONFINITE", "VERSION", "checked_state", "state_of"]

VERSION = 1
ON_NONFINITE = ("warn", "skip", "raise")
INTERVALS = ("epoch", "steps")
ATTRIBUTES = {"converged": "_converged"}
"""State keys whose attribute has another name (a read-only property stands under the key)."""


def _copied(value: Any) -> Any:
    """A copy of a state value that shares nothing mutable with the scheduler (tensors cloned)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_copied(item) for item in value]
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    return value


def _fields(scheduler: AutoDrop) -> tuple[tuple[str, Callable[[str, Any], Any]], ...]:
    """The scalar fields, ``(key, check)``: ``check(name, value)`` raises naming what is wrong or returns the value."""
    lrs = partial(groups.check_lrs, groups=len(scheduler.optimizer.param_groups))

    def optional_int(minimum: int) -> Callable[[str, Any], int | None]:
        return lambda name, value: None if value is None else check_int(name, value, minimum)

    return (
        ("factor", partial(check_real, interval="(0, 1)")),
        ("min_lrs", partial(lrs, allow_tensor=False)),
        ("min_lr_per_group", check_bool),
        ("max_drops", optional_int(0)),
        ("delay", partial(check_int, minimum=0)),
        ("average", check_bool),
        ("eps", partial(check_real, interval="(0, inf)")),
        ("on_nonfinite", partial(check_choice, choices=ON_NONFINITE)),
        ("max_history", optional_int(1)),
        ("interval", partial(check_choice, choices=INTERVALS)),
        ("base_lrs", partial(lrs, allow_tensor=True)),
        # torch's counters: its compositions move them (SequentialLR undoes a step: -1), wrappers count more
        ("last_epoch", partial(check_int, minimum=-1)),
        ("_step_count", partial(check_int, minimum=0)),
        ("_last_lr", partial(lrs, allow_tensor=True)),  # a tensor LR as torch keeps it
        ("intervals", partial(check_int, minimum=0)),
        ("optimizer_steps", partial(check_int, minimum=0)),
        ("pending", check_bool),
        ("delay_count", partial(check_int, minimum=0)),
        ("num_drops", partial(check_int, minimum=0)),
        ("converged", check_bool),
        ("refresh_due", check_bool),
        ("omega", partial(check_optional_real, interval="[0, 180]")),
        ("history", lambda name, value: check_history(name, value, tuple(scheduler.detector.statistics()))),
    )


def state_of(scheduler: AutoDrop) -> dict[str, Any]:
    """The scheduler's state, sharing nothing mutable with it."""
    fields = {key: _copied(getattr(scheduler, ATTRIBUTES.get(key, key))) for key, _ in _fields(scheduler)}
    tensors = {
        "detector": scheduler.detector.state_dict(),
        "trajectory": scheduler.trajectory.state_dict(),
        "sums": _copied(scheduler.sums),
    }
    return {"version": VERSION, **fields, **tensors}


def checked_state(scheduler: AutoDrop, state: Any) -> dict[str, Any]:
    """The scalar fields' values to store (by key), once all of ``state`` is checked against ``scheduler``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"AutoDrop state must be a dict, got {type(state).__name__}")
    if type(state.get("version")) is not int or state["version"] != VERSION:
        raise ValueError(f"AutoDrop state version {state.get('version')!r} is not supported (expected {VERSION})")
    fields = _fields(scheduler)
    check_keys("AutoDrop state", state, ("version", *(key for key, _ in fields), "detector", "trajectory", "sums"))
    scheduler.detector.check_state(state["detector"], "state['detector']")
    values = {key: check(f"state[{key!r}]", state[key]) for key, check in fields}
    scheduler.trajectory.check_state(state["trajectory"], "state['trajectory']")
    intervals, delay, records = values["intervals"], values["delay"], values["history"]
    most = intervals if values["max_drops"] is None else min(intervals, values["max_drops"])
    check_int("state['num_drops']", values["num_drops"], 0, most)
    if values["converged"] and values["pending"]:
        raise ValueError("state['converged'] and state['pending'] are both True: a converged run has no window")
    check_int("state['delay_count']", values["delay_count"], *((1, delay - 1) if values["pending"] else (0, 0)))
    if len(records) != min(intervals, values["max_history"] or intervals):
        raise ValueError(f"state['history'] has {len(records)} records for {intervals} steps (one per step)")
    for index, record in enumerate(records):
        interval = intervals - len(records) + 1 + index
        check_int(f"state['history'][{index}]['interval']", record["interval"], interval, interval)
        check_int(f"state['history'][{index}]['step']", record["step"], 0, values["optimizer_steps"])
    window = values["pending"] and values["average"] and delay > 0
    if window != (state["sums"] is not None):
        raise ValueError(
            f"state['sums'] must be {'present' if window else 'None'}: the delay window is "
            f"{'open and averages' if window else 'closed, or does not average'}"
        )
    if window:
        check_tensors_like("state['sums']", state["sums"], scheduler.trajectory.snapshots())
    return values
