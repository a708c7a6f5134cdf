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

from ..checks import check_real

__all__ = ["device", "fail", "int_at_least", "output_folder", "real"]


def int_at_least(option: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{option} must be an int >= {minimum}, got {value}")
        return value

    return parse


def real(option: str, interval: str) -> Callable[[str], float]:
    """A finite number in ``interval`` (written as :func:`autodrop.checks.check_real` takes it)."""

    def parse(text: str) -> float:
        try:
            return check_real(option, float(text), interval)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a real number in {interval}, got {text}") from None

    return parse


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


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the devices the benchmark's training runs on."""
    allowed = "auto, cpu, cuda or cuda:N"
    if text == "auto":
        return text
    try:
        resolved = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"--device must be {allowed}, got {text!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"--device must be {allowed}, got {text!r}")
    return text


def fail(command: str, message: str) -> NoReturn:
    """Exit as argparse does for bad input: one line on stderr, status 2."""
    print(f"autodrop {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
