"""`facetrain demo [--out DIR] [--data PATH] [--quick]`: the whole pipeline on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from facetrain.jobs.cli.common import UsageError, add_config_options

# Shipped inside the package, so an installed (non-editable) facetrain has its demo too.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "demo" / "demo.yaml"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run prep -> train (2 local ranks) -> eval end to end on synthetic faces (or --data)",
        description="Generate a synthetic face set with landmarks (or use --data), prep it on "
        "local Ray with held-out identities, train with DeepSpeed on local ranks (A-Softmax + "
        "triplet), verify on the held-out identities and record it all in MLflow. "
        "See docs/demo.md.",
    )
    parser.add_argument(
        "--out",
        default="demo-out",
        metavar="DIR",
        help="where everything goes (default: ./demo-out)",
    )
    parser.add_argument(
        "--data", metavar="PATH",
        help="a real dataset instead of synthetic faces: PATH/images + PATH/landmarks.txt "
        "(LFW's layout), or an images root with --landmarks",
    )  # fmt: skip
    parser.add_argument("--landmarks", metavar="FILE", help="5-point landmark list for --data")
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (the config's `quick` overrides)"
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def load_demo_config(path: str | Path | None, overrides: list[str], quick: bool):
    from facetrain.jobs.cli.config import apply_overrides, load_config, read_yaml, validate
    from facetrain.jobs.demo.config import DemoConfig

    path = Path(path) if path else DEFAULT_CONFIG
    if not quick:
        return load_config(DemoConfig, path, overrides)
    base = validate(DemoConfig, read_yaml(path), source=str(path))
    tree = apply_overrides(read_yaml(path), [*base.quick, *overrides])
    return validate(DemoConfig, tree, source=f"{path} (--quick)")


def run(args: argparse.Namespace) -> int:
    from facetrain.jobs.demo.report import print_report
    from facetrain.jobs.demo.run import run_demo
    from rich.console import Console

    config = load_demo_config(args.config, args.overrides, args.quick)
    if args.landmarks and not args.data:
        raise UsageError("--landmarks goes with --data (synthetic faces bring their own)")
    console = Console()
    try:
        result = run_demo(
            config, args.out, data=args.data, landmarks=args.landmarks, console=console
        )
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    print_report(result, console)
    return 0
