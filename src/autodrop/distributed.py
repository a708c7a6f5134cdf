"""torch.distributed support: which rank counts which tensor, and the one all_reduce.

AutoDrop's decision needs three sums over the full parameter vector,
``<s_i, s_{i-1}>``, ``|s_i|^2`` and ``|s_{i-1}|^2``. Under torch.distributed
each rank holds only part of that vector, or a copy of it:

- a plain tensor (DDP, or any parameter outside a DTensor) is a full replica on
  every rank of the process group;
- a DTensor (FSDP2 ``fully_shard``, tensor parallel) holds ``to_local()`` on each
  rank of its device mesh: a shard along every mesh dimension placed
  ``Shard(d)``, a full copy along every dimension placed ``Replicate()``.

Every rank computes the sums over its local tensors, and one ``all_reduce(SUM)``
over the group adds them. A tensor must enter that sum exactly once, so each
local tensor is *counted* on one rank per replica set: a plain tensor only on
group rank 0, a DTensor only where its mesh coordinate is 0 along every
``Replicate()`` dimension. Counting is a selection, not a 1/replicas weight, so
the reduced sums are the single-process sums up to the order of additions and,
under DDP, exactly rank 0's sums on every rank: all ranks take the same decision
by construction.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ReplicaCounting", "dtensor_like", "is_dtensor", "local_tensor"]

dist = torch.distributed if torch.distributed.is_available() else None


def _dtensor_class() -> type | None:
    # A DTensor exists only once its module was imported, so looking it up in
    # sys.modules spares single-process users the import (seconds on a busy CPU).
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):  # public since torch 2.5
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "DTensor"):
            return module.DTensor
    return None


def is_dtensor(tensor: Tensor) -> bool:
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def dtensor_like(local: Tensor, param: Tensor) -> Tensor:
    """``local`` (shaped like this rank's shard of ``param``) as a DTensor with ``param``'s layout."""
    return _dtensor_class().from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def local_tensor(tensor: Tensor) -> Tensor:
    """The part of ``tensor`` this rank holds, detached: ``to_local()`` of a DTensor, else itself.

    Fetched anew at every use because FSDP2 may swap a parameter's local tensor
    (lazy initialisation, ``load_state_dict(assign=True)``).
    """
    tensor = tensor.detach()
    return tensor.to_local() if is_dtensor(tensor) else tensor


class ReplicaCounting:
    """Decides, per parameter, whether this rank counts it, and reduces the partial sums.

    ``process_group`` is the group the partial sums are added over (``None``: the default
    group when torch.distributed is initialized, else none); every DTensor's device
    mesh must span exactly its ranks. ``counted`` holds one bool per parameter: does
    this rank's local tensor enter the sum; ``group`` is ``None`` for a single process.
    """

    def __init__(self, params: Sequence[Tensor], process_group: Any = None) -> None:
        if process_group is not None:
            if dist is None or not dist.is_initialized():
                raise ValueError(f"process_group={process_group!r} was given but torch.distributed is not initialized")
            if not isinstance(process_group, dist.ProcessGroup):
                raise TypeError(
                    f"process_group must be a torch.distributed.ProcessGroup or None, got {process_group!r}"
                )
        elif dist is not None and dist.is_initialized():
            process_group = dist.group.WORLD
        self.group = process_group
        if self.group is None:
            if any(is_dtensor(p) for p in params):
                raise ValueError("DTensor parameters need an initialized torch.distributed process group")
            self.counted = [True] * len(params)
            self.world_size = 1
            return
        self.world_size = dist.get_world_size(self.group)
        group_rank = dist.get_rank(self.group)
        if group_rank < 0:
            raise ValueError("this rank is not a member of the process_group it was given")
        group_ranks = sorted(dist.get_process_group_ranks(self.group))
        self.counted = [
            self._counts_dtensor(index, p, group_ranks) if is_dtensor(p) else group_rank == 0
            for index, p in enumerate(params)
        ]

    @staticmethod
    def _counts_dtensor(index: int, param: Tensor, group_ranks: list[int]) -> bool:
        mesh = param.device_mesh
        mesh_ranks = sorted(mesh.mesh.flatten().tolist())
        if mesh_ranks != group_ranks:
            raise ValueError(
                f"parameter {index} is a DTensor on a device mesh of ranks {mesh_ranks}, but the sums "
                f"are reduced over the ranks {group_ranks}: pass process_group= with the mesh's ranks"
            )
        if any(placement.is_partial() for placement in param.placements):
            raise ValueError(
                f"parameter {index} has placements {tuple(param.placements)}: a Partial parameter "
                "has no value on any single rank; redistribute it to Shard or Replicate"
            )
        coordinate = mesh.get_coordinate()
        return all(coordinate[dim] == 0 for dim, placement in enumerate(param.placements) if placement.is_replicate())

    def all_reduce(self, totals: Tensor) -> Tensor:
        """Sum ``totals`` (this rank's counted partial sums) over the group; one collective."""
        if self.group is None or self.world_size == 1:
            return totals
        # An NCCL-only group cannot reduce a CPU tensor (buffers offloaded with
        # snapshot_device="cpu"); every other backend in use reduces in place.
        backend = str(dist.get_backend(self.group)).lower()
        if totals.device.type == "cpu" and "nccl" in backend and "cpu" not in backend and "gloo" not in backend:
            totals = totals.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=self.group)
        return totals
