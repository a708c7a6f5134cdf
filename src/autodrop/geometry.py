"""The parameter trajectory: snapshots, steps and their inner products.

AutoDrop needs, once per measurement interval i, the step ``s_i = x_i - x_{i-1}``
of the full parameter vector and the three reductions ``<s_i, s_{i-1}>``,
``|s_i|^2`` and ``|s_{i-1}|^2`` over all parameters at once. This module keeps
exactly two parameter-sized buffers for that, the snapshot ``x_{i-1}`` and the
previous step, and computes the reductions without ever concatenating the model.

Layout: parameters are grouped into buckets by (device, dtype). Each bucket owns
one preallocated ``(2, numel)`` tensor whose rows are the two flat buffers; every
parameter gets a view into each row. Updating a bucket is one ``torch._foreach_*``
call over the views, with the parameters themselves as the other operand (no
per-call list of detached tensors). Both reductions come from one batched product
of the pair with the new step, chunk by chunk, summed in float64 (on CPU; two
``torch.dot`` elsewhere, see :func:`_step_reductions`). Buffers are stored in ``promote_types(dtype, float32)``,
so the arithmetic is at least fp32 for fp16 and bf16 parameters (which then cost
4 bytes per element instead of 2).

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

from .distributed import ReplicaCounting, is_dtensor, local_tensor

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


#: Elements per chunk of the CPU reductions: each chunk's dot product is a 32768-term
#: fp32 sum (relative error <= 2e-7, measured), and the chunk partials are summed in
#: float64. Shorter chunks are more precise and slower (4096: 3e-9, 30 % slower).
REDUCTION_CHUNK = 32768
#: Buckets below this many elements take one fp32 ``torch.mv`` (as precise as one
#: chunk), which saves two kernel launches for small models.
CHUNKED_FROM = 2 * REDUCTION_CHUNK


class _Bucket:
    """Parameters of one (device, dtype, counted) and their two flat buffers (local shards),
    rows of one tensor.

    Every view the per-interval work needs is made once here (a view costs a
    dispatch, 5-20 us when caches are cold after an epoch of training).
    """

    def __init__(self, params: list[Tensor], device: torch.device, counted: bool) -> None:
        self.params = params
        self.counted = counted
        self.shapes = [local_tensor(p).shape for p in params]
        dtype = torch.promote_types(params[0].dtype, torch.float32)
        numel = sum(shape.numel() for shape in self.shapes)
        self.pair = torch.zeros(2, numel, dtype=dtype, device=device)
        self.rows = [self.pair[0], self.pair[1]]
        self.row_views = [self.views(row) for row in self.rows]
        self.snapshot_row = 0
        self.offloaded = self.pair.device != params[0].device
        self.sharded = any(is_dtensor(p) for p in params)
        # The reductions' chunked layout: [chunk, element, row] over the first
        # chunks * REDUCTION_CHUNK elements of both rows, and the rest.
        chunks = numel // REDUCTION_CHUNK if numel >= CHUNKED_FROM else 0
        head = chunks * REDUCTION_CHUNK
        self.chunked_pair = self.pair[:, :head].view(2, chunks, REDUCTION_CHUNK).permute(1, 2, 0)
        self.chunked_rows = [row[:head].view(chunks, 1, REDUCTION_CHUNK) for row in self.rows]
        self.tail_pair = self.pair[:, head:]
        self.tail_rows = [row[head:] for row in self.rows]

    @property
    def snapshot(self) -> Tensor:
        return self.rows[self.snapshot_row]

    @property
    def step(self) -> Tensor:
        return self.rows[1 - self.snapshot_row]

    @property
    def snapshot_views(self) -> list[Tensor]:
        return self.row_views[self.snapshot_row]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` shaped like the parameters, in order."""
        views, offset = [], 0
        for shape in self.shapes:
            views.append(flat[offset : offset + shape.numel()].view(shape))
            offset += shape.numel()
        return views

    def local_params(self) -> list[Tensor]:
        """This rank's part of each parameter (the parameter itself when not sharded)."""
        return [local_tensor(p) for p in self.params]

    def current_params(self) -> list[Tensor]:
        """The local parameters as tensors on the buffers' device (copies when offloaded).

        Unsharded and beside the parameters this is the parameter list itself: the
        callers run under ``torch.no_grad()`` and only read it, and a fresh list of
        ``detach()``-ed tensors costs about 1 us per tensor per call.
        """
        if self.offloaded:
            return [p.to(self.pair.device) for p in self.local_params()]
        return self.local_params() if self.sharded else self.params

    def swap(self) -> None:
        self.snapshot_row = 1 - self.snapshot_row


def _step_reductions(bucket: _Bucket, chunked: bool | None = None) -> Tensor:
    """``[<d_i, d_{i-1}>, |d_i|^2]`` of one bucket whose snapshot row now holds d_i.

    ``chunked`` (default: on CPU) cuts both rows into chunks of
    :data:`REDUCTION_CHUNK` elements and takes all chunk dot products with d_i in one
    ``torch.bmm`` over strided views (no copy; each row is read once, as fast as one
    ``torch.mv``), then sums the chunk partials in float64; the last partial chunk
    is one ``torch.mv`` (the whole bucket below :data:`CHUNKED_FROM` elements). A single BLAS fp32 dot over the whole row is as fast but
    accumulates in a few fp32 registers: measured relative error 7e-4 at 1e7
    elements and 2e-2 at 1e8, against 2e-7 chunked. Otherwise two ``torch.dot``:
    an accelerator's dot already reduces in a tree over thousands of threads, and
    its speed on long vectors is established.
    """
    row = bucket.snapshot_row
    if chunked if chunked is not None else bucket.pair.device.type == "cpu":
        both = torch.mv(bucket.tail_pair, bucket.tail_rows[row])
        if bucket.chunked_pair.shape[0]:
            chunks = torch.bmm(bucket.chunked_rows[row], bucket.chunked_pair)
            both = chunks.sum((0, 1), dtype=torch.float64) + both
        return both.flip(0) if row == 0 else both
    new = bucket.snapshot
    return torch.stack([torch.dot(new, bucket.step), torch.dot(new, new)])


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

        One pass writes ``d_i = x_{i-1} - x_i`` over the snapshot, one pass reads
        ``d_i`` and the stored ``d_{i-1}`` for the dot product and the squared norm,
        and the current parameters are copied into the buffer that held ``d_{i-1}``.
        The scalars are brought to the host once (the only synchronisation).
        """
        current = [b.current_params() for b in self.buckets]
        partials = []
        for b, params in zip(self.buckets, current):
            torch._foreach_sub_(b.snapshot_views, params)
            partials.append(_step_reductions(b))
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
            # Which row holds the snapshot: the reductions' rounding depends on the
            # rows' alignment, so a resumed run keeps the rows to stay bit-identical.
            "snapshot_rows": [b.snapshot_row for b in self.buckets],
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
        rows = state.get("snapshot_rows", [0] * len(self.buckets))  # absent in states before 0.1.0's rows
        if len(rows) != len(self.buckets) or any(row not in (0, 1) for row in rows):
            raise ValueError(f"trajectory snapshot_rows must be one 0 or 1 per bucket, got {rows!r}")
        for b, row, snapshot, step in zip(self.buckets, rows, state["snapshots"], state["steps"]):
            b.snapshot_row = row
            b.snapshot.copy_(snapshot)
            b.step.copy_(step)
        self.previous_norm_sq = state["previous_norm_sq"]
