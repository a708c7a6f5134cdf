"""The parameter trajectory: the last snapshot, the last step, and the inner products of steps.

Once per measurement interval i AutoDrop needs three sums over all parameters at
once: ``<s_i, s_{i-1}>``, ``|s_i|^2`` and ``|s_{i-1}|^2``. Two parameter-sized
buffers hold what that needs, the snapshot ``x_{i-1}`` and the previous step, kept
negated: ``d_i = x_{i-1} - x_i = -s_i`` has the same inner products and norms.

Layout: parameters are grouped into buckets by (device, dtype, counted). A
bucket's two flat buffers hold its parameters' elements in order, in
``promote_types(dtype, float32)`` (so fp16/bf16 parameters are measured in fp32).
Measuring works chunk by chunk, at most :data:`CPU_REDUCTION_CHUNK` (CPU) or
:data:`REDUCTION_CHUNK` elements at a time: a chunk is a run of whole small
parameters, gathered by one ``torch.cat``, or a piece of one large parameter,
used as a view. No flat copy of the model is ever made.

A step is two passes, and nothing is written before the host has seen its sums:

1. :meth:`ParameterTrajectory.measure` reads only: per chunk it forms
   ``d = snapshot - x_i`` in a chunk-sized work tensor and takes ``<d, d_{i-1}>``
   and ``|d|^2`` with float64 products; the chunks' partial sums go to the host
   once per device (the only synchronisation) and are added exactly (``math.fsum``).
2. :meth:`ParameterTrajectory.commit`, for a finite nonzero step only, writes
   piece by piece ``previous := snapshot - x_i`` (the same subtraction of the
   same values as in the first pass: the same bits) and ``snapshot := x_i``. It
   allocates nothing (nor does :meth:`ParameterTrajectory.write_params` once its
   scratch exists), so only a device fault can stop a write halfway.

A step with a NaN/Inf, or a zero step (nothing moved: all frozen, or lr 0), is not
committed: the next interval is measured from the same snapshot against the
last nonzero step. The buffers are finite by construction, so a non-finite sum
means non-finite current parameters, or a step beyond what float64 squares hold.
The products are float64, so omega matches a float64 reference at any angle
(also within a few thousandths of a degree of 0 or 180, where ``arccos``
magnifies the error of fp32 products a thousandfold). The measurable range:
steps whose elements' squares are normal float64 numbers, about
``1e-154 < |d_j| < 1e154`` (steps of 1e-40 or 1e20 are measured); a larger step
is reported as ``"nonfinite"``, a step of smaller elements as ``"zero_step"``.

Under torch.distributed the buckets hold each rank's local tensors (``to_local()``
of a DTensor, a view of it that write_params writes into); the counted buckets'
partial sums are added in float64 on the device and over the process group in one
``all_reduce`` (see :mod:`autodrop.distributed` for which rank counts which tensor).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .checks import check_device, check_int, check_keys, check_list, check_optional_real, check_tensors_like
from .distributed import ReplicaCounting, is_dtensor, local_tensor

__all__ = ["CPU_REDUCTION_CHUNK", "REDUCTION_CHUNK", "Measurement", "ParameterTrajectory", "StepStatistics"]

REDUCTION_CHUNK = 1 << 22
"""Elements per chunk on accelerators: a chunk's few kernels run longer than their launches take."""
CPU_REDUCTION_CHUNK = 1 << 17
"""Elements per chunk on CPU: the chunk's work tensors (fp32 gather, float64 products) stay in cache."""

NONFINITE = "nonfinite"
ZERO_STEP = "zero_step"
MEASURABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class StepStatistics:
    """Sums for one step ``s_i``: ``dot`` = ``<s_i, s_{i-1}>`` and ``previous_norm_sq`` = ``|s_{i-1}|^2``
    (both ``None`` for the first step); ``fault``: ``"nonfinite"``, ``"zero_step"`` or ``None``."""

    norm_sq: float
    dot: float | None
    previous_norm_sq: float | None
    fault: str | None = None


@dataclass(frozen=True)
class Measurement:
    """A measured step, ready to :meth:`ParameterTrajectory.commit`: its sums and the
    chunks of ``x_i`` it was measured on (views of the parameters, valid until they change)."""

    statistics: StepStatistics
    pieces: list[list[list[Tensor]]] = field(repr=False)


