"""A plain PyTorch loop with no epoch budget: train until AutoDrop says the run has converged.

AutoDrop drops the LR at most ``--max-drops`` times; the next time omega
saturates, the parameters are averaged over the last window and
``scheduler.converged`` becomes True. ``--epochs`` is only a cap. With
``--checkpoint`` every epoch is saved (atomically) and a rerun resumes from it,
a converged checkpoint included (the loop then ends at once).

    pip install 'autodrop[bench]'
    python examples/train_until_converged.py --checkpoint /tmp/until_converged.pt
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from autodrop import AutoDrop
from autodrop.apps.bench.tasks import mnist1d_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-drops", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=300, help="a cap, not a budget")
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--delay", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, x_test, y_test = mnist1d_tensors(args.samples)
    model = torch.nn.Sequential(
        torch.nn.Linear(40, 100), torch.nn.ReLU(), torch.nn.Linear(100, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = AutoDrop(optimizer, max_drops=args.max_drops, delay=args.delay)
    generator = torch.Generator().manual_seed(0)
    if args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        print(f"resumed after epoch {scheduler.last_epoch}")

    while not scheduler.converged and scheduler.last_epoch < args.epochs:
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        scheduler.step()
        record = scheduler.history[-1]
        if record["event"] in ("drop", "converged"):
            print(f"epoch {record['interval']:3d}: {record['event']}, lr {record['lrs'][0]:.2e}")
        if args.checkpoint is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
            }
            torch.save(state, args.checkpoint.with_suffix(".tmp"))
            os.replace(args.checkpoint.with_suffix(".tmp"), args.checkpoint)

    with torch.no_grad():
        error = (model(x_test).argmax(1) != y_test).float().mean().item()
    status = "converged" if scheduler.converged else "stopped at the --epochs cap"
    print(f"{status} after {scheduler.last_epoch} epochs ({scheduler.num_drops} drops); test error {100 * error:.2f}%")


if __name__ == "__main__":
    main()
