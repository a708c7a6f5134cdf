import json
import math

import numpy as np
import pytest
import torch

from autodrop import ActiveSGD
from autodrop.apps.bench import runner, schedules
from autodrop.apps.bench.runner import SUITES, RunSpec, plan_runs, run_all, run_one
from autodrop.apps.bench.schedules import Schedule, autodrop_delay


def spec(schedule: str, epochs: int = 4, lr: float = 0.05, seed: int = 0) -> RunSpec:
    return RunSpec("digits-cnn", schedule, "sgd", lr, seed, epochs, 64, device="cpu")


def test_quick_plan_compares_the_default_with_step_cosine_and_the_paper_rule_over_three_seeds():
    specs = plan_runs(SUITES["quick"])
    assert sorted((s.schedule, s.seed) for s in specs) == [
        (name, seed) for name in sorted(("step", "cosine", "autodrop", "autodrop-paper")) for seed in range(3)
    ]
    assert {s.lr for s in specs} == {0.05} and {s.epochs for s in specs} == {60}


def test_long_plan_is_the_detector_protocol():
    specs = plan_runs(SUITES["long"])
    assert len({s.key for s in specs}) == len(specs) and {s.epochs for s in specs} == {100}
    for task in ("mnist-mlp", "mnist1d-cnn"):
        runs = [s for s in specs if s.task == task]
        for name in ("step", "cosine", "plateau", "autodrop-paper", "autodrop"):
            assert sorted(s.seed for s in runs if s.schedule == name and s.lr == 0.05) == [0, 1, 2]
        for name in ("step", "autodrop", "autodrop-stop", "step-earlystop"):
            assert sorted({s.lr for s in runs if s.schedule == name}) == [0.03, 0.05, 0.1, 0.15]
    assert len(specs) == 2 * (7 * 3 + 4 * 3 * 3)


def test_plan_overrides_and_bad_input():
    specs = plan_runs(SUITES["long"], schedules=["step"], seeds=3, epochs=5, lrs=[0.2, 0.01])
    specs = [s for s in specs if s.task == "mnist-mlp"]
    assert sorted((s.lr, s.seed) for s in specs) == [(lr, seed) for lr in (0.01, 0.05, 0.2) for seed in range(3)]
    assert {s.epochs for s in specs} == {5}
    with pytest.raises(ValueError, match=r"--schedules \['nope'\] unknown; available"):
        plan_runs(SUITES["quick"], schedules=["nope"])
    with pytest.raises(ValueError, match=r"--lrs must be numbers in \(0, 1e\+06\]"):
        plan_runs(SUITES["quick"], lrs=[0.1, -1.0])
    with pytest.raises(ValueError, match=r"--lrs must be numbers in \(0, 1e\+06\], got \[0.1, 1e\+308\]"):
        plan_runs(SUITES["quick"], lrs=[0.1, 1e308])


def test_autodrop_delay_keeps_the_paper_ratio_only_when_runs_are_short():
    assert [autodrop_delay(e) for e in (3, 20, 60, 199, 200, 300)] == [1, 2, 6, 20, 20, 20]


def test_step_schedule_drops_at_30_60_80_percent():
    record = run_one(spec("step", epochs=10))
    assert record["settings"] == {"milestones": [3, 6, 8]}
    assert record["epoch_lr"] == pytest.approx([0.05] * 3 + [0.01] * 3 + [0.002] * 2 + [0.0004] * 2)


def test_omega_is_the_same_from_autodrop_history_and_from_angular_velocity():
    constant, autodrop = run_one(spec("constant")), run_one(spec("autodrop-paper"))
    assert autodrop["drop_epochs"] == [] and autodrop["history"][-1]["threshold"] == 0.01
    # Same seed and no drop: the same training, measured by two different paths.
    assert constant["test_error"] == autodrop["test_error"]
    assert constant["omega"][0] is None and constant["omega"][1:] == pytest.approx(autodrop["omega"][1:], abs=1e-9)
    assert all(0 < omega < 180 for omega in constant["omega"][1:])
    assert constant["history"] is None and autodrop["delta"] == [h["delta"] for h in autodrop["history"]]


