"""The ``autodrop`` command: ``autodrop demo``, ``autodrop nqm``, ``autodrop bench``, ``autodrop calibrate``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import demo, nqm_report
from .bench import calibrate
from .bench import command as bench


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="autodrop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser("demo", help="short AutoDrop run on MNIST-1D with a figure"))
    nqm_report.add_arguments(
        commands.add_parser("nqm", help="the paper's noisy quadratic model: Theorem 1, Figs. 1 and 3")
    )
    bench.add_arguments(commands.add_parser("bench", help="AutoDrop against other LR schedules: tables and figures"))
    calibrate.add_arguments(
        commands.add_parser(
            "calibrate", help="each saturation detector on synthetic omega series with a known saturation"
        )
    )
    args = parser.parse_args(argv)
    {"demo": demo.run, "nqm": nqm_report.run, "bench": bench.run, "calibrate": calibrate.run}[args.command](args)
