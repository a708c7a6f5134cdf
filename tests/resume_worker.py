"""Trains a small MLP with AutoDrop; can stop after some epochs and resume in a new process.

    python resume_worker.py OUT --epochs N [--stop-after K CHECKPOINT | --resume CHECKPOINT]

Writes the LR of every epoch and the final parameters to OUT. Data order depends
only on the epoch index, so an interrupted run sees the same batches.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits

from autodrop import AutoDrop


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = AutoDrop(optimizer, detector="paper", threshold=0.5, max_threshold=2.0, delay=4)
    return model, optimizer, scheduler


def train_epoch(model, optimizer, x, y, epoch):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + epoch))
    for start in range(0, len(x), 64):
        batch = order[start : start + 64]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--stop-after", nargs=2, metavar=("K", "CHECKPOINT"))
    parser.add_argument("--resume", metavar="CHECKPOINT")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    model, optimizer, scheduler = build()
    start, lrs = 0, []
    if args.resume:
        checkpoint = torch.load(args.resume, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start, lrs = checkpoint["epoch"], checkpoint["lrs"]
    stop = int(args.stop_after[0]) if args.stop_after else args.epochs
    for epoch in range(start, stop):
        train_epoch(model, optimizer, x, y, epoch)
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    if args.stop_after:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": stop,
                "lrs": lrs,
            },
            args.stop_after[1],
        )
    torch.save(
        {
            "lrs": lrs,
            "params": [p.detach() for p in model.parameters()],
            "pending": scheduler.pending,
            "history": scheduler.history,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
