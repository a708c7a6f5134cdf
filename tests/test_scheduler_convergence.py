"""AutoDrop's convergence signal: ``max_drops``, ``converged`` and the ``"converged"`` event."""

import numpy as np
import pytest
import torch
from states import states_equal
from trajectories import PlanarWalk, flat64, scripted_run

from autodrop import AutoDrop, TrendTest


def planar(lr=0.1, **kwargs):
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr)
    settings = {"detector": "paper", "threshold": 0.5, "max_threshold": 1.0, "factor": 0.5, "min_lr": 0.0, **kwargs}
    return param, optimizer, AutoDrop(optimizer, **settings), PlanarWalk(param)


def events(scheduler):
    return [(r["interval"], r["event"]) for r in scheduler.history if r["event"]]


def test_converged_only_after_the_last_allowed_drop_and_never_before():
    _, optimizer, scheduler, walk = planar(max_drops=2, delay=2)
    converged = []
    walk.move()
    scheduler.step()
    for _ in range(12):
        walk.move(30.0)  # flat omega: saturated at every chance
        scheduler.step()
        converged.append(scheduler.converged)
    assert events(scheduler) == [
        (3, "trigger"),
        (4, "drop"),
        (5, "trigger"),
        (6, "drop"),
        (7, "trigger"),
        (8, "converged"),
    ]
    assert converged == [False] * 6 + [True] * 6
    assert scheduler.num_drops == 2 and optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_max_drops_0_never_drops_and_detects_convergence_at_the_initial_lr():
    _, optimizer, scheduler, walk = planar(max_drops=0, delay=3)
    scripted_run(scheduler.step, walk, [30.0] * 8)
    assert events(scheduler) == [(3, "trigger"), (5, "converged")]
    assert scheduler.num_drops == 0 and optimizer.param_groups[0]["lr"] == 0.1
    assert [r["lrs"] for r in scheduler.history] == [[0.1]] * 9


def test_none_drops_until_every_floor_then_converges():
    _, optimizer, scheduler, walk = planar(min_lr=0.02, delay=0)
    scripted_run(scheduler.step, walk, [30.0] * 6)
    # 0.1 -> 0.05 -> 0.025 -> 0.02 (the floor), then no drop is possible.
    assert events(scheduler) == [(3, "drop"), (4, "drop"), (5, "drop"), (6, "converged")]
    assert optimizer.param_groups[0]["lr"] == 0.02 and scheduler.converged


def test_the_converged_parameters_are_the_weighted_average_of_the_last_window():
    param, _, scheduler, walk = planar(max_drops=0, delay=3)
    positions = []
    walk.move()
    scheduler.step()
    for turn in [30.0, 30.0, 50.0, 70.0]:
        walk.move(turn)
        positions.append(flat64([param]))
        scheduler.step()
    assert events(scheduler) == [(3, "trigger"), (5, "converged")]
    window = np.stack(positions[-3:])  # intervals 3, 4, 5 with weights 1, 2, 3
    np.testing.assert_allclose(flat64([param]), (window * [[1], [2], [3]]).sum(0) / 6, rtol=0, atol=1e-12)


def test_without_averaging_the_parameters_stay_where_training_left_them():
    param, _, scheduler, walk = planar(max_drops=0, delay=3, average=False)
    scripted_run(scheduler.step, walk, [30.0] * 4)
    headings = np.radians([0, 30, 60, 90, 120])
    expected = np.stack([np.cos(headings), np.sin(headings)], 1).sum(0)
    np.testing.assert_allclose(flat64([param]), expected, rtol=0, atol=1e-12)
    assert scheduler.converged


def test_stepping_on_after_convergence_changes_nothing_but_the_history():
    calls = []
    param, optimizer, scheduler, walk = planar(max_drops=1, delay=2, after_average=lambda: calls.append(1))
    scripted_run(scheduler.step, walk, [30.0] * 5)
    assert scheduler.converged and len(calls) == 2
    before = scheduler.state_dict()
    for _ in range(4):
        walk.move(30.0)
        moved = param.detach().clone()
        scheduler.step()
        assert torch.equal(param, moved)  # no averaging, no write-back
    after = scheduler.state_dict()
    assert len(calls) == 2 and optimizer.param_groups[0]["lr"] == 0.05
    for key in ("num_drops", "converged", "pending", "delay_count", "detector", "sums", "_last_lr"):
        assert states_equal(after[key], before[key]), key
    assert [r["event"] for r in scheduler.history[-4:]] == [None] * 4
    assert [r["omega"] for r in scheduler.history[-4:]] == [pytest.approx(30.0)] * 4
    assert [r["delta"] for r in scheduler.history[-4:]] == [None] * 4


