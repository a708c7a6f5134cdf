"""A short AutoDrop training run on MNIST-1D, generated locally (no download).

Prints each LR drop and writes ``demo.png`` (omega, the detector's statistic, LR, loss) and
``history.csv`` (one row per epoch, :func:`autodrop.write_history_csv`).
Needs the ``bench`` extra (mnist1d, matplotlib).
"""

from __future__ import annotations

import argparse

import torch

from ..history import write_history_csv
from ..scheduler import AutoDrop
from .bench.tasks import mnist1d_tensors
from .cli_args import int_at_least, learning_rate, output_folder, torch_seed
from .plots import plot_history


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_folder("--out"), default="results/demo", help="output folder")
    parser.add_argument("--epochs", type=int_at_least("--epochs", 1), default=60)
    parser.add_argument(
        "--samples", type=int_at_least("--samples", 10), default=5000, help="MNIST-1D samples (80%% train)"
    )
    parser.add_argument("--lr", type=learning_rate("--lr"), default=0.05)
    parser.add_argument("--delay", type=int_at_least("--delay", 0), default=5, help="n_d in epochs (paper: 20 of 200)")
    parser.add_argument("--seed", type=torch_seed, default=0)


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    x, y, x_test, y_test = mnist1d_tensors(args.samples)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = AutoDrop(optimizer, delay=args.delay)
    print(
        f"MNIST-1D: {len(x)} train / {len(x_test)} test; SGD lr {args.lr}; "
        f"AutoDrop with its default detector (trend test), delay {args.delay}"
    )
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), 128):
            batch = order[start : start + 128]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
        scheduler.step()
        record = scheduler.history[-1]
        if record["event"] is not None:
            with torch.no_grad():
                error = (model(x_test).argmax(1) != y_test).float().mean().item()
            omega = "-" if record["omega"] is None else f"{record['omega']:.2f}"
            print(
                f"epoch {epoch:3d}: {record['event']:9s} omega {omega:>6s} deg, "
                f"lr {record['lrs'][0]:.2e}, test error {100 * error:.2f}%"
            )
    with torch.no_grad():
        error = (model(x_test).argmax(1) != y_test).float().mean().item()
    path = plot_history(scheduler.history, args.out / "demo.png", losses, title="AutoDrop on MNIST-1D")
    table = write_history_csv(scheduler.history, args.out / "history.csv")
    print(
        f"{scheduler.num_drops} drops; final lr {scheduler.get_last_lr()[0]:.2e}; "
        f"final test error {100 * error:.2f}%; figure: {path}; history: {table}"
    )
