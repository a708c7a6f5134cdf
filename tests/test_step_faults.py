"""Fault injection: exceptions and interrupts anywhere in AutoDrop.step() never corrupt the
scheduler or the model.

A short real training run (a BatchNorm MLP, the statistics refreshed after every averaging)
with drops, windows and convergence is interrupted at every interval, by a raising internal
at every point of the step, by a raising ``after_average``, and by a timer signal at random
moments; each time the scheduler's state must be exactly the one before or the one after the
step, load into a fresh scheduler, and the run resumed from it must end exactly where the
uninterrupted run ends.
"""

import random
import signal

import pytest
import torch
from states import states_equal

from autodrop import AutoDrop
from autodrop.averaging import WeightedAverage
from autodrop.detectors import PaperRule
from autodrop.trajectory import ParameterTrajectory

EPOCHS = 10
# Saturated at every chance: trigger 3, drop 4, trigger 5, drop 6, trigger 7, converged 8.
SCHEDULE = dict(detector="paper", threshold=180.0, max_threshold=180.0, delay=2, factor=0.5, max_drops=2)


class Interrupted(Exception):
    pass


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=generator)
    return x, x[:, :1] * 2 + 0.1 * torch.randn(128, 1, generator=generator)


def build(state=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, _ = data()

    def refresh():
        torch.optim.swa_utils.update_bn([x[i : i + 32] for i in range(0, 128, 32)], model)

    scheduler = AutoDrop(optimizer, after_average=refresh, **SCHEDULE)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return model, optimizer, scheduler


def train_epoch(model, optimizer):
    x, y = data()
    for i in range(0, 128, 32):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x[i : i + 32]), y[i : i + 32]).backward()
        optimizer.step()


def checkpoint(model, optimizer, scheduler):
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run: the scheduler's state and the parameters around every step."""
    model, optimizer, scheduler = build()
    around = []
    for _ in range(EPOCHS):
        train_epoch(model, optimizer)
        before = (scheduler.state_dict(), params(model))
        scheduler.step()
        around.append((before, (scheduler.state_dict(), params(model))))
    events = [(r["interval"], r["event"]) for r in scheduler.history if r["event"]]
    assert events == [(3, "trigger"), (4, "drop"), (5, "trigger"), (6, "drop"), (7, "trigger"), (8, "converged")]
    return around, scheduler.state_dict(), params(model)


def trained_into(epoch):
    """A fresh run after ``epoch`` stepped epochs and the training of one more (its step still to take)."""
    model, optimizer, scheduler = build()
    for _ in range(epoch):
        train_epoch(model, optimizer)
        scheduler.step()
    train_epoch(model, optimizer)
    return model, optimizer, scheduler


def interrupted_run(reference, epoch, fault):
    """Run to ``epoch``, step it under ``fault`` (a context manager that may raise Interrupted),
    check the state, resume from a checkpoint in fresh objects and finish the run."""
    around, final_state, final_params = reference
    model, optimizer, scheduler = trained_into(epoch)
    try:
        with fault():
            scheduler.step()
    except Interrupted:
        pass
    state = scheduler.state_dict()
    (before, params_before), (after, params_after) = around[epoch]
    stepped = states_equal(state, after)
    assert stepped or states_equal(state, before), "the state is neither the one before the step nor after it"
    assert all(torch.equal(a, b) for a, b in zip(params(model), params_after if stepped else params_before))
    model, optimizer, scheduler = build(checkpoint(model, optimizer, scheduler))  # the state loads
    if not stepped:
        scheduler.step()  # the step that did not happen
    for _ in range(epoch + 1, EPOCHS):
        train_epoch(model, optimizer)
        scheduler.step()
    assert states_equal(scheduler.state_dict(), final_state)
    assert all(torch.equal(a, b) for a, b in zip(params(model), final_params))
    return stepped


class raising:
    """Patches ``owner.name`` to raise Interrupted at its first call in the block; ``raised`` says
    whether it did."""

    def __init__(self, monkeypatch, owner, name):
        self.monkeypatch, self.owner, self.name, self.raised = monkeypatch, owner, name, False

    def __call__(self):
        return self

    def __enter__(self):
        original = getattr(self.owner, self.name)

        def patched(*args, **kwargs):
            if not self.raised:
                self.raised = True
                raise Interrupted(self.name)
            return original(*args, **kwargs)

        self.monkeypatch.setattr(self.owner, self.name, patched)

    def __exit__(self, *exc):
        self.monkeypatch.undo()


