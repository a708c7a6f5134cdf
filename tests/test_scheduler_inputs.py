"""Inputs that used to be accepted and fail later: param groups, inference mode, tensor LRs,
replaced parameters, huge or numpy numbers. Each fails at once with a clear error, or works."""

import copy
import io

import numpy as np
import pytest
import torch
from states import states_equal
from trajectories import PlanarWalk, scripted_run

from autodrop import AngularVelocity, AutoDrop

EAGER = dict(detector="paper", threshold=180.0, max_threshold=180.0, delay=2, factor=0.5)


def reload(scheduler, optimizer):
    """A fresh scheduler on a copy of ``optimizer`` (one AutoDrop per optimizer) loaded from ``scheduler``'s
    state through torch.save (weights only)."""
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh = AutoDrop(copy.deepcopy(optimizer), **EAGER)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def test_an_empty_group_and_a_group_not_finite_yet_drop_with_the_others_once():
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = AutoDrop(optimizer, **EAGER)
    walk = PlanarWalk(param)
    scripted_run(scheduler.step, walk, [30.0])
    optimizer.add_param_group({"params": [], "lr": 0.2})
    late = torch.nn.Parameter(torch.full((3,), float("nan"), dtype=torch.float64))
    optimizer.add_param_group({"params": [late], "lr": 0.4})
    for _ in range(2):  # trigger at 3, drop at 4: the new parameter is not finite, so not yet measured
        walk.move(30.0)
        scheduler.step()
    assert [r["event"] for r in scheduler.history] == [None, None, "trigger", "drop"]
    assert [group["lr"] for group in optimizer.param_groups] == [0.05, 0.1, 0.2]
    assert scheduler.base_lrs == [0.1, 0.2, 0.4] and len(scheduler.min_lrs) == 3
    assert sum(p.numel() for p in scheduler.trajectory.params) == 2
    with torch.no_grad():
        late.zero_()
    walk.move(30.0)
    scheduler.step()  # now it joins
    assert sum(p.numel() for p in scheduler.trajectory.params) == 5
    assert states_equal(reload(scheduler, optimizer).state_dict(), scheduler.state_dict())


def test_a_step_inside_inference_mode_is_a_step_like_any_other():
    def run(inference):
        param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        optimizer = torch.optim.SGD([param], lr=0.1)
        scheduler = AutoDrop(optimizer, **EAGER)
        walk = PlanarWalk(param)
        for interval, turn in enumerate([None, 30.0, 40.0, 35.0, 30.0, 32.0]):
            walk.move(turn)
            if inference and interval in (2, 4):  # the trigger (the window's sum is made) and the next one
                with torch.inference_mode():
                    scheduler.step()
            else:
                scheduler.step()
        return scheduler.state_dict(), param.detach().clone()

    (state, param), (reference, reference_param) = run(True), run(False)
    assert states_equal(state, reference) and torch.equal(param, reference_param)
    assert [r["event"] for r in state["history"]][2:4] == ["trigger", "drop"]


def test_a_tensor_lr_drops_in_place_and_is_not_aliased_by_the_initial_lr():
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    lr = torch.tensor(0.1)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = AutoDrop(optimizer, **EAGER)
    scripted_run(scheduler.step, PlanarWalk(param), [30.0, 30.0, 30.0])
    group = optimizer.param_groups[0]
    assert group["lr"] is lr and float(lr) == pytest.approx(0.05)  # the optimizer's tensor, changed in place
    assert float(group["initial_lr"]) == pytest.approx(0.1) and group["initial_lr"] is not lr
    assert scheduler.base_lrs == [pytest.approx(0.1)] and scheduler.get_last_lr() == [pytest.approx(0.05)]
    # as torch keeps it: the tensor's own value, a copy (not a float32-rounded float)
    assert isinstance(scheduler.base_lrs[0], torch.Tensor) and torch.equal(scheduler.base_lrs[0], torch.tensor(0.1))
    assert states_equal(reload(scheduler, optimizer).state_dict(), scheduler.state_dict())


def test_one_autodrop_per_optimizer_and_no_shallow_copy():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = AutoDrop(optimizer, **EAGER)
    with pytest.raises(ValueError, match="already driven by an AutoDrop"):
        AutoDrop(optimizer, **EAGER)
    with pytest.raises(TypeError, match="cannot be copied shallowly"):
        copy.copy(scheduler)
    twin = copy.deepcopy(scheduler)  # its own optimizer, its own history
    assert twin.optimizer is not optimizer and twin.history is not scheduler.history
    del scheduler
    AutoDrop(optimizer, **EAGER)  # the first is gone: a new one may drive the optimizer


