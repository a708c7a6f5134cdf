"""AutoDrop under torch.distributed: DDP (default) or FSDP2 (--fsdp), CPU/gloo or CUDA/NCCL.

    torchrun --nproc_per_node=2 examples/torchrun_ddp.py [--fsdp] [--epochs 30] [--checkpoint DIR]

Nothing distributed is passed to AutoDrop: it finds the process group and, under
FSDP2, the DTensor shards itself. Each rank trains on its half of every global
batch; rank 0 prints the schedule, and at the end every rank's history is
compared. ``--checkpoint DIR`` saves model, optimizer and AutoDrop with
torch.distributed.checkpoint (DCP) at the end.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from autodrop import AutoDrop, ShardedState, TrendTest


def teacher_data(rows: int, features: int = 20, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A classification task from a random two-layer teacher, generated from a seed (no download)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=generator)
    hidden = torch.tanh(x @ torch.randn(features, 32, generator=generator))
    logits = hidden @ torch.randn(32, classes, generator=generator)
    return x, (logits + 0.5 * torch.randn(rows, classes, generator=generator)).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 fully_shard instead of DDP")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--checkpoint", help="directory for a DCP checkpoint written at the end")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)
    ).to(device)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = AutoDrop(optimizer, detector=TrendTest(max_wait=10), delay=3)  # a maximum wait sized for 30 epochs

    x, y = teacher_data(4096)
    x, y = x.to(device), y.to(device)
    if rank == 0:
        print(
            f"{'FSDP2' if args.fsdp else 'DDP'} on {world} ranks ({device.type}); {len(x)} rows, "
            f"global batch {args.batch}"
        )
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).to(device)
        total = torch.zeros((), device=device)
        for batch in order.split(args.batch):
            rows = batch.chunk(world)[rank]  # this rank's share of the global batch
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            total += loss.detach()
        scheduler.step()  # every rank, once per epoch: one small all_reduce inside
        record = scheduler.history[-1]
        if rank == 0:
            omega = "   -  " if record["omega"] is None else f"{record['omega']:6.2f}"
            event = record["event"] or ""
            print(
                f"epoch {epoch + 1:3d}  rank-0 loss {total.item() / len(order.split(args.batch)):.4f}  "
                f"omega {omega} deg  lr {record['lrs'][0]:.4g}  {event}"
            )

    histories = [None] * world
    dist.all_gather_object(histories, scheduler.history)
    local_bytes = scheduler.trajectory.buffer_bytes()
    all_bytes = [None] * world
    dist.all_gather_object(all_bytes, local_bytes)
    if rank == 0:
        same = all(h == histories[0] for h in histories)
        print(
            f"drops: {scheduler.num_drops}; history identical on all {world} ranks: {same}; "
            f"AutoDrop buffer bytes per rank: {all_bytes}"
        )

    if args.checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state, "autodrop": ShardedState(scheduler)},
            checkpoint_id=args.checkpoint,
        )
        if rank == 0:
            print(f"DCP checkpoint written to {args.checkpoint}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
