"""Memory bounds of AutoDrop, counted from the tensors the scheduler actually holds.

The bound, with P parameters and buffer element size e_b = max(4, parameter element
size) per (device, dtype) bucket (the arithmetic is at least fp32):

    held bytes <= 2 P e_b outside the delay window, <= 3 P e_b inside.

For fp32 and fp64 parameters that is 2x / 3x their own bytes; for bf16 / fp16
parameters it is 4x / 6x their own bytes (the buffers are fp32).
"""

import pytest
import torch

from autodrop import AutoDrop


def held_tensor_bytes(root, exclude):
    """Bytes of distinct storages of every tensor reachable from ``root``'s attributes.

    Walks instance ``__dict__``s, lists, tuples, sets and dicts; the optimizer (it owns
    the parameters and its own state) and the storages of ``exclude`` are not counted.
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages, seen, stack = {}, set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, torch.optim.Optimizer):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in excluded:
                storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
            stack.extend(vars(obj).values())
    return sum(storages.values())


def model(dtype=torch.float32):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    )
    return net.to(dtype)


def train(net, optimizer, scheduler, intervals):
    dtype = next(net.parameters()).dtype
    for _ in range(intervals):
        for _ in range(2):
            optimizer.zero_grad()
            net(torch.randn(4, 3, 8, 8, dtype=dtype)).float().square().mean().backward()
            optimizer.step()
        scheduler.step()


def setup(dtype=torch.float32, **kwargs):
    net = model(dtype)
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    return net, params, optimizer, AutoDrop(optimizer, **{"detector": "paper", **kwargs})


def buffer_bytes_bound(params, copies):
    return copies * sum(p.numel() * max(4, p.element_size()) for p in params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outside_the_window_two_copies_of_the_parameters(dtype):
    net, params, optimizer, scheduler = setup(dtype, threshold=1e-300)
    own_bytes = sum(p.numel() * p.element_size() for p in params)
    for _ in range(3):
        train(net, optimizer, scheduler, 1)
        held = held_tensor_bytes(scheduler, exclude=params)
        assert not scheduler.pending
        assert held == scheduler.buffer_bytes() == 2 * own_bytes


def test_inside_the_window_three_copies_then_two_after_the_drop():
    # Every change of omega is below 180 degrees: the trigger fires at the first delta.
    net, params, optimizer, scheduler = setup(threshold=180.0, max_threshold=180.0, delay=3)
    own_bytes = sum(p.numel() * p.element_size() for p in params)
    train(net, optimizer, scheduler, 3)
    assert scheduler.pending
    assert held_tensor_bytes(scheduler, exclude=params) == scheduler.buffer_bytes() == 3 * own_bytes
    train(net, optimizer, scheduler, 2)
    assert scheduler.num_drops == 1 and not scheduler.pending
    assert held_tensor_bytes(scheduler, exclude=params) == scheduler.buffer_bytes() == 2 * own_bytes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_parameters_are_held_in_fp32(dtype):
    net, params, optimizer, scheduler = setup(dtype, threshold=180.0, max_threshold=180.0, delay=10)
    own_bytes = sum(p.numel() * p.element_size() for p in params)
    train(net, optimizer, scheduler, 2)
    assert not scheduler.pending
    held = held_tensor_bytes(scheduler, exclude=params)
    assert held == scheduler.buffer_bytes() == buffer_bytes_bound(params, 2) == 4 * own_bytes
    train(net, optimizer, scheduler, 1)
    assert scheduler.pending
    held = held_tensor_bytes(scheduler, exclude=params)
    assert held == scheduler.buffer_bytes() == buffer_bytes_bound(params, 3) == 6 * own_bytes


class Cast(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


def test_mixed_dtypes_meet_the_bound_per_bucket():
    net = model()
    net = torch.nn.Sequential(*net[:4], Cast(torch.bfloat16), net[4].to(torch.bfloat16))
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01)
    scheduler = AutoDrop(optimizer, detector="paper", threshold=180.0, max_threshold=180.0, delay=10)
    assert {p.dtype for p in params} == {torch.float32, torch.bfloat16}
    train(net, optimizer, scheduler, 2)
    assert held_tensor_bytes(scheduler, exclude=params) == buffer_bytes_bound(params, 2)
    train(net, optimizer, scheduler, 1)
    assert scheduler.pending
    assert held_tensor_bytes(scheduler, exclude=params) == buffer_bytes_bound(params, 3)


def test_the_walk_sees_the_averaging_sum():
    """The counting helper is independent of buffer_bytes(): it finds a stray tensor too."""
    net, params, optimizer, scheduler = setup(threshold=1e-300)
    train(net, optimizer, scheduler, 1)
    before = held_tensor_bytes(scheduler, exclude=params)
    scheduler.stray = [torch.zeros(1000)]
    assert held_tensor_bytes(scheduler, exclude=params) == before + 4000
