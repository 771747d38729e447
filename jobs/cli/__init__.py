"""`facetrain` command line: one subcommand module each, registered in COMMANDS.

Each module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Modules import their heavy dependencies inside `func`, so `facetrain --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from facetrain.jobs.cli import demo, doctor, embed, eval_cmd, export, prep, submit, train
from facetrain.jobs.cli.common import UsageError
from facetrain.jobs.cli.config import ConfigError

COMMANDS = (prep, train, eval_cmd, embed, export, submit, doctor, demo)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as err:
        print(f"facetrain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except NotImplementedError as err:
        print(f"facetrain {args.command}: not implemented yet ({err})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"facetrain {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facetrain")
    except PackageNotFoundError:
        return "unknown"
