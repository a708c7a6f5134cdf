import gc
import pickle
import warnings

import numpy as np
import pytest
import torch
from states import states_equal
from torch.optim.lr_scheduler import LRScheduler
from trajectories import PlanarWalk, angle64, flat64, scripted_run

from autodrop import AutoDrop


def planar_setup(lr=0.1, **kwargs):
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr)
    return param, optimizer, AutoDrop(optimizer, **{"detector": "paper", **kwargs}), PlanarWalk(param)


def events(scheduler):
    return [(r["interval"], r["event"]) for r in scheduler.history if r["event"]]


def test_is_an_lr_scheduler_with_torch_accessors():
    _, optimizer, scheduler, _ = planar_setup()
    assert isinstance(scheduler, LRScheduler)
    assert scheduler.get_last_lr() == [0.1] and scheduler.last_epoch == 0
    assert scheduler.omega is None and scheduler.num_drops == 0 and not scheduler.pending


def test_trigger_delay_average_and_drop_timing():
    param, optimizer, scheduler, walk = planar_setup(threshold=0.01, delay=3)
    positions = []
    # omega: 40, 60 (delta 20), 60.005 (delta 0.005 < 0.01: trigger at interval 5)
    for turn in [None, None, 40.0, 60.0, 60.005, 20.0, 80.0]:
        walk.move(turn)
        positions.append(param.detach().numpy().copy())
        if len(positions) == 6:
            break
        scheduler.step()
    assert events(scheduler) == [(5, "trigger")]
    assert scheduler.pending and optimizer.param_groups[0]["lr"] == 0.1
    scheduler.step()  # interval 6: k = 2
    walk.move(80.0)
    positions.append(param.detach().numpy().copy())
    scheduler.step()  # interval 7: k = 3 = delay -> drop
    assert events(scheduler) == [(5, "trigger"), (7, "drop")]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    assert scheduler.threshold == pytest.approx(0.05) and scheduler.num_drops == 1
    expected = (1 * positions[4] + 2 * positions[5] + 3 * positions[6]) / 6
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-12)

    # The next step is measured from the averaged parameters, against the last real step.
    last_step = positions[6] - positions[5]
    walk.move(10.0)
    scheduler.step()
    assert scheduler.omega == pytest.approx(angle64(param.detach().numpy() - expected, last_step), abs=1e-6)


def test_pending_drop_is_not_rearmed_and_history_has_one_record_per_step():
    _, optimizer, scheduler, walk = planar_setup(delay=4, average=False)
    scripted_run(scheduler.step, walk, [30.0] * 12)  # flat omega: delta = 0 every interval
    # first delta at interval 3 -> trigger; drop 3 intervals later; re-trigger right after.
    assert events(scheduler) == [(3, "trigger"), (6, "drop"), (7, "trigger"), (10, "drop"), (11, "trigger")]
    assert len(scheduler.history) == 13 == scheduler.last_epoch
    assert scheduler.num_drops == 2


def test_delay_zero_drops_at_trigger_without_averaging():
    param, optimizer, scheduler, walk = planar_setup(delay=0)
    scripted_run(scheduler.step, walk, [30.0, 30.0])
    assert events(scheduler) == [(3, "drop")]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    headings = np.radians([0, 30, 60])
    assert param.detach().tolist() == pytest.approx([np.cos(headings).sum(), np.sin(headings).sum()], abs=1e-12)


def test_average_off_leaves_parameters_alone():
    param, _, scheduler, walk = planar_setup(delay=3, average=False)
    scripted_run(scheduler.step, walk, [30.0, 30.0, 50.0, 70.0])
    assert events(scheduler)[-1] == (5, "drop")
    headings = np.radians([0, 30, 60, 110, 180])
    assert param[0].item() == pytest.approx(np.cos(headings).sum(), abs=1e-12)


def test_groups_drop_together_with_their_own_floors_and_threshold_caps():
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.01}], lr=0.1)
    scheduler = AutoDrop(
        optimizer, factor=0.5, min_lr=[0.3, 0.004], detector="paper", threshold=0.4, max_threshold=1.0, delay=0
    )
    walk = PlanarWalk(a)
    scripted_run(scheduler.step, walk, [30.0] * 4)
    # Both groups reach their floors at the second drop: the third saturation is convergence.
    changes = [(r["event"], r["lrs"], r["threshold"]) for r in scheduler.history if r["event"]]
    assert changes == [("drop", [0.5, 0.005], 0.8), ("drop", [0.3, 0.004], 1.0), ("converged", [0.3, 0.004], 1.0)]
    assert scheduler.converged and scheduler.num_drops == 2


