"""rebuild_argv gives back arguments that parse to the same namespace."""

import argparse

import pytest
from facetrain.jobs.ray.command_line import rebuild_argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("source")
    parser.add_argument("--out", required=True)
    parser.add_argument("--align", choices=["arcface", "none"], default="arcface")
    parser.add_argument("--min-images", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--names", nargs="+", default=None)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--submit-only", dest="submit_only", default=None)
    return parser


@pytest.mark.parametrize(
    "argv",
    [
        ["data/raw", "--out", "o"],
        ["/a b/c", "--out=/x y", "--align", "none", "--min-images", "3", "--dry-run"],
        ["s", "--out", "o", "--set", "train.lr=-0.5", "--set", "a.b=[1, 2]", "--no-progress"],
        ["s", "--out", "o", "--names", "Ann", "Bob", "--lr=-1e-3", "-vv", "--no-flip"],
        ["--names", "x", "y", "--out", "o", "s"],
    ],
)
def test_round_trip_reproduces_the_namespace(argv):
    parser = _parser()
    parsed = parser.parse_args(argv)
    rebuilt = rebuild_argv(parser, parsed)
    assert parser.parse_args(rebuilt) == parsed


def test_defaults_are_left_out_and_skipped_dests_dropped():
    parser = _parser()
    parsed = parser.parse_args(["s", "--out", "o", "--submit-only", "zz"])
    rebuilt = rebuild_argv(parser, parsed, skip={"submit_only"})
    assert rebuilt == ["s", "--out=o"]


def test_nested_subcommands_are_followed():
    parser = argparse.ArgumentParser(prog="eval")
    parser.add_argument("--json")
    sub = parser.add_subparsers(dest="mode", required=True)
    verify = sub.add_parser("verify")
    verify.add_argument("--pairs")
    verify.add_argument("--fit-pairs")
    cluster = sub.add_parser("cluster")
    cluster.add_argument("--threshold", type=float)
    parsed = parser.parse_args(["--json", "r.json", "verify", "--pairs", "p.txt"])
    rebuilt = rebuild_argv(parser, parsed)
    assert rebuilt == ["--json=r.json", "verify", "--pairs=p.txt"]
    assert parser.parse_args(rebuilt) == parsed
