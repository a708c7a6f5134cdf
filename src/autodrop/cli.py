"""The ``autodrop`` command: ``autodrop demo`` (and later subcommands)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="autodrop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser("demo", help="short AutoDrop run on MNIST-1D with a figure"))
    args = parser.parse_args(argv)
    {"demo": demo.run}[args.command](args)