def test_window_averages_omega_before_the_change():
    _, _, scheduler, walk = planar_setup(threshold=0.5, window=2, delay=0, average=False)
    # window means: (40+80)/2=60, (80+40)/2=60 -> delta 0 at the 3rd omega even though
    # consecutive omegas differ by 40 degrees.
    scripted_run(scheduler.step, walk, [40.0, 80.0, 40.0])
    deltas = [r["delta"] for r in scheduler.history]
    assert deltas[:3] == [None] * 3
    assert deltas[3] == pytest.approx(0.0, abs=1e-6)
    assert events(scheduler) == [(4, "drop")]


def test_frozen_and_gradient_free_parameters_are_tolerated():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    unused = torch.nn.Parameter(torch.ones(3))
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.SGD([*model.parameters(), unused], lr=0.1, momentum=0.9)
    scheduler = AutoDrop(optimizer, delay=1)
    for _ in range(4):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    assert scheduler.omega is not None and 0 <= scheduler.omega <= 180
    assert torch.equal(unused.detach(), torch.ones(3))


def test_real_training_run_drops_the_lr():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = AutoDrop(optimizer, detector="paper", threshold=0.5, max_threshold=2.0, delay=3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        scheduler.step()
    assert scheduler.num_drops >= 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.2**scheduler.num_drops)


def test_state_dict_loads_with_weights_only(tmp_path):
    _, _, scheduler, walk = planar_setup(delay=5)
    scripted_run(scheduler.step, walk, [30.0, 30.0, 31.0])
    assert scheduler.pending
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    _, _, restored, _ = planar_setup(delay=5)
    restored.load_state_dict(state)
    assert restored.history == scheduler.history and restored.pending and restored.delay_count == 2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"factor": 1.0}, "factor"),
        ({"factor": 0.0}, "factor"),
        ({"factor": float("nan")}, "factor"),
        ({"min_lr": -1e-3}, "min_lr"),
        ({"min_lr": [1e-4, 1e-4]}, "min_lr"),
        ({"detector": "paper", "threshold": 0.0}, "threshold"),
        ({"detector": "paper", "threshold": 2.0, "max_threshold": 1.0}, "max_threshold"),
        ({"delay": -1}, "delay"),
        ({"detector": "paper", "window": 0}, "window"),
        ({"eps": 0.0}, "eps"),
        ({"snapshot_device": "nonsense"}, "snapshot_device"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(kwargs, name):
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=name):
        AutoDrop(torch.optim.SGD([param], lr=0.1), **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"delay": 2.5}, "delay"),
        ({"detector": "paper", "window": True}, "window"),
        ({"factor": "0.2"}, "factor"),
        ({"average": 1}, "average"),
    ],
)
def test_bad_types_raise_type_error_naming_the_argument(kwargs, name):
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match=name):
        AutoDrop(torch.optim.SGD([param], lr=0.1), **kwargs)


def test_shared_parameters_between_groups_are_rejected():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    optimizer.param_groups.append({**optimizer.param_groups[0]})
    with pytest.raises(ValueError, match="more than one param group"):
        AutoDrop(optimizer)


def test_after_average_hook_runs_once_per_averaged_drop():
    calls = []
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = AutoDrop(optimizer, detector="paper", delay=2, after_average=lambda: calls.append(flat64([param])))
    scripted_run(scheduler.step, PlanarWalk(param), [30.0] * 5)
    assert len(calls) == scheduler.num_drops >= 1


def drive(walk, scheduler, turns):
    """One interval per turn: a float turns the walk, "stay" leaves the parameters alone."""
    for turn in turns:
        if turn != "stay":
            walk.move(turn)
        scheduler.step()


