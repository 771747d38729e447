"""Shared by the Ray entrypoints (`python -m facetrain.jobs.ray.prep|train|eval`): run a
facetrain command with the arguments it has on the command line, attached to the Ray cluster
the job runs in.

Each entrypoint runs its command module's own parser and run function, not the `facetrain`
dispatcher: a job needs that one command and the config loader, nothing else of the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType


def cluster_address() -> str | None:
    """The cluster a Ray job runs in: Ray's job supervisor sets RAY_ADDRESS for the driver."""
    return os.environ.get("RAY_ADDRESS") or None


def with_cluster_address(argv: Sequence[str], address_flag: str) -> list[str]:
    """`argv` plus `address_flag auto` when inside a Ray job and the flag is not given."""
    argv = list(argv)
    given = any(arg == address_flag or arg.startswith(address_flag + "=") for arg in argv)
    if given or cluster_address() is None:
        return argv
    # "auto" makes ray.init() take RAY_ADDRESS, whatever form the supervisor gave it.
    return [*argv, address_flag, "auto"]


def run_command_on_cluster(
    command: ModuleType, name: str, argv: Sequence[str], address_flag: str | None = None
) -> int:
    """Run `facetrain NAME ARGV` through `command` (the CLI module that registers NAME): same
    parser, same run function, same exit codes and messages as the local command."""
    from facetrain.jobs.cli.common import parse_command, run_parsed

    if address_flag:
        argv = with_cluster_address(argv, address_flag)
    return run_parsed(parse_command(command, name, argv))
