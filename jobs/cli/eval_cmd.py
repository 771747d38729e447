"""`facetrain eval`."""

from __future__ import annotations

from jobs.cli.common import not_implemented


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model (not implemented yet)")
    parser.set_defaults(func=not_implemented("facetrain eval"))
