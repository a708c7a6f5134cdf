"""The parameter trajectory: snapshots, steps and their inner products.

AutoDrop needs, once per measurement interval i, the step ``s_i = x_i - x_{i-1}``
of the full parameter vector and the three reductions ``<s_i, s_{i-1}>``,
``|s_i|^2`` and ``|s_{i-1}|^2`` over all parameters at once. This module keeps
exactly two parameter-sized buffers for that, the snapshot ``x_{i-1}`` and the
previous step, and computes the reductions without ever concatenating the model.

Layout: parameters are grouped into buckets by (device, dtype). Each bucket owns
two preallocated flat buffers; every parameter gets a view into them. Updating a
bucket is one ``torch._foreach_*`` call over the views, and each reduction is one
``torch.dot`` over the flat buffer. Buffers are stored in
``promote_types(dtype, float32)``, so the arithmetic is at least fp32 for fp16 and
bf16 parameters (which then cost 4 bytes per element instead of 2).

The step is stored negated, ``d_i = x_{i-1} - x_i = -s_i``: that lets the
snapshot buffer turn into the step buffer in place (``x_{i-1} -= x_i``), and
``<d_i, d_{i-1}> = <s_i, s_{i-1}>``, ``|d_i| = |s_i|``, so nothing downstream sees
the sign.

Under torch.distributed the buckets hold each rank's local tensors (the
``to_local()`` shard of a DTensor) and the per-bucket partial sums of the counted
tensors are added over the process group in one ``all_reduce``; see
:mod:`autodrop.distributed` for which rank counts which tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .distributed import ReplicaCounting, local_tensor

__all__ = ["ParameterTrajectory", "StepStatistics"]


@dataclass(frozen=True)
class StepStatistics:
    """Reductions for one step ``s_i``, reduced over all parameters.

    ``dot`` is ``<s_i, s_{i-1}>`` and ``previous_norm_sq`` is ``|s_{i-1}|^2``;
    both are ``None`` for the first step, which has no predecessor.
    """

    norm_sq: float
    dot: float | None
    previous_norm_sq: float | None


class _Bucket:
    """Parameters of one (device, dtype, counted) and their two flat buffers (local shards)."""

    def __init__(self, params: list[Tensor], device: torch.device, counted: bool) -> None:
        self.params = params
        self.counted = counted
        self.shapes = [local_tensor(p).shape for p in params]
        dtype = torch.promote_types(params[0].dtype, torch.float32)
        numel = sum(shape.numel() for shape in self.shapes)
        self.snapshot = torch.empty(numel, dtype=dtype, device=device)
        self.step = torch.zeros(numel, dtype=dtype, device=device)
        self.snapshot_views = self.views(self.snapshot)
        self.step_views = self.views(self.step)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` shaped like the parameters, in order."""
        views, offset = [], 0
        for shape in self.shapes:
            views.append(flat[offset : offset + shape.numel()].view(shape))
            offset += shape.numel()
        return views

    @property
    def offloaded(self) -> bool:
        return self.snapshot.device != self.params[0].device

    def local_params(self) -> list[Tensor]:
        """This rank's part of each parameter (the parameter itself when not sharded)."""
        return [local_tensor(p) for p in self.params]

    def current_params(self) -> list[Tensor]:
        """The local parameters as tensors on the buffers' device (copies when offloaded)."""
        if self.offloaded:
            return [p.to(self.snapshot.device) for p in self.local_params()]
        return self.local_params()

    def swap(self) -> None:
        self.snapshot, self.step = self.step, self.snapshot
        self.snapshot_views, self.step_views = self.step_views, self.snapshot_views


def _bucketize(
    params: Sequence[Tensor], counted: Sequence[bool], snapshot_device: torch.device | None
) -> list[_Bucket]:
    groups: dict[tuple[torch.device, torch.dtype, bool], list[Tensor]] = {}
    for p, is_counted in zip(params, counted, strict=True):
        groups.setdefault((p.device, p.dtype, is_counted), []).append(p)
    return [
        _Bucket(members, snapshot_device if snapshot_device is not None else device, is_counted)
        for (device, _, is_counted), members in groups.items()
    ]


