"""The parameter trajectory: snapshots, steps and their inner products.

AutoDrop needs, once per measurement interval i, the step ``s_i = x_i - x_{i-1}``
of the full parameter vector and the three reductions ``<s_i, s_{i-1}>``,
``|s_i|^2`` and ``|s_{i-1}|^2`` over all parameters at once. This module keeps
exactly two parameter-sized buffers for that, the snapshot ``x_{i-1}`` and the
previous step, and computes the reductions without ever concatenating the model.

Layout: parameters are grouped into buckets by (device, dtype). Each bucket owns
two preallocated flat buffers; every parameter gets a view into them, made once.
Updating a bucket is one ``torch._foreach_*`` call over the views, with the
parameters themselves as the other operand. Buffers are stored in
``promote_types(dtype, float32)``, so the arithmetic is at least fp32 for fp16 and
bf16 parameters (which then cost 4 bytes per element instead of 2).

The step is stored negated, ``d_i = x_{i-1} - x_i = -s_i``: that lets the
snapshot buffer turn into the step buffer in place (``x_{i-1} -= x_i``), and
``<d_i, d_{i-1}> = <s_i, s_{i-1}>``, ``|d_i| = |s_i|``, so nothing downstream sees
the sign.

Faults: the reductions are taken *before* anything is written, chunk by chunk
into one chunk-sized work tensor that exists only during :meth:`ParameterTrajectory.advance`
(so between intervals exactly two parameter-sized buffers are held), and the
buffers are only updated once the host has seen that the step is finite and
nonzero. A step with a NaN/Inf, or a zero step (nothing moved: all frozen, or lr
0), leaves the snapshot ``x_{i-1}`` and the previous step ``d_{i-1}`` exactly as
they were; the next interval is then measured from them, so after a zero step the
previous *nonzero* step stays ``s_{i-1}``. The snapshot and the stored step are
finite by construction, so a non-finite reduction means non-finite current
parameters. Under torch.distributed the decision is taken on the all-reduced
sums, so every rank skips together.

Precision: each chunk's step is formed in the buffer dtype (bit-identical to what
is later stored). Its two dot products are taken in the buffer dtype per chunk of
:data:`CPU_REDUCTION_CHUNK` (or :data:`REDUCTION_CHUNK`) elements and the chunk
partials summed in float64: the cosine is then accurate to ~1e-6, which moves
omega by less than 1e-5 degree at ordinary angles. Near 0 or 180 degrees
``arccos`` amplifies that error (~0.03 degree at 1e-3 degree), so when the cosine
is within :data:`PRECISE_BELOW` of +-1 the reductions are taken once more with
float64 products (a second read-only pass and a second host sync, only then), and
omega matches a float64 reference there too.

Under torch.distributed the buckets hold each rank's local tensors (the
``to_local()`` shard of a DTensor) and the per-bucket partial sums of the counted
tensors are added over the process group in one ``all_reduce``; see
:mod:`autodrop.distributed` for which rank counts which tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import check_device, check_keys, check_optional_real, check_tensors_like
from .distributed import ReplicaCounting, is_dtensor, local_tensor

__all__ = ["CPU_REDUCTION_CHUNK", "PRECISE_BELOW", "REDUCTION_CHUNK", "ParameterTrajectory", "StepStatistics"]

REDUCTION_CHUNK = 1 << 20
"""Elements reduced per chunk on accelerators (a 4 MB fp32 work tensor per bucket, few launches)."""
CPU_REDUCTION_CHUNK = 1 << 17
"""Elements reduced per chunk on CPU: the 512 kB work tensors stay in cache, per-chunk dispatch
is small against the chunk's memory traffic, and a chunk's fp32 dot product keeps a relative
error below 1e-6 (one BLAS dot over 1e8 terms: 2e-2, measured)."""
PRECISE_BELOW = 1e-2
"""Take float64 products when ``1 - |cos| < PRECISE_BELOW`` (omega below ~8.1 or above ~171.9 degrees)."""

NONFINITE = "nonfinite"
ZERO_STEP = "zero_step"


@dataclass(frozen=True)
class StepStatistics:
    """Reductions for one step ``s_i``, reduced over all parameters.

    ``dot`` is ``<s_i, s_{i-1}>`` and ``previous_norm_sq`` is ``|s_{i-1}|^2``;
    both are ``None`` for the first step, which has no predecessor. ``fault`` is
    ``"nonfinite"`` (a NaN/Inf in the step) or ``"zero_step"`` (nothing moved)
    when the step was not taken: the trajectory's buffers are then unchanged.
    """

    norm_sq: float
    dot: float | None
    previous_norm_sq: float | None
    fault: str | None = None


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
        self.chunk_size = REDUCTION_CHUNK if device.type != "cpu" else CPU_REDUCTION_CHUNK
        self.chunks = self._chunk_plan(self.chunk_size)
        self.gathers = any(len(covered) > 1 for _, _, covered in self.chunks)
        # Each buffer's chunk views, made once (a view costs a dispatch per chunk per pass).
        self.chunk_views = {
            id(buffer): [buffer[start:stop] for start, stop, _ in self.chunks] for buffer in (self.snapshot, self.step)
        }
        self.offloaded = self.snapshot.device != params[0].device
        self.sharded = any(is_dtensor(p) for p in params)

    def _chunk_plan(self, size: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
        """Flat ranges ``[start, stop)`` of at most ``size`` elements, each with the
        ``(param index, first, last)`` element ranges of the parameters it covers."""
        plan, covered, start, offset = [], [], 0, 0
        for index, shape in enumerate(self.shapes):
            first = 0
            while first < shape.numel():
                take = min(shape.numel() - first, start + size - offset)
                covered.append((index, first, first + take))
                first, offset = first + take, offset + take
                if offset - start == size:
                    plan.append((start, offset, covered))
                    covered, start = [], offset
        if covered:
            plan.append((start, offset, covered))
        return plan

    def reduce_step(self, current: list[Tensor], precise: bool = False) -> Tensor:
        """``[<d, d_prev>, |d|^2]`` in float64 for ``d = snapshot - current``, writing no buffer.

        Each chunk's ``d`` is formed in the buffer dtype, exactly as :meth:`take_step`
        will store it, into a chunk-sized work tensor made for this call. Its
        products are taken in the buffer dtype and the chunk partials summed in
        float64, or, with ``precise``, the products are taken in float64 and
        ``|d_prev|^2`` is reduced again with them (a third entry): the cosine needs
        all three at that precision.
        """
        dtype = self.snapshot.dtype
        work = torch.empty(min(self.snapshot.numel(), self.chunk_size), dtype=dtype, device=self.snapshot.device)
        snapshots, previous_steps = self.chunk_views[id(self.snapshot)], self.chunk_views[id(self.step)]
        partials = []
        for snapshot, previous, now in zip(snapshots, previous_steps, self._chunks_of(current)):
            step = torch.sub(snapshot, now, out=work if len(work) == len(now) else work[: len(now)])
            if precise and dtype != torch.float64:
                step, previous = step.double(), previous.double()
            partials += [torch.dot(step, previous), torch.dot(step, step)]
            if precise:
                partials.append(torch.dot(previous, previous))
        if not partials:  # an empty local shard
            return torch.zeros(3 if precise else 2, dtype=torch.float64, device=self.snapshot.device)
        return torch.stack(partials).view(-1, 3 if precise else 2).sum(0, dtype=torch.float64)

    def take_step(self, current: list[Tensor]) -> None:
        """``d_i = x_{i-1} - x_i`` into the snapshot buffer, which becomes the step; ``x_i`` is copied in."""
        torch._foreach_sub_(self.snapshot_views, current)
        self.swap()
        torch._foreach_copy_(self.snapshot_views, current)

    def _chunks_of(self, current: list[Tensor]) -> Iterator[Tensor]:
        """``x_i`` flat, chunk by chunk: a view of one tensor, or the pieces of several
        gathered into one chunk-sized tensor made for this call."""
        size = min(self.snapshot.numel(), self.chunk_size)
        gathered = torch.empty(size, dtype=current[0].dtype, device=self.snapshot.device) if self.gathers else None
        flat = [p.view(-1) if p.is_contiguous() else p.reshape(-1) for p in current]
        for start, stop, covered in self.chunks:
            pieces = [
                flat[index] if first == 0 and last == len(flat[index]) else flat[index][first:last]
                for index, first, last in covered
            ]
            if len(pieces) == 1:
                yield pieces[0]
            else:
                yield torch.cat(pieces, out=gathered if stop - start == size else gathered[: stop - start])

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
            return [p.to(self.snapshot.device) for p in self.local_params()]
        return self.local_params() if self.sharded else self.params

    def swap(self) -> None:
        self.snapshot, self.step = self.step, self.snapshot
        self.snapshot_views, self.step_views = self.step_views, self.snapshot_views


def _check_params(params: Iterable[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params is empty: there is no trajectory to measure")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params contains the same tensor more than once")
    return params


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
        self.params = _check_params(params)
        self.snapshot_device = check_device("snapshot_device", snapshot_device)
        self.process_group = process_group
        self.counting = ReplicaCounting(self.params, process_group)
        self.buckets = _bucketize(self.params, self.counting.counted, self.snapshot_device)
        self.previous_norm_sq: float | None = None
        self.rebase()
        if not all(torch.isfinite(s).all() for s in self.snapshots()):
            raise ValueError("params contain NaN or Inf: the first snapshot x_0 must be finite")

    @torch.no_grad()
    def retrack(self, params: Iterable[Tensor]) -> None:
        """Measure ``params`` from now on (e.g. after a param group was added).

        Every tracked tensor among ``params`` keeps its snapshot and previous step;
        a new one starts at its current value with a zero previous step, so it
        joins the measurement from the next interval. The old and the new buffers
        are both held while they are copied.
        """
        params = _check_params(params)
        snapshots = self.views_by_param(self.snapshots())
        steps = self.views_by_param([b.step for b in self.buckets])
        self.counting = ReplicaCounting(params, self.process_group)
        self.params, self.buckets = params, _bucketize(params, self.counting.counted, self.snapshot_device)
        for b in self.buckets:
            for p, now, snapshot, step in zip(b.params, b.current_params(), b.snapshot_views, b.step_views):
                if id(p) in snapshots:
                    snapshot.copy_(snapshots[id(p)])
                    step.copy_(steps[id(p)])
                else:
                    snapshot.copy_(now)

    def views_by_param(self, flats: Sequence[Tensor]) -> dict[int, Tensor]:
        """``id(param)`` -> its view into flat per-bucket vectors laid out like the snapshots."""
        return {
            id(p): view
            for b, flat in zip(self.buckets, flats, strict=True)
            for p, view in zip(b.params, b.views(flat))
        }

    @property
    def numel(self) -> int:
        return sum(b.snapshot.numel() for b in self.buckets)

    def buffer_bytes(self) -> int:
        """Bytes held in the snapshot and step buffers."""
        return sum(2 * b.snapshot.numel() * b.snapshot.element_size() for b in self.buckets)

    @torch.no_grad()
    def rebase(self) -> None:
        """Take the current parameters as the snapshot; the previous step is kept."""
        for b in self.buckets:
            torch._foreach_copy_(b.snapshot_views, b.current_params())

    @torch.no_grad()
    def advance(self) -> StepStatistics:
        """Reduce the new step, then, if it is finite and nonzero, store it and move the snapshot.

        A read-only chunked pass gives ``<d_i, d_{i-1}>`` and ``|d_i|^2`` with
        ``d_i = x_{i-1} - x_i``; the two scalars are brought to the host once (the
        only synchronisation, but for the float64 pass near +-1, see the module
        docstring). Only then, for a finite nonzero step, one pass writes ``d_i``
        over the snapshot and one copies ``x_i`` into the buffer that held
        ``d_{i-1}``. Otherwise nothing is written and the statistics carry the
        ``fault``.
        """
        current = [b.current_params() for b in self.buckets]
        dot, norm_sq = self._reduce_step(current, precise=False)
        if self._nearly_parallel(dot, norm_sq):
            dot, norm_sq, self.previous_norm_sq = self._reduce_step(current, precise=True)
        had_step = self.previous_norm_sq is not None
        fault = None
        if not (math.isfinite(dot) and math.isfinite(norm_sq)):
            fault = NONFINITE
        elif norm_sq == 0:
            fault = ZERO_STEP
        stats = StepStatistics(
            norm_sq=norm_sq,
            dot=dot if had_step else None,
            previous_norm_sq=self.previous_norm_sq,
            fault=fault,
        )
        if fault is None:
            for b, params in zip(self.buckets, current):
                b.take_step(params)
            self.previous_norm_sq = norm_sq
        return stats

    def _reduce_step(self, current: list[list[Tensor]], precise: bool) -> list[float]:
        """The buckets' reductions summed over buckets and ranks, on the host (one sync)."""
        partials = [b.reduce_step(params, precise) for b, params in zip(self.buckets, current)]
        return self._reduce(partials).tolist()

    def _nearly_parallel(self, dot: float, norm_sq: float) -> bool:
        """Whether ``|cos| > 1 - PRECISE_BELOW``, where fp32 products are too coarse for omega."""
        if self.previous_norm_sq is None or not (math.isfinite(dot) and math.isfinite(norm_sq)) or norm_sq == 0:
            return False
        if all(b.snapshot.dtype == torch.float64 for b in self.buckets):
            return False  # the products were float64 already
        return abs(dot) > (1 - PRECISE_BELOW) * math.sqrt(norm_sq) * math.sqrt(self.previous_norm_sq)

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

    def check_state(self, state: Any, name: str = "trajectory state") -> None:
        """Raise if ``state`` does not fit these parameters; changes nothing."""
        check_keys(name, state, ("snapshots", "steps", "previous_norm_sq"))
        buffers = self.snapshots()
        check_tensors_like(f"{name}['snapshots']", state["snapshots"], buffers)
        check_tensors_like(f"{name}['steps']", state["steps"], buffers)
        previous = check_optional_real(f"{name}['previous_norm_sq']", state["previous_norm_sq"], "> 0", lambda v: v > 0)
        if self.counting.world_size > 1:
            return  # the steps are this rank's shards; previous_norm_sq is the sum over all ranks
        stored = sum(float(torch.dot(s.reshape(-1), s.reshape(-1))) for s in state["steps"])
        if previous is None and stored != 0:
            raise ValueError(f"{name}['previous_norm_sq'] is None but the stored steps are nonzero")
        if previous is not None and not math.isclose(stored, previous, rel_tol=1e-4):
            raise ValueError(
                f"{name}['previous_norm_sq'] is {previous!r} but the stored steps have |d|^2 = {stored!r}"
            )

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state)
        for b, snapshot, step in zip(self.buckets, state["snapshots"], state["steps"]):
            b.snapshot.copy_(snapshot)
            b.step.copy_(step)
        self.previous_norm_sq = None if state["previous_norm_sq"] is None else float(state["previous_norm_sq"])
