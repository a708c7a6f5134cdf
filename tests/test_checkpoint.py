"""ShardedState in one process: a DCP round trip and its errors (2 ranks: tests/dist/)."""

import pytest
import torch
import torch.distributed.checkpoint as dcp
from states import states_equal
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from autodrop import AngularVelocity, AutoDrop, ShardedState


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, AutoDrop(optimizer, detector="paper", threshold=5.0, max_threshold=20.0, delay=3)


def train(model, optimizer, scheduler, epochs):
    for epoch in epochs:
        generator = torch.Generator().manual_seed(0)  # the same four batches every epoch
        for _ in range(4):
            x = torch.randn(16, 6, generator=generator)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True).sin()).backward()
            optimizer.step()
        scheduler.step()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_round_trip_inside_a_delay_window_continues_identically(tmp_path):
    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, range(20))
    reference = scheduler.history
    stop = next(r["interval"] for r in reference if r["event"] == "trigger") + 1
    assert any(r["event"] == "drop" and r["interval"] > stop for r in reference)

    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, range(stop))
    assert scheduler.sums is not None
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state, "autodrop": ShardedState(scheduler)},
        checkpoint_id=str(tmp_path),
    )
    saved = [p.detach().clone() for p in model.parameters()]

    model, optimizer, scheduler = build()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model_state, optimizer_state = get_state_dict(model, optimizer)  # with the momentum buffers DCP fills in
    state = {"model": model_state, "optimizer": optimizer_state, "autodrop": ShardedState(scheduler)}
    dcp.load(state, checkpoint_id=str(tmp_path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved))
    assert scheduler.sums is not None and scheduler.pending
    train(model, optimizer, scheduler, range(stop, 20))
    assert scheduler.history == reference


def test_angular_velocity_state_round_trips():
    param = torch.nn.Parameter(torch.zeros(5))
    velocity = AngularVelocity([param])
    for step in range(3):
        with torch.no_grad():
            param.add_(torch.randn(5, generator=torch.Generator().manual_seed(step)))
        velocity.update()
    state = ShardedState(velocity).state_dict()
    restored = AngularVelocity([param])
    ShardedState(restored).load_state_dict(state)
    assert restored.omega == velocity.omega
    assert torch.equal(restored.trajectory.snapshots()[0], velocity.trajectory.snapshots()[0])


def test_rejects_other_objects_and_mismatched_buffers():
    with pytest.raises(TypeError, match="owner must be an AutoDrop or an AngularVelocity"):
        ShardedState(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    _, _, scheduler = build()
    state = ShardedState(scheduler).state_dict()
    state["buffers"]["step"]["0"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="step buffer of parameter 0 is \\(2, 2\\)"):
        ShardedState(scheduler).load_state_dict(state)
    del state["buffers"]["snapshot"]["1"]
    with pytest.raises(ValueError, match="no snapshot buffer for parameter 1"):
        ShardedState(scheduler).load_state_dict(state)


def test_malformed_sharded_states_name_what_is_wrong_and_change_nothing():
    _, _, scheduler = build()
    good = ShardedState(scheduler).state_dict()
    before = scheduler.state_dict()
    cases = [
        ({"buffers": good["buffers"]}, KeyError, r"sharded state lacks \['meta'\]"),
        ({**good, "buffers": {"snapshot": {}}}, KeyError, r"sharded state\['buffers'\] lacks \['step', 'sum'\]"),
        ({**good, "meta": "not bytes"}, TypeError, r"\['meta'\] must be bytes"),
        ({**good, "meta": b"\x00 torn"}, ValueError, r"\['meta'\] cannot be read"),
        ({**good, "buffers": {**good["buffers"], "sum": [1, 2]}}, TypeError, r"\['sum'\] must be a dict of tensors"),
        (
            {**good, "buffers": {**good["buffers"], "step": {**good["buffers"]["step"], "0": 3.0}}},
            TypeError,
            "step buffer of parameter 0 must be a tensor",
        ),
    ]
    for state, error, message in cases:
        with pytest.raises(error, match=message):
            ShardedState(scheduler).load_state_dict(state)
    assert states_equal(scheduler.state_dict(), before)
