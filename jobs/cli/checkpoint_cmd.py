"""`facetrain checkpoint convert OLD NEW`: rewrite an old pickled checkpoint or MLflow model
in the plain-data format facetrain loads without running code.

Converting unpickles OLD once, which runs any code planted in it, so the command asks the
user to confirm they trust the source (or takes `--trust-source` in scripts).
"""

from __future__ import annotations

import argparse
import sys

from facetrain.jobs.cli.common import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "checkpoint",
        help="convert an old pickled checkpoint or MLflow model to the safe format",
        description="Checkpoints and logged models hold only tensors and plain data; older "
        "ones were pickles, which facetrain refuses to load. `convert` rewrites one.",
    )
    actions = parser.add_subparsers(dest="checkpoint_action", metavar="ACTION", required=True)
    convert = actions.add_parser(
        "convert",
        help="rewrite OLD (trusted source only) as a plain-data checkpoint or model NEW",
        description="OLD is a checkpoint.dir or step folder, written to NEW as a checkpoint.dir; "
        "or an MLflow model (run id, runs:/..., models:/...) written to NEW as a model folder "
        "(weights.safetensors + facetrain-model.json) that --model accepts. Loading OLD "
        "unpickles it: only do this for files from a source you trust.",
    )
    convert.add_argument("old", metavar="OLD")
    convert.add_argument("new", metavar="NEW")
    convert.add_argument(
        "--trust-source",
        action="store_true",
        help="confirm without a prompt that OLD comes from a source you trust",
    )
    convert.set_defaults(func=run_convert)


def confirmed(args: argparse.Namespace) -> bool:
    if args.trust_source:
        return True
    if not sys.stdin.isatty():
        return False
    answer = input(
        f"Converting {args.old} unpickles it, which runs any code it carries. "
        "Do you trust its source? [y/N] "
    )
    return answer.strip().lower() in {"y", "yes"}


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not confirmed(args):
        raise UsageError(
            f"checkpoint convert {args.old}: not confirmed; converting unpickles OLD, so pass "
            "--trust-source (or answer the prompt) only for a source you trust"
        )
    if Path(args.old).exists():
        from facetrain.pipeline.train.checkpoint import convert_checkpoint

        try:
            written = convert_checkpoint(args.old, args.new)
        except (FileNotFoundError, FileExistsError) as err:
            raise UsageError(str(err)) from err
    else:
        from facetrain.pipeline.eval.model_ref import convert_mlflow_model

        try:
            written = convert_mlflow_model(args.old, args.new)
        except (FileExistsError, ValueError) as err:
            raise UsageError(str(err)) from err
    print(f"converted {args.old} -> {written}")
    return 0