POINTS = [
    (AutoDrop, "_changed_params"),
    (AutoDrop, "_group_settings"),
    (ParameterTrajectory, "measure"),
    (PaperRule, "statistics"),
    (PaperRule, "observe"),
    (WeightedAverage, "empty_sums"),
    (AutoDrop, "_can_drop"),
    (PaperRule, "on_drop"),
    (ParameterTrajectory, "commit"),
]


@pytest.mark.parametrize("owner, name", POINTS, ids=[f"{o.__name__}.{n}" for o, n in POINTS])
def test_an_exception_at_any_point_before_the_commit_leaves_the_state_before_the_step(
    reference, monkeypatch, owner, name
):
    for epoch in range(EPOCHS):
        fault = raising(monkeypatch, owner, name)
        stepped = interrupted_run(reference, epoch, fault)
        assert stepped != fault.raised  # raised: nothing changed; not called in this step: it completed


@pytest.mark.parametrize("call", [1, 2, 3, 4])
def test_a_write_back_cut_short_is_completed_from_the_intact_sum_not_averaged_again(reference, monkeypatch, call):
    # The write-back copies parameter by parameter: stop it after `call - 1` parameters.
    for epoch in (3, 5, 7):  # the drops and the convergence
        around, final_state, final_params = reference
        model, optimizer, scheduler = trained_into(epoch)
        original, copies = torch.Tensor.copy_, []

        def copy_(tensor, source, *args, **kwargs):
            if any(tensor is p for p in model.parameters()):
                copies.append(1)
                if len(copies) == call:
                    raise Interrupted("write-back")
            return original(tensor, source, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "copy_", copy_)
        with pytest.raises(Interrupted):
            scheduler.step()
        monkeypatch.undo()
        assert scheduler.write_back_due and scheduler.last_epoch == epoch + 1
        saved = checkpoint(model, optimizer, scheduler)
        for resume in (False, True):
            if resume:  # from a checkpoint taken in the exception handler: the optimizer's next step completes it
                model, optimizer, scheduler = build(saved)
                x, y = data()
                optimizer.zero_grad()
                optimizer.step()  # no gradients: only the pre-hook acts
            else:
                scheduler.finish_write_back()
            assert not scheduler.write_back_due
            expected = around[epoch][1]
            assert all(torch.equal(a, b) for a, b in zip(params(model), expected[1]))
            assert states_equal(scheduler.state_dict(), expected[0])
        for _ in range(epoch + 1, EPOCHS):
            train_epoch(model, optimizer)
            scheduler.step()
        assert states_equal(scheduler.state_dict(), final_state)
        assert all(torch.equal(a, b) for a, b in zip(params(model), final_params))


def test_an_exception_in_after_average_leaves_a_complete_drop(reference, monkeypatch):
    for epoch in (3, 5, 7):
        model, optimizer, scheduler = trained_into(epoch)
        scheduler.after_average = lambda: (_ for _ in ()).throw(Interrupted("refresh"))
        with pytest.raises(Interrupted):
            scheduler.step()
        after, params_after = reference[0][epoch][1]
        assert states_equal(scheduler.state_dict(), after) and not scheduler.write_back_due
        assert all(torch.equal(a, b) for a, b in zip(params(model), params_after))


@pytest.mark.parametrize("seed", range(4))
def test_timer_interrupts_at_random_moments_never_split_a_step(reference, seed):
    rng = random.Random(seed)

    def timer():
        class Timer:
            def __enter__(self):
                self.previous = signal.signal(signal.SIGALRM, self.fire)
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-5, 4e-3))

            def fire(self, signum, frame):
                raise Interrupted("timer")

            def __exit__(self, *exc):
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, self.previous)

        return Timer()

    outcomes = [interrupted_run(reference, epoch, timer) for epoch in range(EPOCHS) for _ in range(3)]
    assert len(outcomes) == 3 * EPOCHS
