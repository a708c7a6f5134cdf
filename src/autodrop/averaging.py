"""Linearly weighted parameter averaging over AutoDrop's delay window.

While a drop is pending, the k-th measured parameter vector of the window
(k = 1..n_d) enters a running sum with weight k; at the drop

    x := z / (n_d (n_d + 1) / 2),   z = sum_k k * x_k

so later parameters weigh more. One running sum is kept (a third parameter-sized
buffer, only inside the window), never a list of copies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .geometry import ParameterTrajectory

__all__ = ["WeightedAverage"]


class WeightedAverage:
    """Running weighted sum ``z`` of the trajectory's snapshots.

    Args:
        trajectory: provides the snapshots (the parameters at each measurement)
            and the write-back into the parameters.
    """

    def __init__(self, trajectory: ParameterTrajectory) -> None:
        self.trajectory = trajectory
        self.sums: list[Tensor] | None = None
        self.total_weight = 0.0

    @property
    def active(self) -> bool:
        return self.sums is not None

    def start(self) -> None:
        """Open the window with an empty sum."""
        self.sums = [torch.zeros_like(s) for s in self.trajectory.snapshots()]
        self.total_weight = 0.0

    @torch.no_grad()
    def add(self, weight: float) -> None:
        """z += weight * x_i, with x_i the snapshot just taken."""
        if self.sums is None:
            raise RuntimeError("WeightedAverage.add() called before start()")
        torch._foreach_add_(self.sums, self.trajectory.snapshots(), alpha=weight)
        self.total_weight += weight

    @torch.no_grad()
    def apply(self) -> None:
        """Write z / sum(weights) into the parameters and the snapshot; close the window."""
        if self.sums is None or self.total_weight == 0:
            raise RuntimeError("WeightedAverage.apply() needs at least one add()")
        torch._foreach_div_(self.sums, self.total_weight)
        self.trajectory.write_params(self.sums)
        self.trajectory.rebase()
        self.discard()

    def discard(self) -> None:
        """Close the window without touching the parameters."""
        self.sums = None
        self.total_weight = 0.0

    def buffer_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.sums) if self.sums else 0

    def state_dict(self) -> dict:
        sums = [s.clone() for s in self.sums] if self.sums is not None else None
        return {"sums": sums, "total_weight": self.total_weight}

    def load_state_dict(self, state: dict) -> None:
        if state["sums"] is None:
            self.discard()
            return
        snapshots = self.trajectory.snapshots()
        if len(state["sums"]) != len(snapshots) or any(
            s.shape != t.shape or s.dtype != t.dtype for s, t in zip(state["sums"], snapshots)
        ):
            raise ValueError("averaging sums do not match the parameters' buckets (shape or dtype)")
        self.sums = [s.to(t.device).clone() for s, t in zip(state["sums"], snapshots)]
        self.total_weight = float(state["total_weight"])
