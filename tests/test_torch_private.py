"""Each private name of torch that autodrop.torch_private relies on, checked against the installed torch."""

import torch
from torch.optim.lr_scheduler import ChainedScheduler, ConstantLR, LRScheduler, SequentialLR, StepLR

from autodrop.torch_private import (
    SchedulerProtocol,
    hookable_optimizer,
    inner_schedulers,
    opt_out_of_amp_scaling,
    set_last_lr,
)


def sgd(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=lr)


class Spy(SchedulerProtocol, LRScheduler):
    """A scheduler that records what torch's compositions call on it."""

    def __init__(self, optimizer):
        self.calls = []
        super().__init__(optimizer)

    def count_initial_step(self):
        self.calls.append("initial")
        self._step_count = 1
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch=None):
        self.calls.append(("step", epoch))
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def test_sequential_lr_calls_initial_step_first_and_update_lr_0_at_a_milestone():
    optimizer = sgd()
    warmup = ConstantLR(optimizer, factor=0.5, total_iters=2)
    spy = Spy(optimizer)
    spy.calls.clear()
    SequentialLR(optimizer, [spy, warmup], milestones=[2]).step()
    assert spy.calls == ["initial", ("step", None)]  # _initial_step(), then step() through the protocol
    optimizer = sgd()
    spy = Spy(optimizer)
    sequence = SequentialLR(optimizer, [ConstantLR(optimizer, factor=0.5, total_iters=2), spy], milestones=[2])
    spy.calls.clear()
    sequence.step()
    sequence.step()  # the milestone: _update_lr(0)
    assert spy.calls == [("step", 0)]


def test_get_last_lr_returns_last_lr_and_step_count_counts_the_initial_step():
    scheduler = StepLR(sgd(), step_size=1)
    assert scheduler._step_count == 1  # the initial step is counted
    set_last_lr(scheduler, [0.5])
    assert scheduler.get_last_lr() == [0.5]


def test_compositions_hold_their_schedulers_as_schedulers():
    optimizer = sgd()
    inner = [ConstantLR(optimizer, factor=0.5, total_iters=2), StepLR(optimizer, step_size=1)]
    assert list(inner_schedulers(SequentialLR(optimizer, inner, milestones=[2]))) == inner
    assert list(inner_schedulers(ChainedScheduler(inner))) == inner
    assert list(inner_schedulers(inner[0])) == []


def test_the_hookable_optimizer_runs_step_pre_hooks_also_behind_a_wrapper():
    optimizer = sgd()

    class Wrapper(torch.optim.Optimizer):  # as accelerate's AcceleratedOptimizer: no Optimizer.__init__
        def __init__(self, inner):
            self.optimizer = inner

    assert hookable_optimizer(optimizer) is optimizer
    assert hookable_optimizer(Wrapper(optimizer)) is optimizer
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append(1))
    optimizer.step()
    assert calls == [1]


def test_grad_scaler_unscales_for_an_optimizer_that_opts_out():
    param = torch.nn.Parameter(torch.ones(2))

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            self.seen = param.grad.clone()

    optimizer = Recording([param], lr=1.0)
    seen = []
    for opt_out in (False, True):
        optimizer._step_supports_amp_scaling = True  # as a class that unscales by itself declares
        if opt_out:
            opt_out_of_amp_scaling(optimizer)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        param.grad = None
        scaler.scale(param.sum()).backward()
        scaler.step(optimizer)
        seen.append(optimizer.seen)
    assert torch.equal(seen[0], torch.full((2,), 4.0)) and torch.equal(seen[1], torch.ones(2))
