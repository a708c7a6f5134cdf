"""Fault injection: exceptions and interrupts anywhere in AutoDrop.step() never leave wrong
parameters or an unloadable state.

A short real training run (a BatchNorm MLP, the statistics refreshed after every averaging)
with drops, windows and convergence is interrupted at every interval: by a raising internal
at every point of the decision, by an exception at the k-th torch call of the step, by a
raising ``after_average``, and by a timer signal at random moments. Each time the scheduler
either is in exactly the state before or after the step (after it, possibly with its refresh
still due) and the run resumed from its checkpoint ends exactly where the uninterrupted run
ends, or, where a write was cut halfway, refuses to go on until a checkpoint is loaded.
"""

import random
import signal

import pytest
import torch
from states import states_equal
from torch.overrides import TorchFunctionMode

from autodrop import AutoDrop, groups
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


def refuses_to_go_on(model, optimizer, scheduler):
    """The scheduler refuses every further use, naming the way out, and the model is not stepped."""
    for use in (scheduler.step, scheduler.state_dict, optimizer.step):
        with pytest.raises(RuntimeError, match="Resume from the last checkpoint"):
            use()
    return True


def interrupted_run(reference, epoch, fault, finish=True):
    """Run to ``epoch``, step it under ``fault`` (a context manager that may raise Interrupted),
    check the state, and (``finish``) resume from a checkpoint in fresh objects and finish the run.
    Returns "before", "after" (the step happened; its refresh may still be due) or "refused"."""
    around, final_state, final_params = reference
    model, optimizer, scheduler = trained_into(epoch)
    try:
        with fault():
            scheduler.step()
    except Interrupted:
        pass
    (before, params_before), (after, params_after) = around[epoch]
    try:
        state = scheduler.state_dict()
    except RuntimeError:
        refuses_to_go_on(model, optimizer, scheduler)
        return "refused"
    stepped = states_equal(state, after) or states_equal(state, {**after, "refresh_due": True})
    assert stepped or states_equal(state, before), "the state is neither the one before the step nor after it"
    assert all(torch.equal(a, b) for a, b in zip(params(model), params_after if stepped else params_before))
    model, optimizer, scheduler = build(checkpoint(model, optimizer, scheduler))  # the state loads
    if not finish:
        return "after" if stepped else "before"
    if not stepped:
        scheduler.step()  # the step that did not happen
    for _ in range(epoch + 1, EPOCHS):
        train_epoch(model, optimizer)
        scheduler.step()
    assert states_equal(scheduler.state_dict(), final_state)
    assert all(torch.equal(a, b) for a, b in zip(params(model), final_params))
    return "after" if stepped else "before"


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
    (groups, "changed_params"),
    (groups, "group_settings"),
    (ParameterTrajectory, "measure"),
    (PaperRule, "statistics"),
    (PaperRule, "observe"),
    (ParameterTrajectory, "zeros"),
    (groups, "dropped"),
    (PaperRule, "on_drop"),
]


@pytest.mark.parametrize("owner, name", POINTS, ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n in POINTS])
def test_an_exception_at_any_point_before_the_commit_leaves_the_state_before_the_step(
    reference, monkeypatch, owner, name
):
    for epoch in range(EPOCHS):
        fault = raising(monkeypatch, owner, name)
        outcome = interrupted_run(reference, epoch, fault)
        assert outcome == ("before" if fault.raised else "after")  # not called in this step: it completed