def test_step_called_before_the_optimizer_warns_as_torch_does():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = AutoDrop(optimizer, **EAGER)
    with pytest.warns(UserWarning, match=r"scheduler.step\(\) called before optimizer.step\(\)") as caught:
        scheduler.step()
    assert [w.category for w in caught] == [UserWarning]  # not a RuntimeWarning: filters written for torch match


@pytest.mark.parametrize("scale", [1e160, 1e-300])
def test_steps_beyond_float64_squares_are_reported_honestly(scale):
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    scheduler = AutoDrop(torch.optim.SGD([param], lr=0.1), **EAGER)
    with torch.no_grad():
        param.add_(scale)
    with pytest.warns((RuntimeWarning, UserWarning), match="beyond ~1e154" if scale > 1 else "did not move"):
        scheduler.step()
    assert scheduler.history[-1]["reason"] == ("nonfinite" if scale > 1 else "zero_step")


def test_a_replaced_parameter_shape_is_a_clear_error_and_changes_nothing():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = AutoDrop(optimizer, **EAGER)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn(3, 4))
        scheduler.step()
    before = scheduler.state_dict()
    model.weight.data = torch.zeros(5, 4)
    with pytest.raises(ValueError, match=r"shape \(3, 4\) torch.float32 is now \(5, 4\).*build a new AutoDrop"):
        scheduler.step()
    assert states_equal(scheduler.state_dict(), before)


def test_on_nonfinite_raise_leaves_everything_as_it_was():
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = AutoDrop(optimizer, on_nonfinite="raise", **EAGER)
    walk = PlanarWalk(param)
    scripted_run(scheduler.step, walk, [30.0])
    before, omega = scheduler.state_dict(), scheduler.omega
    with torch.no_grad():
        param[0] = float("nan")
    with pytest.raises(FloatingPointError, match="state is unchanged"):
        scheduler.step()
    assert scheduler.omega == omega and states_equal(scheduler.state_dict(), before)


def test_numbers_too_large_or_from_numpy_are_checked_at_the_door():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    with pytest.raises(ValueError, match=r"factor must be a real number in \(0, 1\), got 1000"):
        AutoDrop(optimizer, factor=10**400)
    with pytest.raises(ValueError, match=r"window must be an int in \[1, 10000\], got 9223372036854775808"):
        AutoDrop(optimizer, detector="paper", window=2**63)
    scheduler = AutoDrop(optimizer, detector="paper", window=np.int64(3), delay=np.int64(2), factor=np.float64(0.5))
    scripted = reload(scheduler, optimizer).state_dict()  # saved and loaded with weights_only=True
    assert scripted["detector"]["window"] == 3 and type(scripted["delay"]) is int


def test_a_checkpoint_with_a_huge_window_is_refused_before_anything_changes():
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = AutoDrop(optimizer, **EAGER)
    scripted_run(scheduler.step, PlanarWalk(param), [30.0, 30.0])
    before = scheduler.state_dict()
    bad = scheduler.state_dict()
    bad["detector"]["window"] = 2**63
    with pytest.raises(ValueError, match=r"\['detector'\]\['window'\] must be an int in \[1, 10000\]"):
        scheduler.load_state_dict(bad)
    assert states_equal(scheduler.state_dict(), before)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.zeros(3), TypeError, "a single tensor"),
        ([1.0, 2.0], TypeError, r"params\[0\] must be a tensor, got float"),
        ("weights", TypeError, r"params\[0\] must be a tensor, got str"),
        ([{"params": [torch.zeros(2)]}], TypeError, r"params\[0\] must be a tensor, got dict"),
    ],
)
def test_angular_velocity_names_what_it_cannot_measure(bad, error, message):
    with pytest.raises(error, match=message):
        AngularVelocity(bad)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fn])
def test_parameters_autodrop_cannot_measure_fail_at_construction(dtype):
    param = torch.nn.Parameter(torch.zeros(2).to(dtype), requires_grad=False)
    with pytest.raises(TypeError, match=f"params\\[0\\] is {dtype}; AutoDrop measures float16, bfloat16"):
        AutoDrop(torch.optim.SGD([param], lr=0.1))
