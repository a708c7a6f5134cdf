"""Checks for arguments and loaded state: each error names the value, what it is and what is allowed.

Used by every constructor (bad arguments fail at construction) and by every
``load_state_dict`` (a checkpoint is checked completely before anything is
applied). ``name`` is what the message calls the value: an argument name, or a
path into a state dict such as ``state['detector']['threshold']``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_device",
    "check_int",
    "check_keys",
    "check_list",
    "check_optional_real",
    "check_real",
    "check_tensors_like",
]


def _bound(text: str) -> float:
    text = text.strip()
    if "**" in text:
        base, exponent = text.split("**")
        return float(int(base) ** int(exponent))
    return float(text)


def check_real(name: str, value: Any, interval: str, what: str = "a real number") -> float:
    """A finite real number (not a bool) in ``interval``, written as in mathematics and stated once:
    ``"(0, 1)"``, ``"[0, 180]"``, ``"(0, inf)"``, ``"[1, 2**53]"``; returns it as a float."""
    low, high = map(_bound, interval[1:-1].split(","))
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {what} in {interval}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    above = low < number or (interval[0] == "[" and number == low)
    below = number < high or (interval[-1] == "]" and number == high)
    if not (math.isfinite(number) and above and below):
        raise ValueError(f"{name} must be {what} in {interval}, got {value!r}")
    return number


def check_optional_real(name: str, value: Any, interval: str) -> float | None:
    """``None`` or what :func:`check_real` accepts."""
    return None if value is None else check_real(name, value, interval, "None or a real number")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool) in ``[minimum, maximum]``; returns it."""
    allowed = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_device(name: str, device: Any) -> torch.device | None:
    """``None``, or a ``torch.device`` (or a string torch parses as one) that can hold tensors here."""
    if device is None:
        return None
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"{name} {device!r} is not a valid device: {error}") from None
    if not isinstance(device, torch.device):
        raise TypeError(f"{name} must be None, a str or a torch.device, got {device!r}")
    if device.type == "meta":
        raise ValueError(f"{name} {str(device)!r} holds no data: use 'cpu' or an accelerator")
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
        raise ValueError(f"{name} {str(device)!r} is not available on this machine")
    if backend is not None and device.index is not None and hasattr(backend, "device_count"):
        if device.index >= backend.device_count():
            raise ValueError(
                f"{name} {str(device)!r} does not exist: this machine has {backend.device_count()} "
                f"{device.type} device(s)"
            )
    return device


def check_keys(name: str, state: Any, keys: Iterable[str], optional: Iterable[str] = ()) -> None:
    """``state`` is a dict with exactly ``keys``, and any of ``optional``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(state).__name__}")
    expected, present = set(keys), set(state)
    if expected - present:
        raise KeyError(f"{name} lacks {sorted(expected - present)}")
    unexpected = present - expected - set(optional)
    if unexpected:
        raise KeyError(f"{name} has unexpected keys {sorted(map(str, unexpected))}")


def check_list(name: str, value: Any, length: int | None = None) -> list:
    """A list or tuple, of ``length`` items when given."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} has {len(value)} items, expected {length}")
    return list(value)


def check_tensors_like(name: str, value: Any, like: list[Tensor]) -> None:
    """A list of finite tensors with the shapes and dtypes of ``like`` (devices may differ)."""
    tensors = check_list(name, value, len(like))
    for index, (tensor, reference) in enumerate(zip(tensors, like)):
        where = f"{name}[{index}]"
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{where} must be a tensor, got {type(tensor).__name__}")
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise ValueError(
                f"{where} is {tuple(tensor.shape)} {tensor.dtype}, the current parameters "
                f"need {tuple(reference.shape)} {reference.dtype}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where} contains NaN or Inf")