def buffers(scheduler):
    trajectory = scheduler.trajectory
    tensors = [b.snapshot for b in trajectory.buckets] + [b.previous for b in trajectory.buckets]
    return [t.clone().view(torch.uint8) for t in tensors + (scheduler.sums or [])]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_interval_is_skipped_warned_once_and_touches_no_buffer(bad):
    param, optimizer, scheduler, walk = planar_setup(delay=4)
    positions = []
    for turn in [None, 30.0, 30.0]:  # trigger at interval 3 (k = 1)
        walk.move(turn)
        positions.append(param.detach().numpy().copy())
        scheduler.step()
    assert scheduler.pending and scheduler.delay_count == 1
    before, good = buffers(scheduler), param.detach().clone()
    with pytest.warns(RuntimeWarning, match="NaN or Inf") as caught:
        for _ in range(2):
            with torch.no_grad():
                param[1] = bad
            scheduler.step()
    assert len(caught) == 1
    assert [(r["event"], r["reason"], r["omega"]) for r in scheduler.history[-2:]] == [
        ("skipped", "nonfinite", None)
    ] * 2
    assert same(buffers(scheduler), before)
    assert scheduler.delay_count == 1 and optimizer.param_groups[0]["lr"] == 0.1

    # The model is repaired; the window goes on from the last finite snapshot.
    with torch.no_grad():
        param.copy_(good)
    for turn in [30.0, 30.0, 30.0]:
        walk.move(turn)
        positions.append(param.detach().numpy().copy())
        scheduler.step()
    assert [r["event"] for r in scheduler.history[-3:]] == [None, None, "drop"]
    assert scheduler.history[-3]["omega"] == pytest.approx(30.0, abs=1e-6)
    expected = sum(k * positions[1 + k] for k in range(1, 5)) / 10
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-12)


def test_nonfinite_never_triggers_a_drop_even_with_delay_zero():
    param, optimizer, scheduler, walk = planar_setup(delay=0, on_nonfinite="skip")
    drive(walk, scheduler, [None, 30.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "skip" is silent
        for _ in range(5):
            with torch.no_grad():
                param[0] = float("nan")
            scheduler.step()
    assert events(scheduler) == [(i, "skipped") for i in range(3, 8)] and scheduler.num_drops == 0


def test_on_nonfinite_raise_raises_and_changes_nothing():
    param, _, scheduler, walk = planar_setup(delay=4, on_nonfinite="raise")
    drive(walk, scheduler, [None, 30.0, 30.0])
    before, history = buffers(scheduler), [dict(r) for r in scheduler.history]
    with torch.no_grad():
        param[0] = float("inf")
    with pytest.raises(FloatingPointError, match="interval 4"):
        scheduler.step()
    assert same(buffers(scheduler), before) and scheduler.history == history and scheduler.last_epoch == 3


def test_zero_step_is_skipped_and_the_next_omega_uses_the_last_nonzero_step():
    _, _, scheduler, walk = planar_setup(delay=4)
    with pytest.warns(UserWarning, match="did not move") as caught:
        drive(walk, scheduler, [None, 20.0, "stay", "stay", 50.0])
    assert len(caught) == 1
    assert [(r["event"], r["reason"]) for r in scheduler.history[2:4]] == [("skipped", "zero_step")] * 2
    assert scheduler.history[4]["omega"] == pytest.approx(50.0, abs=1e-6)
    assert scheduler.history[4]["delta"] == pytest.approx(30.0, abs=1e-5)  # against omega 20, the last measured


def test_lr_zero_run_is_all_skipped_and_never_drops():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    scheduler = AutoDrop(optimizer, delay=0, min_lr=0.0)
    with pytest.warns(UserWarning, match="did not move"):
        for _ in range(6):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).square().mean().backward()
            optimizer.step()
            scheduler.step()
    assert all(r["reason"] == "zero_step" for r in scheduler.history) and scheduler.num_drops == 0


def test_max_history_keeps_the_last_records():
    _, _, scheduler, walk = planar_setup(delay=2, max_history=3)
    scripted_run(scheduler.step, walk, [30.0] * 8)
    assert [r["interval"] for r in scheduler.history] == [7, 8, 9]
    _, _, restored, _ = planar_setup(delay=2, max_history=3)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.history == scheduler.history


def test_a_group_added_later_joins_from_the_next_interval_and_counts_as_constant_in_the_window():
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = torch.optim.SGD([a], lr=0.1)
    scheduler = AutoDrop(optimizer, detector="paper", delay=3)
    walk = PlanarWalk(a)
    drive(walk, scheduler, [None, 30.0, 30.0])  # trigger at interval 3: k = 1
    assert scheduler.pending
    optimizer.add_param_group({"params": [b], "lr": 0.5})
    with torch.no_grad():
        b.add_(2.0)  # b trains during interval 4, before it is known
    walk.move(30.0)
    scheduler.step()  # interval 4: omega over a only; b joins at its current value, k = 2
    assert scheduler.history[-1]["omega"] == pytest.approx(30.0, abs=1e-6)
    assert scheduler.history[-1]["lrs"] == [0.1, 0.5] and scheduler.min_lrs == [1e-4, 1e-4]
    joined = b.detach().clone()
    with torch.no_grad():
        b.add_(1.0)
    walk.move(30.0)
    scheduler.step()  # interval 5: k = 3 -> drop; b's average counts it at `joined` for k = 1, 2
    assert events(scheduler)[-1] == (5, "drop")
    np.testing.assert_allclose(b.detach().numpy(), ((1 + 2) * joined.numpy() + 3 * (joined.numpy() + 1.0)) / 6)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.1])

    # From now on the step includes b; the state loads into a scheduler built on both groups.
    snapshot = flat64([a, b])
    walk.move(10.0)
    with torch.no_grad():
        b.add_(0.25)
    scheduler.step()
    step = flat64([a, b]) - snapshot
    assert scheduler.trajectory.previous_norm_sq == pytest.approx(step @ step, rel=1e-12)
    state, history = scheduler.state_dict(), scheduler.history
    del scheduler  # one AutoDrop per optimizer
    fresh = AutoDrop(optimizer, detector="paper", delay=3)
    fresh.load_state_dict(state)
    assert fresh.history == history


