"""`facetrain prep`."""

from __future__ import annotations

from jobs.cli.common import not_implemented


def register(subparsers) -> None:
    parser = subparsers.add_parser("prep", help="prep (not implemented yet)")
    parser.set_defaults(func=not_implemented("facetrain prep"))