class raising_at_call(TorchFunctionMode):
    """Raises Interrupted at the ``k``-th torch function or tensor method called on a tensor in the
    block (as an out-of-memory error would), or counts these calls when ``k`` is None."""

    def __init__(self, k=None):
        super().__init__()
        self.k, self.calls = k, 0

    def __call__(self):
        return self

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not any(isinstance(arg, torch.Tensor) for arg in args):  # e.g. grad-mode switches: no failure there
            return func(*args, **(kwargs or {}))
        self.calls += 1
        if self.calls == self.k:
            raise Interrupted(f"torch call {self.k}: {func}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("epoch", [3, 5, 7])  # the drops and the convergence: averaging, writing, refreshing
def test_an_exception_at_any_torch_call_of_a_drop_step_never_leaves_wrong_parameters(reference, epoch):
    counting = raising_at_call()
    interrupted_run(reference, epoch, counting)
    # every call of the first drop, every fourth of the second and of the convergence (the same code, and
    # a refresh whose calls are all alike); the state is exactly before or after, or refused (the other
    # tests finish runs from such states)
    calls = range(1, counting.calls + 1, 1 if epoch == 3 else 4)
    outcomes = {interrupted_run(reference, epoch, raising_at_call(k), finish=False) for k in calls}
    assert outcomes == {"before", "after", "refused"}  # every kind of moment was hit


def test_a_write_cut_short_refuses_to_go_on_until_a_checkpoint_is_loaded(reference, monkeypatch):
    around, final_state, final_params = reference
    for epoch in (3, 5, 7):
        model, optimizer, scheduler = trained_into(epoch)
        original, copies = torch.Tensor.copy_, []
        storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def copy_(tensor, source, *args, **kwargs):
            if tensor.untyped_storage().data_ptr() in storages:  # a write into a parameter
                copies.append(1)
                if len(copies) == 2:  # the write-back stops after one parameter
                    raise Interrupted("write-back")
            return original(tensor, source, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "copy_", copy_)
        with pytest.raises(Interrupted):
            scheduler.step()
        monkeypatch.undo()
        (before, params_before), (after, params_after) = around[epoch]
        assert refuses_to_go_on(model, optimizer, scheduler)
        with torch.no_grad():  # the last checkpoint: the model and the scheduler before the step
            for param, saved in zip(model.parameters(), params_before):
                param.copy_(saved)
        scheduler.load_state_dict(before)
        scheduler.step()
        assert states_equal(scheduler.state_dict(), after)
        assert all(torch.equal(a, b) for a, b in zip(params(model), params_after))
        for _ in range(epoch + 1, EPOCHS):
            train_epoch(model, optimizer)
            scheduler.step()
        assert states_equal(scheduler.state_dict(), final_state)
        assert all(torch.equal(a, b) for a, b in zip(params(model), final_params))


@pytest.mark.parametrize("resume", [False, True])
def test_an_exception_in_after_average_leaves_a_complete_drop_and_the_refresh_due(reference, resume):
    for epoch in (3, 5, 7):
        model, optimizer, scheduler = trained_into(epoch)
        refresh = scheduler.after_average
        scheduler.after_average = lambda: (_ for _ in ()).throw(Interrupted("refresh"))
        with pytest.raises(Interrupted):
            scheduler.step()
        after, params_after = reference[0][epoch][1]
        assert states_equal(scheduler.state_dict(), {**after, "refresh_due": True})
        assert all(torch.equal(a, b) for a, b in zip(params(model), params_after))
        if resume:  # from the checkpoint an exception handler takes: the fresh scheduler has its refresh
            model, optimizer, scheduler = build(checkpoint(model, optimizer, scheduler))
            calls = []
            refresh = scheduler.after_average
            scheduler.after_average = lambda: (calls.append(1), refresh())
        else:
            calls = []
            scheduler.after_average = lambda: (calls.append(1), refresh())
        optimizer.zero_grad()
        optimizer.step()  # no gradients: only the pre-hook acts, before any parameter could move
        assert calls == [1] and not scheduler.refresh_due
        with pytest.raises(RuntimeError, match="inside after_average"):
            scheduler.after_average = scheduler.step
            scheduler.refresh_due = True
            scheduler.step()


@pytest.mark.parametrize("seed", range(2))
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
    assert "refused" not in outcomes  # a signal waits for the end of a commit
