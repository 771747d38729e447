"""`facetrain` command line: one subcommand module each, registered in COMMANDS.

Each module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Modules import their heavy dependencies inside `func`, so `facetrain --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from facetrain.jobs.cli import (
    checkpoint_cmd,
    configs_cmd,
    demo,
    doctor,
    embed,
    eval_cmd,
    export,
    pack,
    prep,
    submit,
    tracking_cmd,
    train,
)
from facetrain.jobs.cli.common import run_parsed

COMMANDS = (
    prep,
    train,
    eval_cmd,
    embed,
    export,
    pack,
    submit,
    checkpoint_cmd,
    tracking_cmd,
    configs_cmd,
    doctor,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facetrain",
        description="Distributed face-recognition training: prep shards on Ray, train with "
        "DeepSpeed, evaluate, track in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"facetrain {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`facetrain ARGV` parsed; `submit prep|train|eval` keeps the command's own arguments,
    as typed, in `command_args` (see `facetrain submit --help`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if submit.forwards_arguments(argv):
        return submit.parse_forwarding(build_parser(), argv)
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(parse_args(argv))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facetrain")
    except PackageNotFoundError:
        return "unknown"
