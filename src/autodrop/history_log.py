"""``AutoDrop.history`` as scalars: to CSV, to TensorBoard, and for framework loggers.

Each record of ``AutoDrop.history`` (one per ``step()``) becomes the scalars

    omega (degrees), delta (the detector's statistic), threshold (its bound),
    lr (param group 0), lr_group1, lr_group2, ... (further groups),
    trigger, drop, converged (1.0 at that event, else 0.0),
    and the detector's own statistics (the trend test: slope, noise, phase, passes, wait)

(undefined values are absent), so every logger shows the same names. TensorBoard
needs the ``tensorboard`` package (``pip install 'autodrop[tensorboard]'``); CSV needs nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._optional import import_optional
from .scheduler import RECORD_KEYS

__all__ = ["history_scalars", "write_history_csv", "write_history_tensorboard"]


def history_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The loggable scalars of one history record (names in the module docstring)."""
    scalars = {key: float(record[key]) for key in ("omega", "delta") if record[key] is not None}
    scalars["threshold"] = float(record["threshold"])
    for group, lr in enumerate(record["lrs"]):
        scalars["lr" if group == 0 else f"lr_group{group}"] = float(lr)
    scalars["trigger"] = float(record["event"] == "trigger")
    scalars["drop"] = float(record["event"] == "drop")
    scalars["converged"] = float(record["event"] == "converged")
    scalars.update({key: float(value) for key, value in record.items() if key not in RECORD_KEYS and value is not None})
    return scalars


def _check_records(history: Any) -> None:
    """Every record is a dict with the scheduler's record keys and a list of LRs; else a ValueError naming it."""
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise TypeError(f"history must be a list of AutoDrop history records, got {type(history).__name__}")
    for index, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise TypeError(
                f"history[{index}] must be a dict (an AutoDrop history record), got {type(record).__name__}"
            )
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"history[{index}] lacks {missing}: not an AutoDrop history record")
        if not isinstance(record["lrs"], Sequence):
            raise ValueError(f"history[{index}]['lrs'] must be a list of LRs, got {record['lrs']!r}")


def write_history_csv(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one CSV row per record: interval, omega, delta, threshold, event, reason, lr, lr_group1,
    ..., then the detector's statistics.

    Undefined values (omega, delta early on, no event) are empty cells; floats are
    written with ``repr`` so they read back exactly. Parent folders are created.
    Returns the path. A malformed history raises before the file is touched.
    """
    _check_records(history)
    num_groups = max((len(record["lrs"]) for record in history), default=1)
    lr_columns = ["lr"] + [f"lr_group{group}" for group in range(1, num_groups)]
    extra = list(dict.fromkeys(key for record in history for key in record if key not in RECORD_KEYS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["interval", "omega", "delta", "threshold", "event", "reason", *lr_columns, *extra])
        for record in history:
            cells = [
                record["interval"],
                record["omega"],
                record["delta"],
                record["threshold"],
                record["event"],
                record["reason"],
            ]
            lrs = list(record["lrs"]) + [""] * (num_groups - len(record["lrs"]))
            statistics = [record.get(key) for key in extra]
            writer.writerow(
                ["" if cell is None else cell for cell in cells]
                + lrs
                + ["" if cell is None else cell for cell in statistics]
            )
    return path


def write_history_tensorboard(
    history: Sequence[Mapping[str, Any]], writer_or_logdir: Any, prefix: str = "autodrop/"
) -> None:
    """Add every record's scalars to TensorBoard, at ``global_step`` = the record's interval.

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
            writer.add_scalar(prefix + name, value, global_step=record["interval"])