def test_autodrop_drop_averages_and_refreshes_batchnorm(monkeypatch):
    eager = Schedule(
        "autodrop-eager",
        "always saturated",
        schedules._autodrop(detector="paper", threshold=180.0, max_threshold=180.0),
    )
    monkeypatch.setitem(schedules.SCHEDULES, eager.name, eager)
    monkeypatch.setitem(runner.SCHEDULES, eager.name, eager)
    calls = []
    original = torch.optim.swa_utils.update_bn
    monkeypatch.setattr(
        torch.optim.swa_utils, "update_bn", lambda loader, model: calls.append(len(loader)) or original(loader, model)
    )
    record = run_one(spec("autodrop-eager", epochs=5))
    # omega exists from epoch 2, its change from epoch 3; delay 1 drops at the trigger.
    assert record["trigger_epochs"] == record["drop_epochs"] == [3, 4, 5]
    assert record["epoch_lr"] == pytest.approx([0.05, 0.05, 0.05, 0.01, 0.002])
    assert calls == [2, 2, 2]  # 1200 training inputs in batches of 1024, once per drop


def test_activelr_row_builds_its_optimizer_and_ends_each_epoch(monkeypatch):
    ended = []
    original = ActiveSGD.end_epoch
    monkeypatch.setattr(
        ActiveSGD, "end_epoch", lambda self: ended.append(self.param_groups[0]["epoch"]) or original(self)
    )
    record = run_one(spec("activesgd", epochs=3))
    assert ended == [0, 1, 2]  # one epoch ended per training epoch, each after its steps
    assert record["epoch_lr"] == [0.05] * 3 and record["history"] is None and len(record["omega"]) == 3
    assert plan_runs(SUITES["standard"], schedules=["activeadamw"], seeds=1)[0].lr == 1e-3
    sweep = sorted({s.lr for s in plan_runs(SUITES["standard"], schedules=["activesgd"], seeds=1)})
    assert sweep == pytest.approx([0.005, 0.015, 0.05, 0.15, 0.5])  # two orders of magnitude


def test_runs_are_deterministic_under_a_seed():
    first, second = run_one(spec("cosine", epochs=2)), run_one(spec("cosine", epochs=2))
    assert first["test_error"] == second["test_error"] and first["train_loss"] == second["train_loss"]
    assert run_one(spec("cosine", epochs=2, seed=1))["train_loss"] != first["train_loss"]


def test_run_all_in_two_processes_appends_json_lines(tmp_path):
    specs = [spec("constant", epochs=1), spec("plateau", epochs=1)]
    records = run_all(specs, tmp_path / "runs.jsonl", jobs=2)
    assert [r["schedule"] for r in records] == ["constant", "plateau"]
    assert all(r["threads"] == 1 for r in records)
    stored = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in stored) == sorted(s.key for s in specs)
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        run_all(specs, tmp_path / "runs.jsonl", jobs=0)


