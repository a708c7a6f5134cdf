"""``AutoDrop.history``: the record's schema, its construction and checks, and its scalars for loggers.

One record per ``AutoDrop.step()``, a dict with the keys :data:`RECORD_KEYS`:

    interval (AutoDrop's count of measured intervals, from 1), step (the optimizer
    steps taken when the interval closed: the x-axis the loss curves use), omega
    (degrees, or None while undefined), delta (the detector's statistic) and threshold
    (its bound), lrs (every param group's LR after the step), event (None, "trigger",
    "drop", "converged" or "skipped"), reason (why an interval was skipped),

then the detector's own statistics (the trend test: slope, noise, phase, passes, wait).
As scalars (:func:`history_scalars`) a record becomes

    omega, delta, threshold, lr (param group 0), lr_group1, lr_group2, ... (further groups),
    trigger, drop, converged (1.0 at that event, else 0.0), and the detector's statistics

(undefined values are absent), so every logger shows the same names. TensorBoard
needs the ``tensorboard`` package (``pip install 'autodrop[tensorboard]'``); CSV needs nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._optional import import_optional
from .checks import check_int, check_keys, check_list, check_optional_real, check_real
from .trajectory import NONFINITE, ZERO_STEP

__all__ = [
    "EVENTS",
    "RECORD_KEYS",
    "check_history",
    "history_scalars",
    "make_record",
    "write_history_csv",
    "write_history_tensorboard",
]

RECORD_KEYS = ("interval", "step", "omega", "delta", "threshold", "lrs", "event", "reason")
EVENTS = (None, "trigger", "drop", "converged", "skipped")
REASONS = (NONFINITE, ZERO_STEP)
CSV_COLUMNS = ("interval", "step", "omega", "delta", "threshold", "event", "reason")


def make_record(
    interval: int,
    step: int,
    omega: float | None,
    delta: float | None,
    threshold: float,
    lrs: Sequence[float],
    event: str | None,
    reason: str | None,
    statistics: Mapping[str, Any],
) -> dict[str, Any]:
    """One history record (``statistics``: the detector's, whose keys must not be record keys)."""
    return {
        "interval": interval,
        "step": step,
        "omega": omega,
        "delta": delta,
        "threshold": threshold,
        "lrs": list(lrs),
        "event": event,
        "reason": reason,
        **statistics,
    }


def check_history(name: str, history: Any, statistics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every record's keys, types and ranges; returns copies. ``statistics``: the detector's
    statistic keys every record must have besides :data:`RECORD_KEYS` (None: any extra keys,
    each a real number or None). Raises naming the record and the value."""
    if isinstance(history, (str, bytes, Mapping)):
        raise TypeError(f"{name} must be a list of AutoDrop history records, got {type(history).__name__}")
    records = check_list(name, history)
    for index, record in enumerate(records):
        where = f"{name}[{index}]"
        if statistics is None:
            check_keys(where, record, RECORD_KEYS, optional=set(record) if isinstance(record, Mapping) else ())
            extra = [key for key in record if key not in RECORD_KEYS]
        else:
            extra = list(statistics)
            check_keys(where, record, (*RECORD_KEYS, *extra))
        for key in extra:
            check_optional_real(f"{where}[{key!r}]", record[key], "(-inf, inf)")
        check_int(f"{where}['interval']", record["interval"], 1)
        check_int(f"{where}['step']", record["step"], 0)
        check_optional_real(f"{where}['omega']", record["omega"], "[0, 180]")
        check_optional_real(f"{where}['delta']", record["delta"], "[0, inf)")
        check_real(f"{where}['threshold']", record["threshold"], "(0, inf)")
        for position, lr in enumerate(check_list(f"{where}['lrs']", record["lrs"])):
            check_real(f"{where}['lrs'][{position}]", lr, "[0, inf)")
        if not (record["event"] is None or isinstance(record["event"], str)) or record["event"] not in EVENTS:
            raise ValueError(f"{where}['event'] must be one of {EVENTS}, got {record['event']!r}")
        reasons = REASONS if record["event"] == "skipped" else (None,)
        reason = record["reason"]
        if not (reason is None or isinstance(reason, str)) or reason not in reasons:
            raise ValueError(
                f"{where}['reason'] must be one of {reasons} for event {record['event']!r}, got {reason!r}"
            )
    return [dict(record, lrs=list(record["lrs"])) for record in records]


def history_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The loggable scalars of one history record (names in the module docstring)."""
    scalars = {key: float(record[key]) for key in ("omega", "delta") if record[key] is not None}
    scalars["threshold"] = float(record["threshold"])
    for group, lr in enumerate(record["lrs"]):
        scalars["lr" if group == 0 else f"lr_group{group}"] = float(lr)
    for event in ("trigger", "drop", "converged"):
        scalars[event] = float(record["event"] == event)
    scalars.update({key: float(value) for key, value in record.items() if key not in RECORD_KEYS and value is not None})
    return scalars


def write_history_csv(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one CSV row per record: :data:`CSV_COLUMNS`, lr, lr_group1, ..., then the detector's statistics.

    Undefined values (omega, delta early on, no event) are empty cells; floats are
    written with ``repr`` so they read back exactly. Parent folders are created.
    Returns the path. A malformed history raises before the file is touched.
    """
    history = check_history("history", history)
    num_groups = max((len(record["lrs"]) for record in history), default=1)
    lr_columns = ["lr"] + [f"lr_group{group}" for group in range(1, num_groups)]
    extra = list(dict.fromkeys(key for record in history for key in record if key not in RECORD_KEYS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *lr_columns, *extra])
        for record in history:
            lrs = list(record["lrs"]) + [""] * (num_groups - len(record["lrs"]))
            cells = [record[key] for key in CSV_COLUMNS] + lrs + [record.get(key) for key in extra]
            writer.writerow(["" if cell is None else cell for cell in cells])
    return path


def write_history_tensorboard(
    history: Sequence[Mapping[str, Any]], writer_or_logdir: Any, prefix: str = "autodrop/"
) -> None:
    """Add every record's scalars to TensorBoard, at ``global_step`` = the record's optimizer step
    (the step the Trainer's own curves use).

    ``writer_or_logdir`` is a ``torch.utils.tensorboard.SummaryWriter`` (or any
    object with ``add_scalar`` and ``flush``), which is flushed and left open, or a
    folder, for which a writer is opened and closed here. Tags are ``prefix + name``,
    e.g. ``autodrop/omega``.
    """
    if isinstance(writer_or_logdir, (str, Path)):
        tensorboard = import_optional("torch.utils.tensorboard", "tensorboard", "write_history_tensorboard")
        writer = tensorboard.SummaryWriter(log_dir=str(writer_or_logdir))
        try:
            _add_scalars(history, writer, prefix)
        finally:
            writer.close()
    else:
        _add_scalars(history, writer_or_logdir, prefix)
        writer_or_logdir.flush()


def _add_scalars(history: Sequence[Mapping[str, Any]], writer: Any, prefix: str) -> None:
    for record in history:
        for name, value in history_scalars(record).items():
            writer.add_scalar(prefix + name, value, global_step=record["step"])
