"""``autodrop bench``: run a suite, write ``runs.jsonl``, ``summary.csv`` and ``report.md``.

Example::

    autodrop bench --suite quick --jobs 2 --out results/bench-quick
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import time
from pathlib import Path

import torch

from ..cli_args import device, fail, int_at_least, learning_rate, output_folder
from .report import write_report
from .runner import SUITES, plan_runs, read_records, run_all
from .schedules import OPTIMIZERS, SCHEDULES
from .tasks import DataSource, default_cache_dir, load_task_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="quick",
        help="; ".join(f"{s.name}: {s.description}" for s in SUITES.values()),
    )
    parser.add_argument(
        "--seeds",
        type=int_at_least("--seeds", 1),
        default=None,
        help="number of seeds (0..N-1) for the comparison and the LR sweep (default: the suite's)",
    )
    parser.add_argument(
        "--epochs", type=int_at_least("--epochs", 1), default=None, help="epochs of every run (default: the suite's)"
    )
    parser.add_argument(
        "--lrs",
        type=learning_rate("--lrs"),
        nargs="+",
        default=None,
        help="initial LRs of the sweep (default: the task's LR x 0.6, 1, 2, 3)",
    )
    parser.add_argument(
        "--schedules",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"schedules to run, of {', '.join(SCHEDULES)} (default: the suite's)",
    )
    parser.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="sgd",
        help="optimizer of the schedule rows (default sgd: Nesterov 0.9, weight decay 5e-4)",
    )
    parser.add_argument(
        "--device", type=device, default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with cifar-10-batches-py (torchvision's format) for the cifar10 suite",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where generated MNIST-1D is cached (default {default_cache_dir()})",
    )
    parser.add_argument(
        "--out",
        type=output_folder("--out"),
        default=None,
        help="output folder (default results/bench-SUITE); runs already in its runs.jsonl are not repeated",
    )
    parser.add_argument(
        "--jobs",
        type=int_at_least("--jobs", 1),
        default=1,
        help="parallel worker processes (each gets cpu_count / jobs threads)",
    )


def _machine(device: str) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, device {device}, load average at start {load}"
    )


def _command_line(args: argparse.Namespace) -> str:
    words = ["autodrop", "bench"]
    for name, value in vars(args).items():
        if name == "command" or value is None:
            continue
        words.append("--" + name.replace("_", "-"))
        words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> None:
    suite = SUITES[args.suite]
    try:
        out = args.out or output_folder("--out")(str(Path("results") / f"bench-{suite.name}"))
        done = {r["key"] for r in read_records(out / "runs.jsonl")}
        specs = plan_runs(
            suite,
            optimizer=args.optimizer,
            schedules=args.schedules,
            seeds=args.seeds,
            epochs=args.epochs,
            lrs=args.lrs,
            device=args.device,
            data_dir=args.data_dir and str(args.data_dir),
            cache_dir=args.cache_dir and str(args.cache_dir),
        )
        source = DataSource(args.data_dir, args.cache_dir)
        for task in suite.tasks:
            load_task_data(task, source)  # fails before any run, and fills the cache once
    except (ValueError, FileNotFoundError, ImportError, argparse.ArgumentTypeError) as error:
        fail("bench", str(error))
    machine = _machine(args.device)
    new_runs = sum(s.key not in done for s in specs)
    print(
        f"autodrop bench --suite {suite.name}: {len(specs)} runs on {', '.join(suite.tasks)} "
        f"({len(specs) - new_runs} already in {out / 'runs.jsonl'}), --jobs {args.jobs}"
    )
    print(f"machine: {machine}")
    started = time.perf_counter()

    def progress(record: dict, count: int, total: int) -> None:
        drops = f", drops at {record['drop_epochs']}" if record["history"] is not None else ""
        message = (
            f"[{count}/{total}] {record['task']} {record['schedule']} lr={record['lr']:g} "
            f"seed {record['seed']}: final test error {record['final_test_error']:.2f}%, best "
            f"{record['best_test_error']:.2f}% at epoch {record['best_epoch']}{drops} "
            f"({record['wall_s']:.0f} s)"
        )
        print(message, flush=True)

    records = run_all(specs, out / "runs.jsonl", jobs=args.jobs, on_record=progress)
    wall = time.perf_counter() - started
    meta = {
        "suite": suite.name,
        "description": suite.description,
        "machine": machine,
        "wall_s": wall,
        "new_runs": new_runs,
        "jobs": args.jobs,
        "command": _command_line(args),
    }
    report = write_report(records, out, meta)
    print(f"done in {wall / 60:.1f} min; report: {report}")