def _check_params(params: Iterable[Tensor]) -> list[Tensor]:
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors (e.g. model.parameters()), got a single tensor")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}") from None
    if not params:
        raise ValueError("params is empty: there is no trajectory to measure")
    for index, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{index}] must be a tensor, got {type(p).__name__}")
        local = local_tensor(p)
        if local.dtype not in MEASURABLE_DTYPES:
            raise TypeError(
                f"params[{index}] is {local.dtype}; AutoDrop measures float16, bfloat16, float32 and float64 "
                "parameters (keep other tensors out of the optimizer's param groups given to it)"
            )
        if local.layout != torch.strided:
            raise TypeError(f"params[{index}] has layout {local.layout}; only dense (strided) tensors can be measured")
        if local.device.type == "meta":
            raise ValueError(f"params[{index}] is on the meta device: materialize the model before building AutoDrop")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params contains the same tensor more than once")
    return params


class _Bucket:
    """Parameters of one (device, dtype, counted); ``snapshot`` = ``x_{i-1}``, ``previous`` = ``d_{i-1}``."""

    def __init__(self, params: list[Tensor], device: torch.device, counted: bool) -> None:
        self.params = params
        self.counted = counted
        local = [local_tensor(p) for p in params]
        self.shapes = [t.shape for t in local]
        self.full_shapes = [list(p.shape) for p in params]  # of a DTensor: its global shape
        self.param_dtype = local[0].dtype
        self.dtype = torch.promote_types(self.param_dtype, torch.float32)
        self.numels = [shape.numel() for shape in self.shapes]
        self.numel = sum(self.numels)
        self.snapshot = torch.empty(self.numel, dtype=self.dtype, device=device)
        self.previous = torch.zeros(self.numel, dtype=self.dtype, device=device)
        self.chunk_size = REDUCTION_CHUNK if device.type != "cpu" else CPU_REDUCTION_CHUNK
        self.chunks = self._chunk_plan(self.chunk_size)
        self.offloaded = device != local[0].device
        self.sharded = any(is_dtensor(p) for p in params)

    def _chunk_plan(self, size: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
        """The chunks: flat ranges ``[start, stop)`` of at most ``size`` elements, each with the
        ``(param index, first, last)`` element ranges of the parameters it covers."""
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

    def current(self, which: str) -> list[Tensor]:
        """``x_i``: this rank's part of each parameter, on the buffers' device (checked against its shape)."""
        tensors = self.local_params()
        for tensor, shape in zip(tensors, self.shapes):
            if tensor.shape != shape or tensor.dtype != self.param_dtype:
                raise ValueError(
                    f"{which}: a parameter of shape {tuple(shape)} {self.param_dtype} is now "
                    f"{tuple(tensor.shape)} {tensor.dtype} (its .data was replaced); AutoDrop measures the "
                    "parameters it was built with: build a new AutoDrop for the new shapes"
                )
        return [t.to(self.snapshot.device) for t in tensors] if self.offloaded else tensors

    def local_params(self) -> list[Tensor]:
        """This rank's part of each parameter; unsharded, the parameters themselves (passes run under ``no_grad``)."""
        return [local_tensor(p) for p in self.params] if self.sharded else self.params

    def pieces(self, tensors: list[Tensor]) -> list[list[Tensor]]:
        """Per chunk, the 1-D pieces of ``tensors`` it covers (views, or copies of non-contiguous tensors)."""
        flat = [t.reshape(-1) for t in tensors]
        return [
            [flat[i] if first == 0 and last == flat[i].numel() else flat[i][first:last] for i, first, last in covered]
            for _, _, covered in self.chunks
        ]

    def measure(self, pieces: list[list[Tensor]]) -> Tensor:
        """Per chunk ``<d, d_{i-1}>`` and ``|d|^2`` (float64 products), flat; writes no buffer."""
        if self.numel == 0:  # an empty local shard
            return torch.zeros(2, dtype=torch.float64, device=self.snapshot.device)
        size = min(self.numel, self.chunk_size)
        step = torch.empty(size, dtype=torch.float64, device=self.snapshot.device)
        previous = step if self.dtype == torch.float64 else torch.empty_like(step)
        gathered = None
        products = []
        for (start, stop, _), chunk in zip(self.chunks, pieces):
            # x_i's chunk: a piece as it is, or a run of whole parameters gathered into a work tensor.
            if len(chunk) > 1 and gathered is None:
                gathered = torch.empty(size, dtype=self.dtype, device=self.snapshot.device)
            now = chunk[0] if len(chunk) == 1 else torch.cat(chunk, out=gathered[: stop - start])
            # In the buffer dtype, exact in float64.
            d = torch.sub(self.snapshot[start:stop], now, out=step[: stop - start])
            d_previous = self.previous[start:stop]
            if previous is not step:
                d_previous = previous[: stop - start].copy_(d_previous)
            products += [torch.dot(d, d_previous), torch.dot(d, d)]
        return torch.stack(products)

    def commit(self, pieces: list[list[Tensor]], total: Tensor | None, weight: float) -> None:
        """``total += weight x_i`` (when given), ``previous := snapshot - x_i`` and ``snapshot := x_i``."""
        for (start, _, _), chunk in zip(self.chunks, pieces):
            for now in chunk:
                stop = start + now.numel()
                if total is not None:
                    total[start:stop].add_(now, alpha=weight)
                torch.sub(self.snapshot[start:stop], now, out=self.previous[start:stop])
                self.snapshot[start:stop].copy_(now)
                start = stop

    def work_tensor(self) -> Tensor:
        """The scratch :meth:`write` needs: a chunk, or the largest non-contiguous parameter (written whole)."""
        whole = [t.numel() for t in self.local_params() if not t.is_contiguous()]
        return torch.empty(
            max([min(self.numel, self.chunk_size), *whole]), dtype=self.dtype, device=self.snapshot.device
        )

    def write(self, flat: Tensor, divisor: float, work: Tensor) -> None:
        """``params := flat / divisor`` (this rank's parts) and ``snapshot := params``, through ``work``
        (from :meth:`work_tensor`); ``flat`` is not changed and nothing is allocated."""
        for tensor, view, snapshot in zip(self.local_params(), self.views(flat), self.views(self.snapshot)):
            size = work.numel() if tensor.is_contiguous() else tensor.numel()
            for first in range(0, tensor.numel(), max(size, 1)):
                last = min(first + size, tensor.numel())
                target = tensor.view(-1)[first:last] if tensor.is_contiguous() else tensor
                scratch = work[: last - first].view(target.shape)
                torch.div(view.reshape(-1)[first:last].view(target.shape), divisor, out=scratch)
                target.copy_(scratch)
                snapshot.view(-1)[first:last].view(target.shape).copy_(target)

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` shaped like the parameters, in order."""
        return [piece.view(shape) for piece, shape in zip(flat.split(self.numels), self.shapes)]


def _host_sum(values: list[float]) -> float:
    """``math.fsum``, or where that refuses (opposite infinities, overflow) the plain sum, not finite either."""
    try:
        return math.fsum(values)
    except (ValueError, OverflowError):
        return sum(values)


class ParameterTrajectory:
    """Snapshot of the parameters and the last step, kept in flat per-bucket buffers.

    Memory held: two copies of the parameters (in at least fp32), on ``snapshot_device``
    when given, else beside each parameter; of DTensor parameters, this rank's shards
    only. Every method that changes the buffers runs under ``torch.no_grad()`` and
    outside inference mode. The arguments are :class:`autodrop.AngularVelocity`'s;
    ``params`` is every parameter the optimizer updates (a frozen one's step is zero).
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
        buckets: dict[tuple[torch.device, torch.dtype, bool], list[Tensor]] = {}
        for p, counted in zip(self.params, self.counting.counted, strict=True):
            buckets.setdefault((p.device, p.dtype, counted), []).append(p)
        self.buckets = [
            _Bucket(members, device if self.snapshot_device is None else self.snapshot_device, counted)
            for (device, _, counted), members in buckets.items()
        ]
        self.previous_norm_sq: float | None = None
        self.snapshot_current()
        if not all(torch.isfinite(s).all() for s in self.snapshots()):
            raise ValueError("params contain NaN or Inf: the first snapshot x_0 must be finite")

    @torch.inference_mode(False)
    @torch.no_grad()
    def with_params(
        self, params: Iterable[Tensor], sums: Sequence[Tensor] | None, weight: float
    ) -> tuple[ParameterTrajectory, list[Tensor] | None]:
        """A new trajectory over ``params`` (e.g. after a param group was added), and ``sums`` (an open
        averaging window's flat sums of total weight ``weight``) laid out for it; nothing here changes.

        Every tracked tensor among ``params`` keeps its snapshot, previous step and sum; a new one
        starts at its current value with a zero previous step (its step is zero in the interval it
        joins) and, inside a window, counts as having stayed at that value: its sum is ``weight x_0``.
        """
        old = {id(p): views for p, *views in zip(self.params, *map(self.views, self._held(sums)))}
        joined = ParameterTrajectory(params, self.snapshot_device, self.process_group)
        joined.previous_norm_sq = self.previous_norm_sq
        new_sums = None if sums is None else [torch.empty_like(s) for s in joined.snapshots()]
        for p, *views in zip(joined.params, *map(joined.views, joined._held(new_sums))):
            if id(p) in old:
                for view, saved in zip(views, old[id(p)]):
                    view.copy_(saved)
            elif new_sums is not None:
                torch.mul(views[0], weight, out=views[2])
        return joined, new_sums

    def _held(self, sums: Sequence[Tensor] | None) -> list[Sequence[Tensor]]:
        """The flat buffers per bucket: snapshots, previous steps, and ``sums`` when given."""
        held = [self.snapshots(), [b.previous for b in self.buckets]]
        return held if sums is None else [*held, sums]

    def views(self, flats: Sequence[Tensor]) -> list[Tensor]:
        """Views of flat per-bucket vectors laid out like the snapshots, one per parameter in :attr:`params` order."""
        by_param = {
            id(p): view for b, flat in zip(self.buckets, flats, strict=True) for p, view in zip(b.params, b.views(flat))
        }
        return [by_param[id(p)] for p in self.params]

    def zeros(self) -> list[Tensor]:
        """Flat per-bucket zeros laid out like the snapshots (an averaging window's empty sums)."""
        return [torch.zeros_like(s) for s in self.snapshots()]

    def buffer_bytes(self) -> int:
        """Bytes held in the snapshot and step buffers."""
        return sum(2 * b.snapshot.numel() * b.snapshot.element_size() for b in self.buckets)

    @torch.inference_mode(False)
    @torch.no_grad()
    def snapshot_current(self) -> None:
        """Take the current parameters as the snapshot; the previous step is kept."""
        for b in self.buckets:
            for snapshot, now in zip(b.views(b.snapshot), b.current("snapshot_current")):
                snapshot.copy_(now)

    @torch.inference_mode(False)
    @torch.no_grad()
    def measure(self) -> Measurement:
        """Reduce the new step ``d_i = x_{i-1} - x_i``; changes nothing. Raises a ``ValueError`` when a
        parameter's shape or dtype changed since it was tracked."""
        pieces = [b.pieces(b.current("measure")) for b in self.buckets]
        dot, norm_sq = self._sum([b.measure(bucket_pieces) for b, bucket_pieces in zip(self.buckets, pieces)])
        fault = None
        if not (math.isfinite(dot) and math.isfinite(norm_sq)):
            fault = NONFINITE
        elif norm_sq == 0:
            fault = ZERO_STEP
        had_step = self.previous_norm_sq is not None
        statistics = StepStatistics(norm_sq, dot if had_step else None, self.previous_norm_sq, fault)
        return Measurement(statistics, pieces)

    @torch.inference_mode(False)
    @torch.no_grad()
    def commit(self, measurement: Measurement, totals: Sequence[Tensor] | None = None, weight: float = 0.0) -> None:
        """Take a measured finite, nonzero step (else do nothing); with ``totals`` (flat per-bucket sums laid
        out like the snapshots) also ``total += weight x_i``, in the same pass."""
        if measurement.statistics.fault is not None:
            return
        totals = [None] * len(self.buckets) if totals is None else totals
        for b, bucket_pieces, total in zip(self.buckets, measurement.pieces, totals, strict=True):
            b.commit(bucket_pieces, total, weight)
        self.previous_norm_sq = measurement.statistics.norm_sq

    def _sum(self, partials: list[Tensor]) -> list[float]:
        """The chunks' partial sums ``[dot, norm_sq]`` added over chunks, buckets and ranks, on the host."""
        if self.counting.world_size > 1:
            device = partials[0].device
            counted = [p.view(-1, 2).sum(0).to(device) for p, b in zip(partials, self.buckets) if b.counted]
            total = torch.stack(counted).sum(0) if counted else torch.zeros(2, dtype=torch.float64, device=device)
            return self.counting.all_reduce(total).tolist()
        by_device: dict[torch.device, list[Tensor]] = {}
        for p in partials:
            by_device.setdefault(p.device, []).append(p)
        values = [v for group in by_device.values() for v in torch.cat(group).tolist()]
        return [_host_sum(values[0::2]), _host_sum(values[1::2])]

    def snapshots(self) -> list[Tensor]:
        """The flat snapshot buffer of each bucket (the parameters at the last measurement)."""
        return [b.snapshot for b in self.buckets]

    @torch.inference_mode(False)
    @torch.no_grad()
    def write_params(self, flats: Sequence[Tensor], divisor: float = 1.0) -> None:
        """Write ``flat / divisor`` (flat per-bucket vectors laid out like the snapshots) into the
        parameters, and take them as the snapshot. ``flats`` are not changed; the scratch it needs is
        allocated before the first write."""
        works = [b.work_tensor() for b in self.buckets]
        for b, flat, work in zip(self.buckets, flats, works, strict=True):
            b.write(flat, divisor, work)

    def state_dict(self) -> dict:
        return {
            "snapshots": [b.snapshot.clone() for b in self.buckets],
            "steps": [b.previous.clone() for b in self.buckets],
            "shapes": [[list(shape) for shape in b.full_shapes] for b in self.buckets],
            "previous_norm_sq": self.previous_norm_sq,
        }

    def check_state(self, state: Any, name: str = "trajectory state") -> None:
        """Raise if ``state`` does not fit these parameters, parameter by parameter; changes nothing.

        ``shapes`` are the parameters' full shapes (of a DTensor: the global one), so that a state
        of another model with the same number of elements is refused; the buffers are this rank's part.
        """
        check_keys(name, state, ("snapshots", "steps", "shapes", "previous_norm_sq"))
        buffers = self.snapshots()
        check_tensors_like(f"{name}['snapshots']", state["snapshots"], buffers)
        check_tensors_like(f"{name}['steps']", state["steps"], buffers)
        shapes = check_list(f"{name}['shapes']", state["shapes"], len(self.buckets))
        for index, (bucket_shapes, b) in enumerate(zip(shapes, self.buckets)):
            where = f"{name}['shapes'][{index}]"
            saved = [
                [check_int(f"{where}[{i}][{d}]", size, 0) for d, size in enumerate(check_list(f"{where}[{i}]", shape))]
                for i, shape in enumerate(check_list(where, bucket_shapes))
            ]
            if saved != b.full_shapes:
                raise ValueError(
                    f"{where} is {saved!r}, but the parameters measured here have shapes "
                    f"{b.full_shapes!r}: the state belongs to another model"
                )
        previous = check_optional_real(f"{name}['previous_norm_sq']", state["previous_norm_sq"], "(0, inf)")
        if self.counting.world_size > 1:
            return  # the steps are this rank's shards; previous_norm_sq is the sum over all ranks
        stored = sum(float(torch.dot(s.reshape(-1).double(), s.reshape(-1).double())) for s in state["steps"])
        if previous is None and stored != 0:
            raise ValueError(f"{name}['previous_norm_sq'] is None but the stored steps are nonzero")
        if previous is not None and not math.isclose(stored, previous, rel_tol=1e-4):
            raise ValueError(f"{name}['previous_norm_sq'] is {previous!r} but the stored steps have |d|^2 = {stored!r}")

    @torch.inference_mode(False)
    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Check ``state`` completely (:meth:`check_state`), then apply it."""
        self.check_state(state)
        for b, snapshot, step in zip(self.buckets, state["snapshots"], state["steps"]):
            b.snapshot.copy_(snapshot)
            b.previous.copy_(step)
        self.previous_norm_sq = None if state["previous_norm_sq"] is None else float(state["previous_norm_sq"])