class ParameterTrajectory:
    """Snapshot of the parameters and the last step, kept in flat per-bucket buffers.

    Memory held: two copies of the parameters (in at least fp32), on
    ``snapshot_device`` when given (e.g. ``"cpu"`` to keep them off the
    accelerator), else beside each parameter. Of sharded (DTensor) parameters
    only this rank's shards are held.

    Args:
        params: the tensors whose trajectory is measured; every parameter the
            optimizer updates. Frozen parameters are allowed: their step is zero
            and contributes nothing to the reductions.
        snapshot_device: where the buffers live; ``None`` = each parameter's device.
        process_group: the torch.distributed group the sums are reduced over;
            ``None`` = the default group when torch.distributed is initialized
            (see :class:`autodrop.distributed.ReplicaCounting`).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        snapshot_device: torch.device | str | None = None,
        process_group: Any = None,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: there is no trajectory to measure")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("params contains the same tensor more than once")
        device = torch.device(snapshot_device) if snapshot_device is not None else None
        self.counting = ReplicaCounting(self.params, process_group)
        self.buckets = _bucketize(self.params, self.counting.counted, device)
        self.previous_norm_sq: float | None = None
        self.rebase()

    @property
    def numel(self) -> int:
        return sum(b.snapshot.numel() for b in self.buckets)

    def buffer_bytes(self) -> int:
        """Bytes held in the snapshot and step buffers."""
        return sum(2 * b.snapshot.numel() * b.snapshot.element_size() for b in self.buckets)

    @torch.no_grad()
    def rebase(self) -> None:
        """Take the current parameters as the snapshot; the previous step is kept."""
        self._store_snapshots([b.current_params() for b in self.buckets])

    def _store_snapshots(self, current: list[list[Tensor]]) -> None:
        for b, params in zip(self.buckets, current):
            torch._foreach_copy_(b.snapshot_views, params)

    @torch.no_grad()
    def advance(self) -> StepStatistics:
        """Form the new step from the snapshot, reduce it, and move the snapshot.

        One pass writes ``d_i = x_{i-1} - x_i`` over the snapshot, one dot product
        against the stored ``d_{i-1}`` and one squared norm follow, and the
        current parameters are copied into the buffer that held ``d_{i-1}``.
        The scalars are brought to the host once (the only synchronisation).
        """
        current = [b.current_params() for b in self.buckets]
        partials = []
        for b, params in zip(self.buckets, current):
            torch._foreach_sub_(b.snapshot_views, params)
            partials.append(
                torch.stack([torch.dot(b.snapshot, b.step), torch.dot(b.snapshot, b.snapshot)])
            )
            b.swap()
        dot, norm_sq = self._reduce(partials).tolist()
        self._store_snapshots(current)

        had_step = self.previous_norm_sq is not None
        stats = StepStatistics(
            norm_sq=norm_sq,
            dot=dot if had_step else None,
            previous_norm_sq=self.previous_norm_sq,
        )
        self.previous_norm_sq = norm_sq
        return stats

    def _reduce(self, partials: list[Tensor]) -> Tensor:
        """Sum the counted buckets' partial reductions in float64, then over the process group."""
        device = partials[0].device
        counted = [p.to(device=device, dtype=torch.float64) for p, b in zip(partials, self.buckets) if b.counted]
        total = torch.stack(counted).sum(0) if counted else torch.zeros_like(partials[0], dtype=torch.float64)
        return self.counting.all_reduce(total)

    def snapshots(self) -> list[Tensor]:
        """The flat snapshot buffer of each bucket (the parameters at the last measurement)."""
        return [b.snapshot for b in self.buckets]

    @torch.no_grad()
    def write_params(self, flats: Sequence[Tensor]) -> None:
        """Copy flat per-bucket vectors (laid out like the snapshots) into the parameters."""
        for b, flat in zip(self.buckets, flats, strict=True):
            torch._foreach_copy_(b.local_params(), b.views(flat))

    def state_dict(self) -> dict:
        return {
            "snapshots": [b.snapshot.clone() for b in self.buckets],
            "steps": [b.step.clone() for b in self.buckets],
            "previous_norm_sq": self.previous_norm_sq,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name in ("snapshots", "steps"):
            saved = state[name]
            if len(saved) != len(self.buckets):
                raise ValueError(
                    f"trajectory state has {len(saved)} {name} buffers, the parameters "
                    f"form {len(self.buckets)} (device, dtype) buckets"
                )
            for index, (b, tensor) in enumerate(zip(self.buckets, saved)):
                if tensor.shape != b.snapshot.shape or tensor.dtype != b.snapshot.dtype:
                    raise ValueError(
                        f"trajectory {name}[{index}] is {tuple(tensor.shape)} {tensor.dtype}, "
                        f"expected {tuple(b.snapshot.shape)} {b.snapshot.dtype}"
                    )
        for b, snapshot, step in zip(self.buckets, state["snapshots"], state["steps"]):
            b.snapshot.copy_(snapshot)
            b.step.copy_(step)
        self.previous_norm_sq = state["previous_norm_sq"]
