"""Pieces every subcommand shares: config options, the usage error, and running one command
from its own parser (what `facetrain` and the Ray entrypoints both do)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from facetrain.jobs.cli.config import ConfigError


class UsageError(ValueError):
    """Unusable arguments or inputs (exit code 2); the message names the bad input."""


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE|NAME",
        help="YAML config file, or the name of a shipped recipe (`facetrain configs list`)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key, e.g. --set train.steps=100 (repeatable)",
    )


def parse_command(
    command: ModuleType,
    name: str,
    argv: Sequence[str],
    prog: str = "facetrain",
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.Namespace:
    """`argv` parsed by the parser `command.register` builds for `name`, and only that one.

    Usage errors exit 2 with `<prog> <name>: error: ...`, as `facetrain <name>` does. Nested
    parsers (`eval verify`) are built with `parser_class` too.
    """
    root = parser_class(prog=prog)
    command.register(root.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args, unknown = root.parse_known_args([name, *argv])
    if unknown:
        # Said here rather than by `root`, whose usage line would not be the command's.
        root.exit(
            2,
            f"{prog} {name}: error: unrecognized arguments: {' '.join(unknown)} "
            f"(see `facetrain {name} --help`)\n",
        )
    return args


def run_parsed(args: argparse.Namespace) -> int:
    """Run the `func` a command's parser set, turning usage errors into exit code 2."""
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as err:
        print(f"facetrain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facetrain {args.command}: interrupted", file=sys.stderr)
        return 130
