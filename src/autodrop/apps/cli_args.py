"""Argument types for the ``autodrop`` command: bad input is a one-line argparse error (exit status 2)
that names the option and what it allows, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch

from ..checks import check_device, check_real

__all__ = [
    "MAX_LR",
    "MAX_SEED",
    "device",
    "fail",
    "int_at_least",
    "learning_rate",
    "output_folder",
    "real",
    "resolve_device",
    "torch_seed",
]

MAX_SEED = 2**64 - 1
"""The largest seed ``torch.manual_seed`` takes."""
MAX_LR = 1e6
"""The largest initial LR accepted: far above any that trains (every task diverges long before), and small
enough that every optimizer's step stays a float32 number (AdamW's first step is 10 x LR; 1e308 overflows)."""
DEVICES = "auto, cpu, cuda or cuda:N"


def _int_in(option: str, minimum: int, maximum: int | None) -> Callable[[str], int]:
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an int {allowed}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{option} must be an int {allowed}, got {value}")
        return value

    return parse


def int_at_least(option: str, minimum: int) -> Callable[[str], int]:
    return _int_in(option, minimum, None)


torch_seed = _int_in("--seed", 0, MAX_SEED)
"""``--seed``: what ``torch.manual_seed`` takes."""


def real(option: str, interval: str) -> Callable[[str], float]:
    """A finite number in ``interval`` (written as :func:`autodrop.checks.check_real` takes it)."""

    def parse(text: str) -> float:
        try:
            return check_real(option, float(text), interval)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a real number in {interval}, got {text}") from None

    return parse


def learning_rate(option: str) -> Callable[[str], float]:
    """An initial LR in ``(0, MAX_LR]``."""
    return real(option, f"(0, {MAX_LR:g}]")


def output_folder(option: str) -> Callable[[str], Path]:
    """A folder that exists or can be made, and can be written to (made here, before any work)."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{option} {text!r} is a file; give a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise argparse.ArgumentTypeError(f"{option} {text!r} cannot be made: {error.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{option} {text!r} is not writable")
        return path

    return parse


def resolve_device(option: str, text: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; else ``cpu``, ``cuda`` or ``cuda:N`` that exists here,
    checked by the library's :func:`autodrop.checks.check_device`. A ValueError names ``option``."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = check_device(option, text)
    except ValueError:
        if text.partition(":")[0] in ("cpu", "cuda"):
            raise  # one of ours, unavailable or misspelt: the library's reason
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} must be {DEVICES}, got {text!r}")
    return resolved


def device(text: str) -> str:
    """``--device`` as typed (``auto`` is resolved where the training runs), checked here."""
    try:
        resolve_device("--device", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def fail(command: str, message: str) -> NoReturn:
    """Exit as argparse does for bad input: one line on stderr, status 2."""
    print(f"autodrop {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
