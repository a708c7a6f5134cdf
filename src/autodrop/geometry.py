"""The parameter trajectory: snapshots, steps and their inner products.

AutoDrop needs, once per measurement interval i, the step ``s_i = x_i - x_{i-1}``
of the full parameter vector and the three reductions ``<s_i, s_{i-1}>``,
``|s_i|^2`` and ``|s_{i-1}|^2`` over all parameters at once. This module keeps
exactly two parameter-sized buffers for that, the snapshot ``x_{i-1}`` and the
previous step, and computes the reductions without ever concatenating the model.

Layout: parameters are grouped into buckets by (device, dtype). Each bucket owns
two flat buffers holding its parameters' elements in order, and works on them in
chunks: a chunk is a run of whole small parameters, gathered by one ``torch.cat``
(one kernel however many tensors), or a piece of one large parameter, used as a
view. Buffers are stored in ``promote_types(dtype, float32)``, so the arithmetic is
at least fp32 for fp16 and bf16 parameters (which then cost 4 bytes per element
instead of 2).

The step is used negated, ``d_i = x_{i-1} - x_i = -s_i``, so that it is the
difference of the two snapshots in the order they are held;
``<d_i, d_{i-1}> = <s_i, s_{i-1}>`` and ``|d_i| = |s_i|``, so nothing downstream sees
the sign. In a bucket larger than one chunk, after an ordinary step the second
buffer holds ``x_{i-2}``, not ``d_{i-1}``: the step is then formed in cache from the
two snapshots (the same subtraction of the same values, so the same bits), and
taking the next step writes one buffer, ``x_i`` over ``x_{i-2}``. Before the
snapshot moves without a step (after averaging) the second buffer is turned into
``d_{i-1}`` in place.

Faults: the reductions are taken *before* anything is written, and the buffers are
only updated once the host has seen that the step is finite and nonzero. A bucket
that fits in one chunk gathers ``x_i`` into a fresh tensor, which becomes its
snapshot when the step is taken; a larger one forms each chunk's differences in
chunk-sized work tensors that exist only during :meth:`ParameterTrajectory.advance`,
then copies ``x_i`` into a buffer in a second pass. Between intervals exactly two
parameter-sized buffers are held. A step with a NaN/Inf, or a zero step (nothing
moved: all frozen, or lr 0), leaves the snapshot ``x_{i-1}`` and the previous step
``d_{i-1}`` exactly as they were; the next interval is then measured from them, so
after a zero step the previous *nonzero* step stays ``s_{i-1}``. The snapshot and
the stored step are finite by construction, so a non-finite reduction means
non-finite current parameters. Under torch.distributed the decision is taken on
the all-reduced sums, so every rank skips together.

Precision: each chunk's step is formed in the buffer dtype (bit-identical to what
is stored). Its two dot products are taken in the buffer dtype per chunk of at most
:data:`CPU_REDUCTION_CHUNK` (or :data:`REDUCTION_CHUNK`) elements and the chunk
partials summed exactly on the host (``math.fsum``; in float64 on the device under
torch.distributed): the cosine is then accurate to ~1e-6, which moves omega by
less than 1e-5 degree at ordinary angles. Near 0 or 180 degrees ``arccos``
amplifies that error (~0.03 degree at 1e-3 degree), so when the cosine is within
:data:`PRECISE_BELOW` of +-1 the reductions are taken once more with float64
products (a second read-only pass and a second host sync, only then), and omega
matches a float64 reference there too.

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

REDUCTION_CHUNK = 1 << 22
"""Elements per chunk on accelerators: a chunk's pass moves ~50 MB in fp32, so its few kernels
run longer than their launches take (a 16 MB fp32 work tensor per bucket during a step)."""
CPU_REDUCTION_CHUNK = 1 << 17
"""Elements reduced per chunk on CPU: the 512 kB work tensors stay in cache, per-chunk dispatch
is small against the chunk's memory traffic, and a chunk's fp32 dot product keeps a relative
error below 1e-6 (one BLAS dot over 1e8 terms: 2e-2, measured)."""
GATHER_BELOW = 1024
"""The write pass gathers a run of tensors averaging fewer elements than this before copying it."""
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
    """Parameters of one (device, dtype, counted) and their two flat buffers (local shards).

    The buffers hold the parameters' elements in order: ``snapshot`` is ``x_{i-1}``, and
    ``previous`` holds the previous step ``d_{i-1}`` itself, or, after an ordinary step
    taken in place (``previous_is_snapshot``), the snapshot before, ``x_{i-2}``, from which
    ``d_{i-1} = x_{i-2} - x_{i-1}`` is formed when needed: bit for bit the ``d_{i-1}``
    that was measured, as the same two values are subtracted. Taking a step then writes
    one buffer, ``x_i`` over the older one, and the two swap roles. It goes one of two
    ways:

    - out of place, for a bucket that fits in one chunk (``chunk_size`` elements): ``x_i``
      is gathered by one ``torch.cat`` into a fresh tensor and ``d_i`` formed into
      another; when the step is taken they become the snapshot and the previous step
      (``previous`` then holds ``d_i`` itself: it was formed anyway), so nothing is
      written twice (a transient two chunk-sized tensors; larger fresh tensors would
      cost page faults on CPU every step);
    - in place, for larger buckets: a read-only pass for the reductions, chunk by chunk
      (:meth:`_chunk_plan`; each chunk's ``x_i`` is a view of one parameter or a run of
      small ones gathered by one ``torch.cat``, and at most three chunk-sized tensors
      exist beyond the buffers), then one ``foreach`` copy of ``x_i`` into the older
      buffer.
    """

    def __init__(self, params: list[Tensor], device: torch.device, counted: bool) -> None:
        self.params = params
        self.counted = counted
        self.shapes = [local_tensor(p).shape for p in params]
        self.dtype = torch.promote_types(params[0].dtype, torch.float32)
        self.numel = sum(shape.numel() for shape in self.shapes)
        self.snapshot = torch.empty(self.numel, dtype=self.dtype, device=device)
        self.previous = torch.zeros(self.numel, dtype=self.dtype, device=device)
        self.previous_is_snapshot = False
        self.chunk_size = REDUCTION_CHUNK if device.type != "cpu" else CPU_REDUCTION_CHUNK
        self.chunks = self._chunk_plan(self.chunk_size)
        self.out_of_place = len(self.chunks) == 1
        self.gathers = any(len(covered) > 1 for _, _, covered in self.chunks)
        self.offloaded = self.snapshot.device != params[0].device
        self.sharded = any(is_dtensor(p) for p in params)
        # In place, each buffer's chunk views and copy targets are made once (a view costs a
        # dispatch); out of place the snapshot is replaced every step and needs none.
        in_place = () if self.out_of_place else (self.snapshot, self.previous)
        self.chunk_views = {id(buffer): [buffer[start:stop] for start, stop, _ in self.chunks] for buffer in in_place}
        # The write pass copies each chunk's pieces straight into the buffer (one foreach call),
        # but gathers runs of tiny tensors first: a foreach copy costs ~0.75 us per tensor, a
        # gathered element ~0.4 ns more (both measured, CPU).
        self.gathered_runs = [
            index for index, (start, stop, covered) in enumerate(self.chunks)
            if len(covered) > 1 and stop - start < GATHER_BELOW * len(covered)
        ]
        self.copy_targets = {id(buffer): self._copy_targets(buffer) for buffer in in_place}
        self.pointers: list[int] | None = None
        self.cached_pieces: list[list[Tensor]] = []
        self.staged: tuple[Tensor, Tensor] | None = None

    def _copy_targets(self, buffer: Tensor) -> list[Tensor]:
        """The views of ``buffer`` that the write pass copies ``x_i``'s pieces into: one per
        piece of every chunk but the gathered runs, in the order of :meth:`_copy_sources`."""
        targets, gathered = [], set(self.gathered_runs)
        for index, (start, _, covered) in enumerate(self.chunks):
            if index in gathered:
                continue
            for _, first, last in covered:
                targets.append(buffer[start : start + last - first])
                start += last - first
        return targets

    def _copy_sources(self, pieces: list[list[Tensor]]) -> list[Tensor]:
        gathered = set(self.gathered_runs)
        return [piece for index, chunk in enumerate(pieces) if index not in gathered for piece in chunk]

    def previous_step(self) -> Tensor:
        """``d_{i-1}``: the ``previous`` buffer, or ``x_{i-2} - x_{i-1}`` formed fresh."""
        return torch.sub(self.previous, self.snapshot) if self.previous_is_snapshot else self.previous

    def hold_step(self) -> None:
        """Make ``previous`` hold ``d_{i-1}`` itself, as before the snapshot moves without a step."""
        if self.previous_is_snapshot:
            self.previous.sub_(self.snapshot)
            self.previous_is_snapshot = False

    def _chunk_plan(self, size: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
        """Flat ranges ``[start, stop)`` of at most ``size`` elements, each with the
        ``(param index, first, last)`` element ranges of the parameters it covers.

        A chunk is either a run of whole parameters (gathered by one ``torch.cat``)
        or a ``size``-element piece of a larger parameter: no chunk mixes a large
        parameter with others, so the bytes of large parameters are never gathered.
        """
        plan: list[tuple[int, int, list[tuple[int, int, int]]]] = []
        run: list[tuple[int, int, int]] = []
        start = offset = 0
        for index, shape in enumerate(self.shapes):
            numel = shape.numel()
            if run and offset - start + numel > size:
                plan.append((start, offset, run))
                run, start = [], offset
            if numel <= size:
                if numel:
                    run.append((index, 0, numel))
                    offset += numel
                continue
            for first in range(0, numel, size):
                last = min(first + size, numel)
                plan.append((offset + first, offset + last, [(index, first, last)]))
            offset += numel
            start = offset
        if run:
            plan.append((start, offset, run))
        return plan

    def pieces(self, current: list[Tensor]) -> list[list[Tensor]]:
        """Per chunk, the 1-D pieces of ``x_i`` (``current``) it covers.

        They are views into ``current``, made once and reused while every tensor stays
        contiguous at the same address (checked each call, so a parameter whose
        ``.data`` was replaced gets new views). Non-contiguous tensors are flattened
        into copies each call, and offloaded copies are never kept.
        """
        pointers = [t.data_ptr() for t in current]
        contiguous = all(t.is_contiguous() for t in current)
        if contiguous and pointers == self.pointers:
            return self.cached_pieces
        flat, numels = [t.reshape(-1) for t in current], [shape.numel() for shape in self.shapes]
        pieces = [
            [flat[i] if first == 0 and last == numels[i] else flat[i][first:last] for i, first, last in covered]
            for _, _, covered in self.chunks
        ]
        keep = contiguous and not self.offloaded
        self.pointers, self.cached_pieces = (pointers, pieces) if keep else (None, [])
        return pieces

    def _chunks_of(self, pieces: list[list[Tensor]]) -> Iterator[tuple[Tensor, ...]]:
        """In place, per chunk ``(snapshot, previous, x_i, work, work)``: the buffers' chunk
        views, ``x_i``'s chunk (a view of one parameter, or a run of several gathered into
        a chunk-sized tensor made for this pass) and two work tensors of the chunk's size
        made for this pass.

        The work tensors sit at the same address modulo 64 bytes as the chunk's views
        of the buffers: a BLAS dot of two vectors misaligned relative to each other
        runs ~6x slower (fp32 CPU, measured).
        """
        full = min(self.numel, self.chunk_size)
        device = self.snapshot.device
        lanes = 64 // self.snapshot.element_size()
        gathered = torch.empty(full, dtype=self.dtype, device=device) if self.gathers else None
        works = [torch.empty(full + lanes, dtype=self.dtype, device=device) for _ in range(2)]
        snapshots, previous = self.chunk_views[id(self.snapshot)], self.chunk_views[id(self.previous)]
        for (start, stop, _), snapshot, older, chunk in zip(self.chunks, snapshots, previous, pieces):
            size = stop - start
            if len(chunk) == 1:
                now = chunk[0]
            else:
                now = torch.cat(chunk, out=gathered if size == full else gathered[:size])
            yield snapshot, older, now, *(work[start % lanes : start % lanes + size] for work in works)

    def reduce_step(self, pieces: list[list[Tensor]], precise: bool = False) -> Tensor:
        """Each chunk's ``<d, d_prev>, |d|^2`` (and ``|d_prev|^2`` with ``precise``), flat,
        for ``d = snapshot - x_i`` with ``x_i`` given by :meth:`pieces`; no buffer is written.

        ``d`` is formed in the buffer dtype and its products are taken per chunk of at
        most ``chunk_size`` elements in the buffer dtype, or with ``precise`` in
        float64. Out of place, ``x_i`` is gathered into a fresh tensor and ``d`` formed
        into another; both are kept (``staged``) for :meth:`take_step` to adopt or
        :meth:`forget` to drop.
        """
        products: list[Tensor] = []

        def multiply(step: Tensor, previous: Tensor) -> None:
            if precise and self.dtype != torch.float64:
                step, previous = step.double(), previous.double()
            products.extend((torch.dot(step, previous), torch.dot(step, step)))
            if precise:
                products.append(torch.dot(previous, previous))

        if self.numel == 0:  # an empty local shard
            return torch.zeros(3 if precise else 2, dtype=torch.float64, device=self.snapshot.device)
        if self.out_of_place:
            (run,) = pieces
            # cat makes its own output unless the pieces' dtype must be widened to the buffers'.
            now = torch.cat(run) if run[0].dtype == self.dtype else torch.cat(run, out=torch.empty_like(self.snapshot))
            self.staged = (now, torch.sub(self.snapshot, now))
            multiply(self.staged[1], self.previous_step())
            return torch.stack(products)
        for snapshot, older, now, step, previous_step in self._chunks_of(pieces):
            torch.sub(snapshot, now, out=step)
            multiply(step, torch.sub(older, snapshot, out=previous_step) if self.previous_is_snapshot else older)
        return torch.stack(products)

    def take_step(self, pieces: list[list[Tensor]]) -> None:
        """Move to ``x_i`` (given by :meth:`pieces`): it becomes the snapshot.

        Out of place the tensors :meth:`reduce_step` staged, ``x_i`` and ``d_i``,
        become the snapshot and the previous step. In place ``x_i`` is copied over the
        older buffer by one ``foreach`` copy of its pieces (runs of tiny tensors
        gathered first), and the buffers swap roles: ``x_{i-1}`` is the older one.
        """
        if self.out_of_place:
            self.snapshot, self.previous = self.staged
            self.staged = None
            self.previous_is_snapshot = False
            return
        targets = self.copy_targets[id(self.previous)]
        if targets:
            torch._foreach_copy_(targets, self._copy_sources(pieces))
        if self.gathered_runs:
            gathered = torch.empty(min(self.numel, self.chunk_size), dtype=self.dtype, device=self.snapshot.device)
            older = self.chunk_views[id(self.previous)]
            for index in self.gathered_runs:
                run = older[index]
                run.copy_(torch.cat(pieces[index], out=gathered[: run.numel()]))
        self.snapshot, self.previous = self.previous, self.snapshot
        self.previous_is_snapshot = True

    def forget(self) -> None:
        """Drop what :meth:`reduce_step` staged (the step is not taken)."""
        self.staged = None

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


def _host_sum(values: list[float]) -> float:
    """The exact sum (``math.fsum``); where that refuses (opposite infinities, overflow),
    the plain sum, which is then not finite either."""
    try:
        return math.fsum(values)
    except (ValueError, OverflowError):
        return sum(values)


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
        for b in self.buckets:
            b.hold_step()
        snapshots = self.views_by_param(self.snapshots())
        steps = self.views_by_param([b.previous for b in self.buckets])
        self.counting = ReplicaCounting(params, self.process_group)
        self.params, self.buckets = params, _bucketize(params, self.counting.counted, self.snapshot_device)
        for b in self.buckets:
            for p, now, snapshot, step in zip(b.params, b.current_params(), b.views(b.snapshot), b.views(b.previous)):
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
            b.hold_step()
            torch._foreach_copy_(b.views(b.snapshot), b.current_params())

    @torch.no_grad()
    def advance(self) -> StepStatistics:
        """Reduce the new step, then, if it is finite and nonzero, store it and move the snapshot.

        A pass that writes no buffer gives ``<d_i, d_{i-1}>`` and ``|d_i|^2`` with
        ``d_i = x_{i-1} - x_i``; the two scalars are brought to the host once (the
        only synchronisation, but for the float64 pass near +-1, see the module
        docstring). Only then, for a finite nonzero step, ``x_i`` becomes the snapshot
        (out of place: the tensor that pass gathered, with the ``d_i`` it formed as the
        previous step; in place: one ``foreach`` copy, ``x_{i-1}`` staying as the second
        buffer). Otherwise nothing is written and the statistics carry the ``fault``.
        """
        pieces = [b.pieces(b.current_params()) for b in self.buckets]
        dot, norm_sq = self._reduce_step(pieces, precise=False)
        if self._nearly_parallel(dot, norm_sq):
            dot, norm_sq, self.previous_norm_sq = self._reduce_step(pieces, precise=True)
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
        for b, bucket_pieces in zip(self.buckets, pieces):
            if fault is None:
                b.take_step(bucket_pieces)
            else:
                b.forget()
        if fault is None:
            self.previous_norm_sq = norm_sq
        return stats

    def _reduce_step(self, pieces: list[list[list[Tensor]]], precise: bool) -> list[float]:
        """The chunks' partial reductions summed over chunks, buckets and ranks, on the host.

        In one process the partials of all buckets on a device go to the host together
        (one sync per device) and are summed there exactly (``math.fsum``); under
        torch.distributed they are summed in float64 on the device and all-reduced.
        """
        width = 3 if precise else 2
        partials = [b.reduce_step(bucket_pieces, precise) for b, bucket_pieces in zip(self.buckets, pieces)]
        if self.counting.world_size > 1:
            return self._reduce([p.view(-1, width).sum(0, dtype=torch.float64) for p in partials]).tolist()
        by_device: dict[torch.device, list[Tensor]] = {}
        for p in partials:
            by_device.setdefault(p.device, []).append(p)
        values = [v for group in by_device.values() for v in (torch.cat(group) if len(group) > 1 else group[0]).tolist()]
        return [_host_sum(values[k::width]) for k in range(width)]

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
            "steps": [b.previous_step() if b.previous_is_snapshot else b.previous.clone() for b in self.buckets],
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
            b.previous.copy_(step)
            b.previous_is_snapshot = False
        self.previous_norm_sq = None if state["previous_norm_sq"] is None else float(state["previous_norm_sq"])
