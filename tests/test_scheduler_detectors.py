"""AutoDrop with pluggable detectors: the default trend test, the paper's rule by name, checkpoints of each."""

import io

import numpy as np
import pytest
import torch
from resume_worker import train_epoch
from states import states_equal
from trajectories import PlanarWalk, scripted_run

from autodrop import AutoDrop, PaperRule, TrendTest


def planar(detector="trend", **kwargs):
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    return param, optimizer, AutoDrop(optimizer, detector=detector, **kwargs), PlanarWalk(param)


def small_trend():
    return TrendTest(window=6, min_intervals=4, patience=2, tolerance=2.0, horizon=4, max_wait=12, wait_factor=0.5)


def test_the_default_detector_is_the_trend_test_and_paper_options_need_the_paper_rule():
    _, _, scheduler, _ = planar()
    assert isinstance(scheduler.detector, TrendTest) and scheduler.threshold == pytest.approx(2.0 / 20)
    _, _, paper, _ = planar("paper", threshold=0.3, window=2)
    assert isinstance(paper.detector, PaperRule) and (paper.threshold, paper.detector.window) == (0.3, 2)
    for option in ({"threshold": 0.2}, {"max_threshold": 2.0}, {"window": 5}):
        with pytest.raises(
            ValueError, match=f"{next(iter(option))} configure the paper's rule and need detector='paper'"
        ):
            planar(**option)
    with pytest.raises(ValueError, match="need detector='paper'"):
        planar(small_trend(), threshold=0.2)
    with pytest.raises(ValueError, match="detector must be one of"):
        planar("sasa")

    class Shadowing(TrendTest):
        def statistics(self):
            return {**super().statistics(), "omega": 1.0}

    with pytest.raises(ValueError, match=r"detector statistics \['omega'\] clash with the history record's own keys"):
        planar(Shadowing())


def test_a_flat_omega_triggers_after_the_test_passes_and_records_its_statistics():
    _, _, scheduler, walk = planar(small_trend(), delay=2)
    rng = np.random.default_rng(0)
    scripted_run(scheduler.step, walk, list(100 + rng.normal(0, 0.2, size=12)))
    events = [(r["interval"], r["event"]) for r in scheduler.history if r["event"]]
    trigger = next(r for r in scheduler.history if r["event"] == "trigger")
    # omega exists from interval 2; the test needs 4 omegas, then 2 consecutive passes
    assert events[0] == (trigger["interval"], "trigger") and trigger["interval"] >= 2 + 4 + 2 - 2
    assert trigger["passes"] >= 2 and trigger["delta"] < trigger["threshold"] and trigger["phase"] < 12
    drop = scheduler.history[trigger["interval"]]
    assert events[1] == (trigger["interval"] + 1, "drop") and drop["lrs"] == [pytest.approx(0.02)]
    first = scheduler.history[0]
    assert {key: first[key] for key in ("delta", "slope", "noise", "phase", "passes", "wait")} == dict.fromkeys(
        ("delta", "slope", "noise", "phase", "passes", "wait")
    )
    after_drop = scheduler.history[events[1][0]]
    assert after_drop["phase"] == 1 and after_drop["wait"] == max(4, round(0.5 * trigger["phase"]))


def test_a_steady_climb_triggers_only_at_the_maximum_wait():
    _, _, scheduler, walk = planar(small_trend(), delay=1)
    scripted_run(scheduler.step, walk, [20.0 + 5 * i for i in range(14)])
    trigger = next(r for r in scheduler.history if r["event"] in ("trigger", "drop"))
    assert trigger["phase"] == 12 and trigger["passes"] < 2 and trigger["interval"] == 13


def training_setup(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = AutoDrop(optimizer, detector=small_trend(), delay=3)
    return x, y, model, optimizer, scheduler


def test_real_training_resumes_bit_for_bit_from_every_interval():
    epochs = 34
    x, y, model, optimizer, scheduler = training_setup()
    checkpoints = []
    for epoch in range(epochs):
        train_epoch(model, optimizer, x, y, epoch)
        scheduler.step()
        buffer = io.BytesIO()
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            buffer,
        )
        checkpoints.append(buffer.getvalue())
    assert scheduler.num_drops >= 2, "the run must pass through several phases and windows"
    final = [p.detach().clone() for p in model.parameters()]
    for stop in range(1, epochs, 3):
        state = torch.load(io.BytesIO(checkpoints[stop - 1]), weights_only=True)
        _, _, resumed_model, resumed_optimizer, resumed = training_setup(seed=1)  # the state brings the settings
        resumed_model.load_state_dict(state["model"])
        resumed_optimizer.load_state_dict(state["optimizer"])
        resumed.load_state_dict(state["scheduler"])
        for epoch in range(stop, epochs):
            train_epoch(resumed_model, resumed_optimizer, x, y, epoch)
            resumed.step()
        assert resumed.history == scheduler.history, f"resumed after interval {stop}"
        assert all(torch.equal(a, b) for a, b in zip(resumed_model.parameters(), final))


def test_a_checkpoint_of_another_detector_is_refused_and_changes_nothing():
    _, _, paper, walk = planar("paper", delay=2)
    scripted_run(paper.step, walk, [30.0, 31.0, 32.0])
    _, _, trend, walk = planar(small_trend(), delay=2)
    scripted_run(trend.step, walk, [30.0, 31.0, 32.0])
    before = trend.state_dict()
    with pytest.raises(ValueError, match=r"state\['detector'\]\['name'\] is 'paper'"):
        trend.load_state_dict(paper.state_dict())
    assert states_equal(trend.state_dict(), before)
    broken = trend.state_dict()
    del broken["history"][-1]["slope"]
    with pytest.raises(KeyError, match=r"state\['history'\]\[3\] lacks \['slope'\]"):
        trend.load_state_dict(broken)
    assert states_equal(trend.state_dict(), before)