@pytest.mark.parametrize("detector", ["paper", "trend"])
def test_resumed_from_every_interval_the_run_converges_exactly_as_the_uninterrupted_one(detector):
    turns = [30.0 + 0.1 * (i % 3) for i in range(40)]

    def options():
        if detector == "paper":
            return {"max_drops": 1, "delay": 3}
        small = TrendTest(window=6, min_intervals=4, patience=2, max_wait=8)
        return {"max_drops": 1, "delay": 3, "detector": small, "threshold": None, "max_threshold": None}

    param, _, reference, walk = planar(**options())
    scripted_run(reference.step, walk, turns)
    converged_at = [r["interval"] for r in reference.history if r["event"] == "converged"]
    assert reference.converged and len(converged_at) == 1
    for cut in range(1, converged_at[0] + 3):
        param, optimizer, first, walk = planar(**options())
        scripted_run(first.step, walk, turns[: cut - 1])
        saved = first.state_dict(), optimizer.state_dict(), param.detach().clone(), walk.heading
        param, optimizer, resumed, walk = planar(**options())
        with torch.no_grad():
            param.copy_(saved[2])
        walk.heading = saved[3]
        optimizer.load_state_dict(saved[1])
        resumed.load_state_dict(saved[0])
        for turn in turns[cut - 1 :]:
            walk.move(turn)
            resumed.step()
        assert states_equal(resumed.state_dict(), reference.state_dict()), cut


@pytest.mark.parametrize("value, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)])
def test_max_drops_must_be_none_or_an_int_at_least_0(value, error):
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(error, match=r"max_drops must be an int >= 0, got"):
        AutoDrop(torch.optim.SGD([param], lr=0.1), max_drops=value)


def test_states_a_converged_run_cannot_have_are_refused_and_change_nothing():
    _, _, scheduler, walk = planar(max_drops=1, delay=2)
    scripted_run(scheduler.step, walk, [30.0] * 5)
    before = scheduler.state_dict()
    bad = {**before, "pending": True, "delay_count": 1}
    with pytest.raises(ValueError, match=r"state\['converged'\] and state\['pending'\] are both True"):
        scheduler.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"state\['num_drops'\] must be an int in \[0, 0\], got 1"):
        scheduler.load_state_dict({**before, "max_drops": 0})
    with pytest.raises(TypeError, match=r"state\['converged'\] must be a bool"):
        scheduler.load_state_dict({**before, "converged": 1})
    assert states_equal(scheduler.state_dict(), before)


def test_real_training_converges_with_the_default_detector_and_stays_put():
    torch.manual_seed(0)
    inputs, targets = torch.randn(256, 8), torch.randn(256, 1)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = AutoDrop(optimizer, max_drops=1, delay=2)
    intervals = 0
    while not scheduler.converged and intervals < 400:
        for batch in range(0, 256, 32):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(inputs[batch : batch + 32]), targets[batch : batch + 32]).backward()
            optimizer.step()
        scheduler.step()
        intervals += 1
    assert scheduler.converged and scheduler.num_drops == 1
    assert [r["event"] for r in scheduler.history].count("converged") == 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_allow_drops_continues_a_converged_run_with_the_withheld_drop_also_after_a_resume():
    param, optimizer, scheduler, walk = planar(max_drops=1, delay=2)
    scripted_run(scheduler.step, walk, [30.0] * 6)
    assert scheduler.converged and optimizer.param_groups[0]["lr"] == 0.05
    state = scheduler.state_dict()
    del scheduler
    resumed = AutoDrop(optimizer, detector="paper", max_drops=3)  # the checkpoint's max_drops wins, as every setting
    resumed.load_state_dict(state)
    assert resumed.max_drops == 1 and resumed.converged
    with pytest.raises(ValueError, match=r"max_drops must be an int >= 2, got 1"):
        resumed.allow_drops(1)
    resumed.allow_drops(3)
    assert not resumed.converged and resumed.num_drops == 2 and optimizer.param_groups[0]["lr"] == 0.025
    assert resumed.threshold == 1.0  # the detector's next phase: theta / factor, capped at max_threshold
    for _ in range(8):
        walk.move(30.0)
        resumed.step()
    assert [event for _, event in events(resumed)][-4:] == ["trigger", "drop", "trigger", "converged"]
    assert resumed.num_drops == 3 and resumed.converged


def test_allow_drops_refuses_a_run_at_its_floor_and_changes_nothing():
    _, optimizer, scheduler, walk = planar(min_lr=0.05, delay=0)
    scripted_run(scheduler.step, walk, [30.0] * 5)
    assert scheduler.converged
    before = scheduler.state_dict()
    with pytest.raises(ValueError, match="at its floor"):
        scheduler.allow_drops(None)
    assert states_equal(scheduler.state_dict(), before)
