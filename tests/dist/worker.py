"""One rank of the distributed test world: DDP, FSDP2, DTensor meshes and DCP resume.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python worker.py OUT_DIR

All scenarios run in one process group (a spawn costs seconds); each rank writes
what it recorded to OUT_DIR/rank<r>.pt, and the tests compare ranks with each
other and with single-process references.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

import scenarios
from autodrop import AngularVelocity, ShardedState


def ddp(rank: int, build=scenarios.autodrop) -> dict:
    x, y = scenarios.ddp_data()
    model = DistributedDataParallel(scenarios.ddp_model())
    optimizer = scenarios.sgd(model.parameters())
    scheduler = build(optimizer)
    for epoch in range(scenarios.DDP_EPOCHS):
        for batch in scenarios.global_batches(epoch, len(x)):
            rows = scenarios.rank_rows(batch, rank)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
            optimizer.step()
        scheduler.step()

    # Parameters that differ between ranks still give one decision: rank 0's sums.
    probe = torch.zeros(12)
    velocity = AngularVelocity([probe])
    probe_omegas = []
    for step in scenarios.probe_steps(rank):
        probe.add_(step)
        probe_omegas.append(velocity.update())
    return {
        "history": scheduler.history,
        "params": [p.detach().clone() for p in model.module.parameters()],
        "probe_omegas": probe_omegas,
    }


def shard(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def train_fsdp_epoch(model, optimizer, x, y, epoch: int, rank: int) -> None:
    for batch in scenarios.global_batches(epoch, len(x)):
        rows = scenarios.rank_rows(batch, rank)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        optimizer.step()


def full_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor() for p in model.parameters()]


def fsdp(rank: int, single_rank_group) -> dict:
    """FSDP2 training, checked every interval against a single-process AutoDrop on the full parameters."""
    x, y = scenarios.fsdp_data()
    model = shard(scenarios.fsdp_model())
    optimizer = scenarios.sgd(model.parameters())
    scheduler = scenarios.autodrop(optimizer)
    reference = scenarios.fsdp_model()
    reference_scheduler = scenarios.autodrop(scenarios.sgd(reference.parameters()), process_group=single_rank_group)
    omegas, averaged, window_bytes = [], [], 0
    for epoch in range(scenarios.FSDP_EPOCHS):
        train_fsdp_epoch(model, optimizer, x, y, epoch, rank)
        with torch.no_grad():
            for target, full in zip(reference.parameters(), full_params(model), strict=True):
                target.copy_(full)
        reference_scheduler.step()
        scheduler.step()
        omegas.append((scheduler.omega, reference_scheduler.omega))
        window_bytes = max(window_bytes, scheduler.buffer_bytes() - scheduler.trajectory.buffer_bytes())
        if scheduler.history[-1]["event"] == "drop":
            with torch.no_grad():
                probe = x[:16]
                averaged.append(
                    {
                        "sharded": full_params(model),
                        "reference": [p.detach().clone() for p in reference.parameters()],
                        "output": model(probe).detach(),
                        "reference_output": reference(probe),
                    }
                )
    local_numel = sum(p.to_local().numel() for p in model.parameters())
    return {
        "history": scheduler.history,
        "params": full_params(model),
        "omegas": omegas,
        "events": [r["event"] for r in scheduler.history],
        "reference_events": [r["event"] for r in reference_scheduler.history],
        "averaged": averaged,
        "buffer_bytes": scheduler.trajectory.buffer_bytes(),
        "window_bytes": window_bytes,
        "reference_buffer_bytes": reference_scheduler.trajectory.buffer_bytes(),
        "local_numel": local_numel,
        "numel": sum(p.numel() for p in model.parameters()),
    }


def meshes(rank: int) -> dict:
    """Shard(0), Replicate() and plain tensors in one trajectory, on a 1-D and a (2, 1) mesh."""
    mesh = init_device_mesh("cpu", (scenarios.WORLD_SIZE,))
    mesh_2d = init_device_mesh("cpu", (scenarios.WORLD_SIZE, 1))
    generator = torch.Generator().manual_seed(7)
    fulls = {
        "shard": torch.randn(5, 3, generator=generator),
        "replicate": torch.randn(4, generator=generator),
        "plain": torch.randn(2, 2, generator=generator),
        "replicate_shard_2d": torch.randn(3, 2, generator=generator),
        "shard_replicate_2d": torch.randn(3, generator=generator),
    }
    placements = {
        "shard": (mesh, [Shard(0)]),
        "replicate": (mesh, [Replicate()]),
        "replicate_shard_2d": (mesh_2d, [Replicate(), Shard(0)]),
        "shard_replicate_2d": (mesh_2d, [Shard(0), Replicate()]),
    }

    def place(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if name not in placements:
            return tensor.clone()
        device_mesh, placement = placements[name]
        return distribute_tensor(tensor, device_mesh, placement)

    params = {name: place(name, tensor) for name, tensor in fulls.items()}
    velocity = AngularVelocity(params.values())
    sums = None
    counted = dict(zip(params, velocity.trajectory.counting.counted, strict=True))
    trajectory = [{name: t.clone() for name, t in fulls.items()}]
    omegas = []
    for step in range(5):
        # The same global step on every rank; the replicated tensors move most.
        scale = {"shard": 0.1, "replicate": 1.0, "plain": 0.5, "replicate_shard_2d": 0.7, "shard_replicate_2d": 0.2}
        for name, full in fulls.items():
            delta = scale[name] * torch.randn(full.shape, generator=generator)
            full.add_(delta)
            with torch.no_grad():
                target = params[name]
                if name in placements:
                    target.to_local().add_(place(name, delta).to_local())
                else:
                    target.add_(delta)
        trajectory.append({name: t.clone() for name, t in fulls.items()})
        omegas.append(velocity.update())
        if step == 3:
            sums = velocity.trajectory.zeros()
        if sums is not None:
            torch._foreach_add_(sums, velocity.trajectory.snapshots(), alpha=float(step - 2))
    velocity.trajectory.write_params(sums, 3.0)  # x := (1 x_4 + 2 x_5) / 3, written into every placement's local tensor
    averaged = {name: p.full_tensor() if name in placements else p.clone() for name, p in params.items()}
    return {"omegas": omegas, "trajectory": trajectory, "counted": counted, "averaged": averaged}


def faults(rank: int) -> dict:
    """A NaN in rank 1's shard only: every rank skips the interval, and no buffer changes anywhere."""
    mesh = init_device_mesh("cpu", (scenarios.WORLD_SIZE,))
    generator = torch.Generator().manual_seed(11)
    param = torch.nn.Parameter(distribute_tensor(torch.zeros(6, dtype=torch.float64), mesh, [Shard(0)]))
    scheduler = scenarios.autodrop(torch.optim.SGD([param], lr=0.1), on_nonfinite="skip")
    steps = [torch.randn(6, generator=generator, dtype=torch.float64) for _ in range(4)]

    def move(step: torch.Tensor) -> None:
        with torch.no_grad():
            param.to_local().add_(distribute_tensor(step, mesh, [Shard(0)]).to_local())
        scheduler.step()

    def buffers() -> list[torch.Tensor]:
        return [t.clone() for b in scheduler.trajectory.buckets for t in (b.snapshot, b.previous)]

    for step in steps[:2]:
        move(step)
    before, good = buffers(), param.to_local().clone()
    with torch.no_grad():
        if rank == 1:
            param.to_local()[0] = float("nan")
    scheduler.step()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, buffers(), strict=True))
    with torch.no_grad():
        param.to_local().copy_(good)
    for step in steps[2:]:
        move(step)
    return {"history": scheduler.history, "unchanged": unchanged}


