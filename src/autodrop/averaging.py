"""Linearly weighted parameter averaging over AutoDrop's delay window.

While a drop is pending, the k-th measured parameter vector of the window
(k = 1..n_d) enters a running sum with weight k; at the drop

    x := z / (n_d (n_d + 1) / 2),   z = sum_k k * x_k

so later parameters weigh more. One running sum is kept (a third parameter-sized
buffer, only inside the window), never a list of copies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .checks import check_keys, check_real, check_tensors_like
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

    @torch.no_grad()
    def retrack(self, previous_sums: dict[int, Tensor]) -> None:
        """Re-lay the open window's sums after ``trajectory.retrack``.

        ``previous_sums`` maps ``id(param)`` to its sum in the old layout
        (``trajectory.views_by_param(sums)`` taken before the retrack). A tensor
        that joined counts as having stayed at its snapshot for the whole window
        so far, i.e. its sum is ``total_weight * snapshot``.
        """
        snapshots = self.trajectory.views_by_param(self.trajectory.snapshots())
        self.sums = [torch.empty_like(s) for s in self.trajectory.snapshots()]
        for key, view in self.trajectory.views_by_param(self.sums).items():
            if key in previous_sums:
                view.copy_(previous_sums[key])
            else:
                torch.mul(snapshots[key], self.total_weight, out=view)

    def discard(self) -> None:
        """Close the window without touching the parameters."""
        self.sums = None
        self.total_weight = 0.0

    def buffer_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.sums) if self.sums else 0

    def state_dict(self) -> dict:
        sums = [s.clone() for s in self.sums] if self.sums is not None else None
        return {"sums": sums, "total_weight": self.total_weight}

    def check_state(self, state: Any, name: str = "averaging state") -> None:
        """Raise if ``state`` does not fit the trajectory's buffers; changes nothing."""
        check_keys(name, state, ("sums", "total_weight"))
        total = check_real(f"{name}['total_weight']", state["total_weight"], ">= 0", lambda v: v >= 0)
        if state["sums"] is None:
            if total != 0:
                raise ValueError(f"{name}['total_weight'] is {total!r} but there are no sums (expected 0)")
            return
        if total == 0:
            raise ValueError(f"{name}['total_weight'] is 0 but sums are present (an open window has weight > 0)")
        check_tensors_like(f"{name}['sums']", state["sums"], self.trajectory.snapshots())

    def load_state_dict(self, state: dict) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state)
        if state["sums"] is None:
            self.discard()
            return
        self.sums = [s.to(t.device).clone() for s, t in zip(state["sums"], self.trajectory.snapshots())]
        self.total_weight = float(state["total_weight"])
