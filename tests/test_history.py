import csv
import math
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from autodrop import AutoDrop, TrendTest, write_history_csv, write_history_tensorboard
from autodrop.history import history_scalars


def run_history(groups: int = 1, detector=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    params = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.03}] if groups == 2 else model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    options = (
        {"detector": "paper", "threshold": 180.0, "max_threshold": 180.0}
        if detector is None
        else {"detector": detector}
    )
    scheduler = AutoDrop(optimizer, delay=1, factor=0.5, **options)
    x = torch.randn(64, 6)
    y = x.sum(1, keepdim=True)
    for _ in range(5):
        for _ in range(4):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        scheduler.step()
    return scheduler.history


def test_scalars_name_every_quantity_and_mark_the_events():
    history = run_history(groups=2)
    first, drop = history[0], next(r for r in history if r["event"] == "drop")
    assert history_scalars(first) == {
        "threshold": 180.0,
        "lr": 0.1,
        "lr_group1": 0.03,
        "trigger": 0.0,
        "drop": 0.0,
        "converged": 0.0,
    }
    scalars = history_scalars(drop)
    assert scalars["omega"] == drop["omega"] and scalars["delta"] == drop["delta"]
    assert (scalars["lr"], scalars["lr_group1"], scalars["drop"]) == (0.05, 0.015, 1.0)
    assert history_scalars({**drop, "event": "converged"})["converged"] == 1.0


def test_csv_has_one_row_per_record_and_reads_back_exactly(tmp_path):
    history = run_history(groups=2)
    path = write_history_csv(history, tmp_path / "nested" / "history.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["interval", "step", "omega", "delta", "threshold", "event", "reason", "lr", "lr_group1"]
    assert len(rows) == len(history)

    def cell(value):
        return None if value == "" else float(value)

    for row, record in zip(rows, history, strict=True):
        assert int(row["interval"]) == record["interval"]
        assert cell(row["omega"]) == record["omega"] and cell(row["delta"]) == record["delta"]
        assert float(row["threshold"]) == record["threshold"]
        assert (row["event"] or None) == record["event"]
        assert [float(row["lr"]), float(row["lr_group1"])] == record["lrs"]


def test_tensorboard_gets_every_scalar_at_its_optimizer_step(tmp_path):
    history = run_history()
    write_history_tensorboard(history, tmp_path / "tb", prefix="run/")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    names = ("omega", "delta", "threshold", "lr", "trigger", "drop", "converged")
    assert set(events.Tags()["scalars"]) == {f"run/{name}" for name in names}
    lr = [(e.step, e.value) for e in events.Scalars("run/lr")]
    assert lr == [(4 * r["interval"], pytest.approx(r["lrs"][0])) for r in history]  # 4 optimizer steps each
    assert [r["step"] for r in history] == [4, 8, 12, 16, 20]
    omega = {e.step: e.value for e in events.Scalars("run/omega")}
    expected = {r["step"]: r["omega"] for r in history if r["omega"] is not None}
    assert omega.keys() == expected.keys()
    assert all(math.isclose(omega[i], expected[i], rel_tol=1e-6) for i in expected)  # stored as float32


def test_tensorboard_accepts_an_open_writer_and_leaves_it_open(tmp_path):
    history = run_history()
    writer = SummaryWriter(log_dir=str(tmp_path))
    write_history_tensorboard(history, writer)
    writer.add_scalar("after", 1.0, 0)  # still usable
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "autodrop/omega" in events.Tags()["scalars"] and "after" in events.Tags()["scalars"]


def test_tensorboard_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'autodrop\[tensorboard\]'"):
        write_history_tensorboard(run_history(), tmp_path)


def test_the_trend_test_statistics_become_columns_and_scalars(tmp_path):
    history = run_history(detector=TrendTest(window=3, min_intervals=3, patience=1, max_wait=3))
    assert any(r["event"] == "drop" for r in history) and any(r["slope"] is not None for r in history)
    path = write_history_csv(history, tmp_path / "history.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    statistics = ["slope", "noise", "phase", "passes", "wait"]
    assert list(rows[0]) == ["interval", "step", "omega", "delta", "threshold", "event", "reason", "lr", *statistics]
    for row, record in zip(rows, history, strict=True):
        assert [None if row[key] == "" else float(row[key]) for key in statistics] == [
            record[key] for key in statistics
        ]
        scalars = history_scalars(record)
        assert {key: scalars[key] for key in statistics if key in scalars} == {
            key: float(record[key]) for key in statistics if record[key] is not None
        }


def test_csv_keeps_the_reason_of_a_skipped_interval_and_refuses_malformed_histories(tmp_path):
    history = run_history(groups=1)
    skipped = {**history[-1], "event": "skipped", "reason": "zero_step", "omega": None, "delta": None}
    path = write_history_csv(history + [skipped], tmp_path / "history.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (rows[-1]["event"], rows[-1]["reason"]) == ("skipped", "zero_step") and rows[0]["reason"] == ""
    target = tmp_path / "bad.csv"
    for bad, error, message in [
        ("history", TypeError, "history must be a list"),
        ([{"interval": 1}], KeyError, r"history\[0\] lacks \['delta', 'event'"),
        ([history[0], 3], TypeError, r"history\[1\] must be a dict"),
        ([{**history[0], "lrs": 0.1}], TypeError, r"history\[0\]\['lrs'\] must be a list"),
    ]:
        with pytest.raises(error, match=message):
            write_history_csv(bad, target)
    assert not target.exists()
