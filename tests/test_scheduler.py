import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from autodrop import AutoDrop

from trajectories import PlanarWalk, angle64, flat64, scripted_run


def planar_setup(lr=0.1, **kwargs):
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr)
    return param, optimizer, AutoDrop(optimizer, **kwargs), PlanarWalk(param)


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
    scheduler = AutoDrop(optimizer, factor=0.5, min_lr=[0.3, 0.004], threshold=0.4, max_threshold=1.0, delay=0)
    walk = PlanarWalk(a)
    scripted_run(scheduler.step, walk, [30.0] * 4)
    lrs = [r["lrs"] for r in scheduler.history if r["event"] == "drop"]
    assert lrs == [[0.5, 0.005], [0.3, 0.004], [0.3, 0.004]]
    thresholds = [r["threshold"] for r in scheduler.history if r["event"] == "drop"]
    assert thresholds == [0.8, 1.0, 1.0]


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
    scheduler = AutoDrop(optimizer, threshold=0.5, max_threshold=2.0, delay=3)
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
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 2.0, "max_threshold": 1.0}, "max_threshold"),
        ({"delay": -1}, "delay"),
        ({"window": 0}, "window"),
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
    [({"delay": 2.5}, "delay"), ({"window": True}, "window"), ({"factor": "0.2"}, "factor"), ({"average": 1}, "average")],
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
    scheduler = AutoDrop(optimizer, delay=2, after_average=lambda: calls.append(flat64([param])))
    scripted_run(scheduler.step, PlanarWalk(param), [30.0] * 5)
    assert len(calls) == scheduler.num_drops >= 1