@pytest.mark.filterwarnings("ignore:AutoDrop. the parameters did not move")
def test_param_group_changes_that_cannot_be_tracked_raise_clear_errors():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([a], lr=0.1)
    scheduler = AutoDrop(optimizer, min_lr=[1e-4])
    optimizer.add_param_group({"params": [b]})
    with pytest.raises(ValueError, match="append the new groups' floors"):
        scheduler.step()
    scheduler.min_lrs.append(1e-5)
    scheduler.step()
    assert sum(p.numel() for p in scheduler.trajectory.params) == 4
    optimizer.param_groups.pop(0)
    with pytest.raises(ValueError, match="no longer in the optimizer"):
        scheduler.step()


def test_empty_optimizer_and_nonfinite_initial_params_are_rejected():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    optimizer.param_groups[0]["params"] = []
    with pytest.raises(ValueError, match="no parameters"):
        AutoDrop(optimizer)
    with pytest.raises(ValueError, match="NaN or Inf"):
        AutoDrop(torch.optim.SGD([torch.nn.Parameter(torch.tensor([1.0, float("nan")]))], lr=0.1))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"factor": 1.5}, ValueError, r"factor must be a real number in \(0, 1\), got 1.5"),
        ({"min_lr": [1e-4, -1.0]}, ValueError, r"min_lr has 2 values, the optimizer has 1"),
        ({"min_lr": [-1.0]}, ValueError, r"min_lr\[0\] must be a real number in \[0, inf\), got -1.0"),
        ({"min_lr": "1e-4"}, TypeError, r"min_lr must be a real number"),
        (
            {"detector": "paper", "threshold": float("inf")},
            ValueError,
            r"threshold must be a real number in \(0, inf\), got inf",
        ),
        (
            {"detector": "paper", "max_threshold": 0.001},
            ValueError,
            r"max_threshold must be a real number in \[0.01, inf\), got 0.001",
        ),
        ({"delay": -2}, ValueError, r"delay must be an int >= 0, got -2"),
        ({"detector": "paper", "window": 1.0}, TypeError, r"window must be an int in \[1, 10000\], got 1.0"),
        ({"eps": float("nan")}, ValueError, r"eps must be a real number in \(0, inf\), got nan"),
        ({"eps": "1e-8"}, TypeError, r"eps must be a real number"),
        ({"snapshot_device": 3}, TypeError, r"snapshot_device must be None, a str or a torch.device, got 3"),
        ({"after_average": 3}, TypeError, r"after_average must be callable or None, got 3"),
        ({"on_nonfinite": "ignore"}, ValueError, r"on_nonfinite must be one of 'warn', 'skip', 'raise', got 'ignore'"),
        ({"max_history": 0}, ValueError, r"max_history must be an int >= 1, got 0"),
        ({"max_history": 2.0}, TypeError, r"max_history must be an int >= 1, got 2.0"),
    ],
)
def test_every_argument_error_names_argument_value_and_allowed_range(kwargs, error, message):
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(error, match=message):
        AutoDrop(torch.optim.SGD([param], lr=0.1), **kwargs)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        AutoDrop([param])


