"""Nested state dicts for the checkpoint tests: exact comparison (tensors bit for bit) and mutations."""

from __future__ import annotations

import copy
from typing import Any

import torch


def states_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` hold the same keys, items and values; tensors must match in bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(states_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(states_equal(x, y) for x, y in zip(a, b))
        )
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return a == b  # numbers: an int that loads as the equal float is the same value


def paths(state, prefix=()):
    """Every position in the nested state: dict keys and list indices."""
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


MUTATIONS = [
    "drop",
    "none",
    "str",
    "nan",
    "inf",
    "negative",
    "huge",
    "scale",
    "flip",
    "tensor_shape",
    "tensor_nan",
    "tensor_dtype",
    "tensor_value",
    "list_extra",
]


def mutate(state, path, kind):
    """Mutate ``state`` in place at ``path`` (keys and indices) by one of MUTATIONS."""
    container = state
    for key in path[:-1]:
        if not isinstance(container, (dict, list)):
            raise TypeError("an earlier mutation replaced this position")
        container = container[key]
    if not isinstance(container, (dict, list)):
        raise TypeError("an earlier mutation replaced this position")
    key, value = path[-1], container[path[-1]]
    if kind == "drop":
        del container[key]
    elif kind == "list_extra" and isinstance(value, list):
        value.append(copy.deepcopy(value[-1]) if value else 1.0)
    elif kind.startswith("tensor") and isinstance(value, torch.Tensor):
        if kind == "tensor_shape":
            container[key] = torch.zeros(value.numel() + 1, dtype=value.dtype)
        elif kind == "tensor_nan":
            value.view(-1)[0] = float("nan") if value.is_floating_point() else 7
        elif kind == "tensor_dtype":
            container[key] = value.half()
        else:
            value.view(-1)[-1] += 0.5 if value.is_floating_point() else 1
    elif kind == "flip" and isinstance(value, bool):
        container[key] = not value
    elif kind == "scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
        container[key] = value * 1.5 if isinstance(value, float) else value + 1
    else:
        container[key] = {
            "none": None,
            "str": "x",
            "nan": float("nan"),
            "inf": float("inf"),
            "negative": -1,
            "huge": 10**9,
        }.get(kind, torch.zeros(3))


def mutated(state, mutations):
    """A deep copy of ``state`` with each ``(path, kind)`` applied in turn."""
    state = copy.deepcopy(state)
    for path, kind in mutations:
        try:
            mutate(state, path, kind)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this position
    return state


def load_exactly_or_fail_cleanly(target: Any, state: Any) -> bool:
    """Load ``state`` into ``target`` (anything with ``state_dict``/``load_state_dict``).

    Either the load raises ValueError/TypeError/KeyError with a message and
    ``target`` is exactly as before, or ``target`` then holds exactly ``state``.
    Returns whether it loaded.
    """
    before = copy.deepcopy(target.state_dict())
    try:
        target.load_state_dict(state)
    except (ValueError, TypeError, KeyError) as error:
        assert str(error)
        assert states_equal(target.state_dict(), before), f"a failed load changed {type(target).__name__} ({error})"
        return False
    assert states_equal(target.state_dict(), state), "the load did not apply the state exactly"
    return True
