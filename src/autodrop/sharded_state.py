"""torch.distributed.checkpoint (DCP) support for sharded AutoDrop state.

``AutoDrop.state_dict()`` holds this rank's flat buffers (snapshot, previous step,
averaging sum): ``torch.save`` it once per rank and load each rank's file into a
run with the same world size and sharding. DCP cannot take that dict as it is:
it treats a plain tensor saved under the same key on every rank as a replica and
keeps one copy, which is right for DDP and wrong for shards.

:class:`ShardedState` gives DCP the buffers the way it understands them: one
tensor per parameter, a DTensor with the parameter's own device mesh, placements
and global shape when the parameter is a DTensor (DCP stores each shard once and
can reshard on load), the plain local tensor otherwise (a replica). The averaging
sum is always saved (zeros outside a delay window), and everything else (counters,
thresholds, history) travels as one opaque blob, so a fresh scheduler's state is a
valid template for ``dcp.load`` whatever was recorded.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor

from .checks import check_bool, check_keys
from .distributed import dtensor_like, is_dtensor, local_tensor
from .scheduler import AutoDrop
from .velocity import AngularVelocity

__all__ = ["ShardedState"]

_BUFFERS = (("snapshot", "snapshots"), ("step", "steps"))


class ShardedState:
    """A DCP ``Stateful`` view of ``owner``, an :class:`AutoDrop` or :class:`AngularVelocity`, for the dict
    given to ``torch.distributed.checkpoint.save`` and ``load``.

    Example (every rank)::

        import torch.distributed.checkpoint as dcp
        dcp.save({"autodrop": ShardedState(scheduler)}, checkpoint_id=path)
        ...
        dcp.load({"autodrop": ShardedState(scheduler)}, checkpoint_id=path)
    """

    def __init__(self, owner: AutoDrop | AngularVelocity) -> None:
        if not isinstance(owner, (AutoDrop, AngularVelocity)):
            raise TypeError(f"owner must be an AutoDrop or an AngularVelocity, got {type(owner).__name__}")
        self.owner = owner

    def state_dict(self) -> dict[str, Any]:
        """``{"buffers": {name: {param index: tensor}}, "meta": bytes}``."""
        state = self.owner.state_dict()
        trajectory = self.owner.trajectory
        buffers = {name: self._per_parameter(state["trajectory"].pop(key)) for name, key in _BUFFERS}
        if isinstance(self.owner, AutoDrop):
            sums = state.pop("sums")
            state["active"] = sums is not None
            buffers["sum"] = self._per_parameter(trajectory.zeros() if sums is None else sums)
        meta = io.BytesIO()
        torch.save(state, meta)
        return {"buffers": buffers, "meta": meta.getvalue()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`'s layout, as filled in by ``dcp.load``; a malformed one
        raises a ``ValueError``/``TypeError``/``KeyError`` naming what is wrong and changes nothing."""
        check_keys("sharded state", state_dict, ("buffers", "meta"))
        names = [name for name, _ in _BUFFERS] + (["sum"] if isinstance(self.owner, AutoDrop) else [])
        buffers = state_dict["buffers"]
        check_keys("sharded state['buffers']", buffers, names)
        for name in names:
            if not isinstance(buffers[name], dict):
                raise TypeError(
                    f"sharded state['buffers'][{name!r}] must be a dict of tensors, got {type(buffers[name]).__name__}"
                )
        if not isinstance(state_dict["meta"], (bytes, bytearray)):
            raise TypeError(f"sharded state['meta'] must be bytes, got {type(state_dict['meta']).__name__}")
        try:
            state = torch.load(io.BytesIO(state_dict["meta"]), weights_only=True)
        except Exception as error:
            raise ValueError(f"sharded state['meta'] cannot be read: {error}") from None
        if not isinstance(state, dict) or not isinstance(state.get("trajectory"), dict):
            raise TypeError("sharded state['meta'] must hold a state dict with a 'trajectory' dict")
        for name, key in _BUFFERS:
            state["trajectory"][key] = self._flat(name, buffers[name])
        if isinstance(self.owner, AutoDrop):
            active = check_bool("sharded state['meta']['active']", state.pop("active", None))
            state["sums"] = self._flat("sum", buffers["sum"]) if active else None
        self.owner.load_state_dict(state)

    def _per_parameter(self, flats: list[Tensor]) -> dict[str, Tensor]:
        trajectory = self.owner.trajectory
        return {
            str(index): dtensor_like(view, param) if is_dtensor(param) else view
            for index, (param, view) in enumerate(zip(trajectory.params, trajectory.views(flats)))
        }

    def _flat(self, name: str, tensors: dict[str, Tensor]) -> list[Tensor]:
        trajectory = self.owner.trajectory
        flats = [torch.empty_like(s) for s in trajectory.snapshots()]
        for index, view in enumerate(trajectory.views(flats)):
            key = str(index)
            if key not in tensors:
                raise ValueError(f"checkpoint has no {name} buffer for parameter {key}")
            if not isinstance(tensors[key], Tensor):
                raise TypeError(f"checkpoint {name} buffer of parameter {key} must be a tensor")
            saved = local_tensor(tensors[key])
            if saved.shape != view.shape:
                raise ValueError(
                    f"checkpoint {name} buffer of parameter {key} is {tuple(saved.shape)} on this "
                    f"rank, the parameter's local shard is {tuple(view.shape)}"
                )
            view.copy_(saved)
        return flats
