"""`facetrain configs list|show NAME`: the recipes shipped with facetrain (`facetrain.configs`).

Any `--config NAME` finds one of them by name when NAME is not a file.
"""

from __future__ import annotations

import argparse
import sys

from facetrain.jobs.cli.common import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "configs",
        help="list the shipped config recipes, or print one",
        description="The YAML recipes installed with facetrain. Every --config takes one by name "
        "(e.g. --config cpu-asoftmax) when no file of that name exists.",
    )
    actions = parser.add_subparsers(dest="configs_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="name and first comment line of each recipe")
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="print a recipe's YAML")
    show.add_argument("name", metavar="NAME", help="recipe name, with or without .yaml")
    show.set_defaults(func=run_show)


def summary_line(text: str) -> str:
    """The first comment line of a recipe, without its `#`: what the recipe is for."""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            return line.lstrip().lstrip("#").strip()
    return ""


def run_list(args: argparse.Namespace) -> int:
    from facetrain.jobs.cli.config import shipped_recipes
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("what it is")
    for name, recipe in shipped_recipes().items():
        # Text, not markup: a recipe's comment may hold brackets (`[--set key=value ...]`).
        table.add_row(name, Text(summary_line(recipe.read_text())))
    Console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from facetrain.jobs.cli.config import ConfigError, find_recipe

    try:
        recipe = find_recipe(args.name)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    sys.stdout.write(recipe.read_text())
    return 0