def errors(single_rank_group) -> dict:
    """The messages of the arguments ReplicaCounting refuses."""
    mesh = init_device_mesh("cpu", (scenarios.WORLD_SIZE,))
    cases = {
        "partial": lambda: AngularVelocity([DTensor.from_local(torch.zeros(3), mesh, [Partial()])]),
        "mesh_outside_group": lambda: AngularVelocity(
            [distribute_tensor(torch.zeros(4), mesh, [Shard(0)])], process_group=single_rank_group
        ),
        "not_a_group": lambda: AngularVelocity([torch.zeros(2)], process_group="world"),
    }
    messages = {}
    for name, build in cases.items():
        try:
            build()
        except (TypeError, ValueError) as error:
            messages[name] = f"{type(error).__name__}: {error}"
    return messages


def resume(rank: int, out_dir: Path, uninterrupted: dict) -> dict:
    """A checkpoint inside a delay window, resumed by DCP and by per-rank files, continues identically.

    ``uninterrupted`` is the FSDP2 scenario's run, which this one repeats with an interruption.
    """
    x, y = scenarios.fsdp_data()

    def build(seed: int):
        model = shard(scenarios.fsdp_model(seed))
        optimizer = scenarios.sgd(model.parameters())
        return model, optimizer, scenarios.autodrop(optimizer)

    def run(model, optimizer, scheduler, epochs: range) -> None:
        for epoch in epochs:
            train_fsdp_epoch(model, optimizer, x, y, epoch, rank)
            scheduler.step()

    triggers = [r["interval"] for r in uninterrupted["history"] if r["event"] == "trigger"]
    stop = triggers[0] + 1

    model, optimizer, scheduler = build(2)
    run(model, optimizer, scheduler, range(stop))
    pending_at_save = scheduler.pending and scheduler.sums is not None
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state, "autodrop": ShardedState(scheduler)},
        checkpoint_id=str(out_dir / "dcp"),
    )
    per_rank_file = out_dir / f"autodrop-rank{rank}.pt"
    torch.save(scheduler.state_dict(), per_rank_file)

    resumed = {}
    for route in ("dcp", "per_rank"):
        model, optimizer, scheduler = build(11)  # other weights: the checkpoint must overwrite them
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        if route == "dcp":
            state["autodrop"] = ShardedState(scheduler)
        dcp.load(state, checkpoint_id=str(out_dir / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if route == "per_rank":
            scheduler.load_state_dict(torch.load(per_rank_file, weights_only=True))
        run(model, optimizer, scheduler, range(stop, scenarios.FSDP_EPOCHS))
        resumed[route] = {"history": scheduler.history, "params": full_params(model)}
    return {"resumed": resumed, "stop": stop, "pending_at_save": pending_at_save}


def main() -> None:
    out_dir = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    single_rank_groups = [dist.new_group([r]) for r in range(dist.get_world_size())]
    results = {"ddp": ddp(rank), "ddp_trend": ddp(rank, scenarios.autodrop_trend), "fsdp": fsdp(rank, single_rank_groups[rank]), "meshes": meshes(rank)}
    results["resume"] = resume(rank, out_dir, results["fsdp"])
    results["errors"] = errors(single_rank_groups[rank])
    results["faults"] = faults(rank)
    torch.save(results, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
