"""Linearly weighted parameter averaging over AutoDrop's delay window.

While a drop is pending, the k-th measured parameter vector of the window
(k = 1..n_d) enters a running sum with weight k; at the drop

    x := z / (n_d (n_d + 1) / 2),   z = sum_k k * x_k

so later parameters weigh more. One running sum is kept (a third parameter-sized
buffer, only inside the window), never a list of copies. The sum is added to in
the trajectory's commit pass (:meth:`ParameterTrajectory.commit`) and never
divided in place: the write-back computes ``z / W`` on the way into the
parameters, so an interrupted write-back is simply repeated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .checks import check_keys, check_real, check_tensors_like
from .trajectory import ParameterTrajectory

__all__ = ["WeightedAverage"]


class WeightedAverage:
    """The running weighted sum ``z`` (flat per-bucket tensors laid out like the trajectory's
    snapshots) and the sum of its weights ``W``; ``sums`` is None outside the window."""

    def __init__(self) -> None:
        self.sums: list[Tensor] | None = None
        self.total_weight = 0.0

    @property
    def active(self) -> bool:
        return self.sums is not None

    @staticmethod
    @torch.inference_mode(False)
    def empty_sums(trajectory: ParameterTrajectory) -> list[Tensor]:
        """Zero sums for a window that opens (not yet held: the caller commits them)."""
        return [torch.zeros_like(s) for s in trajectory.snapshots()]

    @torch.inference_mode(False)
    @torch.no_grad()
    def relaid(self, old: ParameterTrajectory, new: ParameterTrajectory) -> list[Tensor]:
        """The open window's sums in ``new``'s layout (see ``ParameterTrajectory.with_params``); a tensor
        that joined counts as having stayed at its snapshot for the window so far: ``W x_0``."""
        previous = old.views_by_param(self.sums)
        sums = [torch.empty_like(s) for s in new.snapshots()]
        snapshots = new.views_by_param(new.snapshots())
        for key, view in new.views_by_param(sums).items():
            if key in previous:
                view.copy_(previous[key])
            else:
                torch.mul(snapshots[key], self.total_weight, out=view)
        return sums

    def write_back(self, trajectory: ParameterTrajectory) -> None:
        """Write ``z / W`` into the parameters and the snapshot; ``z`` stays as it is."""
        if self.sums is None or self.total_weight == 0:
            raise RuntimeError("WeightedAverage.write_back() needs an open window with weight > 0")
        trajectory.write_params(self.sums, self.total_weight)

    def discard(self) -> None:
        """Close the window without touching the parameters."""
        self.sums = None
        self.total_weight = 0.0

    def buffer_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.sums) if self.sums else 0

    def state_dict(self) -> dict:
        sums = [s.clone() for s in self.sums] if self.sums is not None else None
        return {"sums": sums, "total_weight": self.total_weight}

    @staticmethod
    def check_state(state: Any, trajectory: ParameterTrajectory, name: str = "averaging state") -> None:
        """Raise if ``state`` does not fit the trajectory's buffers; changes nothing."""
        check_keys(name, state, ("sums", "total_weight"))
        total = check_real(f"{name}['total_weight']", state["total_weight"], ">= 0", lambda v: v >= 0)
        if state["sums"] is None:
            if total != 0:
                raise ValueError(f"{name}['total_weight'] is {total!r} but there are no sums (expected 0)")
            return
        if total == 0:
            raise ValueError(f"{name}['total_weight'] is 0 but sums are present (an open window has weight > 0)")
        check_tensors_like(f"{name}['sums']", state["sums"], trajectory.snapshots())

    @torch.inference_mode(False)
    def load_state_dict(self, state: dict, trajectory: ParameterTrajectory) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state, trajectory)
        if state["sums"] is None:
            self.discard()
            return
        self.sums = [s.to(t.device).clone() for s, t in zip(state["sums"], trajectory.snapshots())]
        self.total_weight = float(state["total_weight"])
