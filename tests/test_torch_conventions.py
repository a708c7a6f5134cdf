"""The conventions torch's own scheduler tests check for every scheduler, walked over AutoDrop with
StepLR as the control (each check passes for the control, so it tests something), and the
compositions people build from them: SequentialLR (warmup first, or AutoDrop first),
ChainedScheduler, deepcopy, pickle. Deliberate differences are tested at the end."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from states import states_equal
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, SequentialLR, StepLR

from autodrop import AutoDrop

LR = 0.1
# AutoDrop saturated at every chance: trigger at its 3rd interval, drop at its 4th, ...
EAGER = dict(detector="paper", threshold=180.0, max_threshold=180.0, delay=2, factor=0.5)
SCHEDULERS = {
    "StepLR": lambda optimizer: StepLR(optimizer, step_size=2, gamma=0.5),
    "AutoDrop": lambda optimizer: AutoDrop(optimizer, **EAGER),
}
COMPOSITIONS = {
    "warmup then AutoDrop": lambda o: SequentialLR(o, [LinearLR(o, 0.1, total_iters=3), AutoDrop(o, **EAGER)], [3]),
    "AutoDrop then cosine": lambda o: SequentialLR(o, [AutoDrop(o, **EAGER), CosineAnnealingLR(o, 4)], [6]),
    "chained warmup and AutoDrop": lambda o: ChainedScheduler([LinearLR(o, 0.5, total_iters=2), AutoDrop(o, **EAGER)]),
    "warmup then StepLR (control)": lambda o: SequentialLR(o, [LinearLR(o, 0.1, total_iters=3), StepLR(o, 2)], [3]),
}
DATA = torch.Generator().manual_seed(0)
X, Y = torch.randn(64, 4, generator=DATA), torch.randn(64, 2, generator=DATA)


def build(make, lr=LR):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return model, optimizer, make(optimizer)


def train_epoch(model, optimizer):
    for start in range(0, 64, 16):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X[start : start + 16]), Y[start : start + 16]).backward()
        optimizer.step()


def run(model, optimizer, scheduler, epochs):
    lrs = []
    for _ in range(epochs):
        train_epoch(model, optimizer)
        scheduler.step()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
    return lrs


def through_torch_save(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture(params=list(SCHEDULERS))
def make(request):
    return SCHEDULERS[request.param]


def test_after_construction_the_counters_and_lrs_are_torchs(make):
    _, optimizer, scheduler = build(make)
    assert scheduler.last_epoch == 0 and scheduler._step_count == 1
    assert scheduler.get_last_lr() == [LR] and scheduler.base_lrs == [LR]
    assert optimizer.param_groups[0]["initial_lr"] == LR


def test_stepping_after_the_optimizer_warns_nothing_and_reports_the_optimizers_lr(make):
    model, optimizer, scheduler = build(make)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            train_epoch(model, optimizer)
            scheduler.step()
            assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups]
    assert scheduler.last_epoch == 6 and scheduler._step_count == 7
    assert optimizer.param_groups[0]["lr"] < LR  # both dropped by now


def test_stepping_before_the_optimizer_warns_naming_the_call_order(make):
    # torch's: a UserWarning from its optimizer-step counter; AutoDrop's: the interval measured no movement
    _, _, scheduler = build(make)
    with pytest.warns(
        Warning, match=r"step\(\)` before `optimizer\.step\(\)|step\(\) called before optimizer\.step\(\)"
    ):
        scheduler.step()


def test_the_state_has_torchs_keys_and_round_trips_through_torch_save_weights_only(make):
    model, optimizer, scheduler = build(make)
    run(model, optimizer, scheduler, 3)
    state = scheduler.state_dict()
    assert {"last_epoch", "_step_count", "_last_lr", "base_lrs"} <= set(state)
    _, fresh_optimizer, fresh = build(make)
    fresh_optimizer.load_state_dict(through_torch_save(optimizer.state_dict()))
    fresh.load_state_dict(through_torch_save(state))
    assert states_equal(fresh.state_dict(), state) and fresh.get_last_lr() == scheduler.get_last_lr()


def test_an_outside_step_count_does_not_make_the_state_unloadable(make):
    # e.g. a wrapper counting gradient-accumulation micro-steps
    model, optimizer, scheduler = build(make)
    run(model, optimizer, scheduler, 2)
    scheduler._step_count += 3
    _, _, fresh = build(make)
    fresh.load_state_dict(through_torch_save(scheduler.state_dict()))
    assert fresh._step_count == scheduler._step_count


def test_deepcopy_after_steps_continues_exactly_like_the_original(make):
    model, optimizer, scheduler = build(make)
    run(model, optimizer, scheduler, 3)
    model_copy, optimizer_copy, scheduler_copy = copy.deepcopy((model, optimizer, scheduler))
    assert scheduler_copy.optimizer is optimizer_copy
    assert run(model_copy, optimizer_copy, scheduler_copy, 5) == run(model, optimizer, scheduler, 5)
    assert states_equal(scheduler_copy.state_dict(), scheduler.state_dict())


def test_pickle_round_trip(make):
    model, optimizer, scheduler = build(make)
    run(model, optimizer, scheduler, 3)
    restored = pickle.loads(pickle.dumps(scheduler))
    assert states_equal(restored.state_dict(), scheduler.state_dict())


def test_a_tensor_lr_keeps_its_type_and_is_never_aliased(make):
    model, optimizer, scheduler = build(make, lr=torch.tensor(LR))
    run(model, optimizer, scheduler, 4)
    last = scheduler.get_last_lr()[0]
    assert isinstance(last, torch.Tensor) and last is not optimizer.param_groups[0]["lr"]
    assert float(last) == float(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_compositions_resume_from_a_checkpoint_of_every_epoch_exactly(name):
    compose = COMPOSITIONS[name]
    model, optimizer, scheduler = build(compose)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at construction either
        reference_lrs = []
        checkpoints = []
        for _ in range(10):
            train_epoch(model, optimizer)
            scheduler.step()
            reference_lrs.append(float(optimizer.param_groups[0]["lr"]))
            checkpoints.append(
                through_torch_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    }
                )
            )
    final = [p.detach().clone() for p in model.parameters()]
    for epoch, saved in enumerate(checkpoints[:-1]):
        resumed_model, resumed_optimizer, resumed = build(compose)
        resumed_model.load_state_dict(saved["model"])
        resumed_optimizer.load_state_dict(saved["optimizer"])
        resumed.load_state_dict(saved["scheduler"])
        lrs = run(resumed_model, resumed_optimizer, resumed, 10 - epoch - 1)
        assert lrs == reference_lrs[epoch + 1 :], (name, epoch)
        assert all(torch.equal(a, b) for a, b in zip(resumed_model.parameters(), final)), (name, epoch)


def test_warmup_then_autodrop_reaches_the_base_lr_and_autodrop_starts_there():
    model, optimizer, scheduler = build(COMPOSITIONS["warmup then AutoDrop"])
    lrs = run(model, optimizer, scheduler, 9)
    assert lrs[:3] == pytest.approx([0.04, 0.07, LR])  # the warmup, then the base LR at the milestone
    autodrop = scheduler._schedulers[1]
    assert autodrop.intervals == 6 and [r["interval"] for r in autodrop.history] == list(range(1, 7))
    assert autodrop.history[0]["omega"] is None  # measured from the milestone, not across the warmup
    assert lrs[3:] == [LR, LR, LR, LR / 2, LR / 2, LR / 4]  # triggers at its 3rd and 5th interval, drops at 4, 6


# AutoDrop's deliberate differences from torch's schedulers, stated in the README


def test_step_takes_no_epoch_but_0_and_no_metric():
    model, optimizer, scheduler = build(SCHEDULERS["AutoDrop"])
    with pytest.raises(ValueError, match="epoch must be None"):
        scheduler.step(5)
    with pytest.raises(TypeError, match="takes no metric"):
        scheduler.step(0.42)
    with pytest.raises(TypeError):
        AutoDrop(optimizer, last_epoch=3)
    train_epoch(model, optimizer)
    scheduler.step(0)  # the SequentialLR hand-over of older torch: starts the schedule here
    assert scheduler.intervals == 0 and optimizer.param_groups[0]["lr"] == LR


def test_get_lr_has_no_closed_form_and_get_last_lr_reports_the_lrs():
    model, optimizer, scheduler = build(SCHEDULERS["AutoDrop"])
    train_epoch(model, optimizer)
    scheduler.step()  # AutoDrop's step never calls get_lr
    with pytest.raises(NotImplementedError):
        scheduler.get_lr()  # torch's base: AutoDrop's LRs follow measurements, not a formula
    assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups]


def test_stepping_after_every_optimizer_step_warns_once_unless_that_is_intended():
    model, optimizer, scheduler = build(SCHEDULERS["AutoDrop"])
    with pytest.warns(RuntimeWarning, match="followed every optimizer step for 10 intervals") as caught:
        for start in range(0, 64 * 4, 16):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(
                model(X[start % 64 : start % 64 + 16]), Y[start % 64 : start % 64 + 16]
            ).backward()
            optimizer.step()
            scheduler.step()
    assert len([w for w in caught if "followed every" in str(w.message)]) == 1
    model, optimizer, built = build(SCHEDULERS["AutoDrop"])
    del built  # one AutoDrop per optimizer
    scheduler = AutoDrop(optimizer, interval="steps", **EAGER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(12):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(X), Y).backward()
            optimizer.step()
            scheduler.step()