def test_unavailable_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="this machine has 1 cuda device"):
        run_one(RunSpec("digits-cnn", "constant", "sgd", 0.05, 0, 1, 64, "cuda:1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' is not available"):
        run_one(RunSpec("digits-cnn", "constant", "sgd", 0.05, 0, 1, 64, "cuda"))
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N, got 'toaster'"):
        run_one(RunSpec("digits-cnn", "constant", "sgd", 0.05, 0, 1, 64, "toaster"))


def test_each_epoch_times_the_training_pass_and_autodrop_step():
    autodrop, constant = run_one(spec("autodrop", epochs=2)), run_one(spec("constant", epochs=2))
    for seconds in (autodrop["train_s"], autodrop["autodrop_step_s"], constant["train_s"]):
        assert len(seconds) == 2 and all(math.isfinite(s) and s >= 0 for s in seconds)
    assert constant["autodrop_step_s"] == [None, None]  # no AutoDrop, nothing to time


def test_the_clock_waits_for_cuda_work(monkeypatch):
    synchronized = []
    monkeypatch.setattr(torch.cuda, "synchronize", synchronized.append)
    runner._clock(torch.device("cpu"))
    assert synchronized == []
    runner._clock(torch.device("cuda", 0))
    assert synchronized == [torch.device("cuda", 0)]


def test_autodrop_stop_ends_the_run_when_autodrop_has_converged(monkeypatch):
    eager = Schedule(
        "autodrop-eager-stop",
        "always saturated, stops at convergence",
        schedules._autodrop(
            stop_when_converged=True, max_drops=1, detector="paper", threshold=180.0, max_threshold=180.0
        ),
    )
    monkeypatch.setitem(schedules.SCHEDULES, eager.name, eager)
    monkeypatch.setitem(runner.SCHEDULES, eager.name, eager)
    record = run_one(spec("autodrop-eager-stop", epochs=10))
    # delay 1: the trigger at epoch 3 drops, the one at epoch 4 finds no drop left and converges.
    assert record["event"] == [None, None, "drop", "converged"] and record["stopped_epoch"] == 4
    assert (
        len(record["test_error"]) == len(record["train_s"]) == 4
        and record["final_test_error"] == record["test_error"][-1]
    )
    assert run_one(spec("autodrop", epochs=3))["stopped_epoch"] is None


def test_early_stopping_stops_after_patience_epochs_without_a_new_best():
    losses = np.array([5.0, 4.0, 4.0, 3.0, 3.5, 3.2, 3.0, 3.1, 2.9, 3.0, 3.0, 3.0])
    stopping = schedules.EarlyStopping(patience=3)
    stops = []
    for loss in losses:
        stopping.update(float(loss))
        stops.append(stopping.should_stop)
    best_so_far = np.minimum.accumulate(losses)
    improved = np.r_[True, losses[1:] < best_so_far[:-1]]
    since = np.array([i - np.flatnonzero(improved[: i + 1])[-1] for i in range(len(losses))])
    assert stops == list(since >= 3)
    assert stops.index(True) == 6  # 3.0 at epoch 7 only equals the best: not an improvement


def test_step_earlystop_stops_where_its_validation_loss_says():
    record = run_one(spec("step-earlystop", epochs=60))
    losses = record["val_loss"]
    best, since, expected = float("inf"), 0, None
    for epoch, loss in enumerate(losses, 1):
        best, since = (loss, 0) if loss < best else (best, since + 1)
        if since >= 10:
            expected = epoch
            break
    assert expected is not None and record["stopped_epoch"] == expected == len(losses) < 60
    assert record["settings"] == {"milestones": [18, 36, 48], "patience": 10}


def test_a_torn_last_line_is_ignored_with_a_warning_and_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "runs.jsonl"
    first = run_one(spec("constant", epochs=1))
    path.write_text(json.dumps(first) + "\n" + json.dumps(first)[:50])  # killed while appending
    with pytest.warns(UserWarning, match="last line is not complete JSON"):
        assert [r["key"] for r in runner.read_records(path)] == [first["key"]]
    with pytest.warns(UserWarning, match="last line is not complete JSON"):
        records = run_all([spec("constant", epochs=1), spec("cosine", epochs=1)], path)
    assert [r["schedule"] for r in records] == ["constant", "cosine"]
    assert [json.loads(line)["schedule"] for line in path.read_text().splitlines()] == ["constant", "cosine"]
    path.write_text("{not json}\n" + json.dumps(first) + "\n")
    with pytest.raises(ValueError, match=r"runs.jsonl line 1 is not JSON"):
        runner.read_records(path)