def test_a_drop_never_raises_an_lr_below_its_floor():
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 1e-5}, {"params": [b], "lr": 1e-2}], lr=0.1)
    scheduler = AutoDrop(optimizer, min_lr=1e-4, detector="paper", threshold=0.4, delay=0)
    scripted_run(scheduler.step, PlanarWalk(a), [30.0] * 3)
    drops = [r["lrs"] for r in scheduler.history if r["event"] == "drop"]
    assert drops == [[1e-5, 2e-3], [1e-5, pytest.approx(4e-4)]]


def test_an_lr_below_its_floor_cannot_drop_so_saturation_is_convergence():
    param, optimizer, scheduler, walk = planar_setup(lr=1e-5, delay=0, min_lr=1e-4)
    scripted_run(scheduler.step, walk, [30.0] * 3)
    assert scheduler.num_drops == 0 and scheduler.converged and optimizer.param_groups[0]["lr"] == 1e-5


def test_failed_load_names_the_problem_and_leaves_the_scheduler_exactly_as_before():
    _, _, scheduler, walk = planar_setup(delay=5)
    scripted_run(scheduler.step, walk, [30.0, 30.0, 31.0])
    good = scheduler.state_dict()
    _, _, target, target_walk = planar_setup(delay=5)
    scripted_run(target.step, target_walk, [10.0, 80.0])
    before = target.state_dict()
    cases = [
        ({**good, "version": 99}, ValueError, "version 99"),
        ({k: v for k, v in good.items() if k != "detector"}, KeyError, "lacks \\['detector'\\]"),
        ({**good, "min_lrs": [1e-4, 1e-4]}, ValueError, r"state\['min_lrs'\] has 2 items, expected 1"),
        ({**good, "delay": "5"}, TypeError, "state\\['delay'\\]"),
        ({**good, "history": good["history"][1:]}, ValueError, "one per step"),
        (
            {**good, "sums": [torch.zeros(3, dtype=torch.float64)]},
            ValueError,
            r"sums'\]\[0\] is \(3,\) torch.float64, the current parameters need \(2,\) torch.float64",
        ),
        (
            {**good, "sums": [torch.full((2,), float("nan"), dtype=torch.float64)]},
            ValueError,
            "NaN or Inf",
        ),
        ({**good, "pending": False}, ValueError, "delay_count"),
    ]
    for state, error, message in cases:
        with pytest.raises(error, match=message):
            target.load_state_dict(state)
        assert states_equal(target.state_dict(), before)


def test_ten_thousand_intervals_keep_memory_flat_with_a_history_cap():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = AutoDrop(
        optimizer, min_lr=0.0, detector="paper", threshold=5.0, max_threshold=10.0, delay=3, max_history=100
    )
    generator = torch.Generator().manual_seed(0)
    buffer_bytes = scheduler.trajectory.buffer_bytes()
    marks = {}
    for interval in range(1, 10_001):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
        scheduler.step()
        if interval in (1_000, 10_000):
            gc.collect()
            marks[interval] = (len(gc.get_objects()), len(pickle.dumps(scheduler.state_dict())))
    assert scheduler.num_drops > 100  # the averaging window opened and closed many times
    assert len(scheduler.history) == 100 and scheduler.history[-1]["interval"] == 10_000
    assert scheduler.trajectory.buffer_bytes() == buffer_bytes
    (objects_before, state_before), (objects_after, state_after) = marks[1_000], marks[10_000]
    assert objects_after - objects_before < 50  # no Python object (tensor, record, list) accumulates
    assert abs(state_after - state_before) < 1_000  # the retained state does not grow


def test_a_nonfinite_newcomer_waits_until_it_is_finite():
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.full((3,), float("nan"), dtype=torch.float64))
    optimizer = torch.optim.SGD([a], lr=0.1)
    scheduler = AutoDrop(optimizer, delay=3)
    walk = PlanarWalk(a)
    drive(walk, scheduler, [None, 30.0])
    optimizer.add_param_group({"params": [b]})
    drive(walk, scheduler, [30.0])
    assert sum(p.numel() for p in scheduler.trajectory.params) == 2
    with torch.no_grad():
        b.fill_(1.0)
    drive(walk, scheduler, [30.0])
    assert sum(p.numel() for p in scheduler.trajectory.params) == 5 and scheduler.base_lrs == [0.1, 0.1]
