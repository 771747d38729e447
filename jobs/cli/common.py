"""Pieces every subcommand shares: config options and the usage error."""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """Unusable arguments or inputs (exit code 2); the message names the bad input."""


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key, e.g. --set train.steps=100 (repeatable)",
    )


def not_implemented(what: str):
    """A subcommand that is planned but not built: fails loudly, never pretends."""

    def run(args: argparse.Namespace) -> int:
        raise NotImplementedError(what)

    return run
