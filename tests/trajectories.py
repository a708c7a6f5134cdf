"""Parameter trajectories with known step angles, shared by the tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch


def flat64(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """The tensors concatenated into one float64 numpy vector (the reference's view)."""
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in tensors])


def angle64(u: np.ndarray, v: np.ndarray, eps: float = 1e-8) -> float:
    """The paper's angle in degrees, in float64 numpy."""
    cosine = float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v) + eps)
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


class PlanarWalk:
    """Moves a 2-vector parameter so that successive steps turn by scripted angles.

    Step i has length ``length`` and heading phi_i = phi_{i-1} + omega_i, so the
    angle between steps i-1 and i is exactly omega_i for omega_i in [0, 180].
    """

    def __init__(self, param: torch.Tensor, length: float = 1.0) -> None:
        self.param = param
        self.length = length
        self.heading = 0.0

    def move(self, turn_degrees: float | None = None) -> None:
        if turn_degrees is not None:
            self.heading += math.radians(turn_degrees)
        with torch.no_grad():
            self.param.add_(
                torch.tensor([math.cos(self.heading), math.sin(self.heading)], dtype=self.param.dtype),
                alpha=self.length,
            )


def scripted_run(scheduler_step: Callable[[], None], walk: PlanarWalk, omegas: Sequence[float]) -> None:
    """One plain step (omega undefined), then one step per scripted omega.

    Interval 1 has no omega; interval i >= 2 has omega = omegas[i - 2].
    """
    for turn in [None, *omegas]:
        walk.move(turn)
        scheduler_step()
