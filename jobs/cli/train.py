"""`facetrain train --config FILE [--set k=v ...] [--nproc N]`."""

from __future__ import annotations

import argparse
import sys

from facetrain.jobs.cli.common import UsageError, add_config_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a face embedding model on prepared shards (resumes from checkpoint.dir)",
        description="Train on `facetrain prep` shards with N local ranks; prints 'MLflow run: <id>'.",
    )
    add_config_options(parser)
    parser.add_argument("--nproc", type=int, default=1, metavar="N", help="local ranks (default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return 0 if run_training(args) is not None else 1


def run_training(args: argparse.Namespace) -> dict | None:
    """What `facetrain train` does: train, print the checkpoint and MLflow run, and return
    rank 0's summary (steps, checkpoint, mlflow_run_id, ...); None when a rank failed (its
    error printed). Unusable arguments or shards raise UsageError before any rank starts."""
    from facetrain.jobs.cli.config import load_config
    from facetrain.pipeline.config import TrainConfig

    if args.config is None:
        raise UsageError(
            "--config FILE|NAME is required (`facetrain configs list` names the shipped recipes)"
        )
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: expected at least 1")
    cfg = load_config(TrainConfig, args.config, args.overrides)

    import logging

    from facetrain.pipeline.data.shards import read_dataset_index
    from facetrain.pipeline.train.launch import TrainingFailed, train_local

    try:  # a missing or unusable shard set is the user's input: exit 2 before any rank starts
        read_dataset_index(cfg.data.shards, cfg.data.split)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = train_local(cfg, args.nproc)
    except TrainingFailed as err:
        print(f"facetrain train: error: {err}", file=sys.stderr)
        return None
    print(f"checkpoint: {summary.get('checkpoint')}")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run: {summary['mlflow_run_id']}")
    elif not cfg.mlflow.enabled:
        print("MLflow run: none (mlflow.enabled is false)")
    else:
        print(
            f"MLflow run: none (tracking unreachable; records kept in {summary.get('tracking_records')})"
        )
    return summary
