"""`facetrain train --config FILE [--set k=v ...] [--nproc N] [--nnodes N --node-rank R
--master-addr ADDR [--master-port P]]`.

One host: `--nproc N` local ranks. Several hosts without Ray: run the same command on each
host with torchrun's flags (rank r of node n is n * nproc + r). Started by torchrun or
Slurm, each process is one rank and takes its numbers from the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, or SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID with MASTER_ADDR).
"""

from __future__ import annotations

import argparse
import os
import sys

from facetrain.jobs.cli.common import UsageError, add_config_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a face embedding model on prepared shards (resumes from checkpoint.dir)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(parser)
    parser.add_argument(
        "--nproc", type=int, default=1, metavar="N", help="ranks on this host (default 1)"
    )
    nodes = parser.add_argument_group("several hosts without Ray (torchrun's semantics)")
    nodes.add_argument("--nnodes", type=int, default=1, metavar="N", help="hosts in the run")
    nodes.add_argument(
        "--node-rank", type=int, default=0, metavar="R", help="this host's number, 0..N-1"
    )
    nodes.add_argument(
        "--master-addr", metavar="ADDR", help="address of node 0, reachable from every host"
    )
    nodes.add_argument("--master-port", type=int, default=29500, metavar="P", help="default 29500")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facetrain.pipeline.train import signals

    summary = run_training(args)
    if summary is None:
        stopped_by = signals.received()
        # Preempted: the checkpoint is written and the same command resumes; 143 / 130 say so.
        return signals.exit_status(stopped_by) if stopped_by else 1
    # A model that did not reach MLflow fails the run (after its checkpoint is written),
    # unless mlflow.required is false.
    return 1 if summary.get("mlflow_failed") else 0


def run_training(args: argparse.Namespace) -> dict | None:
    """What `facetrain train` does: train, print the checkpoint and MLflow run, and return
    rank 0's summary (steps, checkpoint, mlflow_run_id, ...), {} on a host without rank 0;
    None when a rank failed (its error printed). Unusable arguments or shards raise UsageError before any rank starts."""
    from facetrain.jobs.cli.config import load_config
    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.train.rendezvous import Rendezvous, rank_from_environment

    if args.config is None:
        raise UsageError(
            "--config FILE|NAME is required (`facetrain configs list` names the shipped recipes)"
        )
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: expected at least 1")
    if args.nnodes > 1 and not args.master_addr:
        raise UsageError(f"--nnodes {args.nnodes}: --master-addr (node 0's address) is required")
    try:
        launched = (
            None if args.nnodes > 1 or args.master_addr else rank_from_environment(os.environ)
        )
        rendezvous = (
            Rendezvous(args.master_addr, args.master_port, args.nnodes, args.node_rank, args.nproc)
            if args.master_addr
            else None
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    if launched is not None and args.nproc != 1:
        raise UsageError(
            f"--nproc {args.nproc}: this process is rank {launched.rank} of a run started by "
            "torchrun or Slurm (RANK/WORLD_SIZE are set); let the launcher start the ranks"
        )
    cfg = load_config(TrainConfig, args.config, args.overrides)

    import logging

    from facetrain.pipeline.data.shards import read_dataset_index
    from facetrain.pipeline.train import launch, signals

    try:  # a missing or unusable shard set is the user's input: exit 2 before any rank starts
        index = read_dataset_index(cfg.data.shards, cfg.data.split)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    _check_before_ranks_start(cfg, index, args)
    _check_checkpoint_data(cfg, index)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with signals.forward_to_children():
            if rendezvous is not None:
                summary = launch.train_nodes(cfg, rendezvous)
            elif launched is not None:
                summary = launch.run_environment_rank(cfg, launched)
            else:
                summary = launch.train_local(cfg, args.nproc)
    except (launch.TrainingFailed, signals.TrainingStopped) as err:
        print(f"facetrain train: error: {err}", file=sys.stderr)
        return None
    if summary is None:  # another host holds rank 0 and reports the run
        print("facetrain train: this host's ranks finished; node 0 reports the run")
        return {}
    print(f"checkpoint: {summary.get('checkpoint')}")
    print(f"ranks on hosts: {', '.join(summary.get('rank_hosts') or [])}")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run: {summary['mlflow_run_id']}")
    elif not cfg.mlflow.enabled:
        print("MLflow run: none (mlflow.enabled is false)")
    else:
        print(
            f"MLflow run: none (tracking unreachable; records kept in {summary.get('tracking_records')})"
        )
    print_tracking_problems(summary, cfg.checkpoint.dir)
    return summary


def print_tracking_problems(summary: dict, checkpoint_dir: str) -> None:
    """Say loudly what did not reach MLflow and how to send it there later."""
    if summary.get("tracking_lost"):
        print(
            f"MLflow tracking lost during the run ({summary['tracking_lost']}); every record is "
            f"kept in {summary.get('tracking_records')}: `facetrain tracking sync "
            f"{checkpoint_dir}` uploads it",
            file=sys.stderr,
        )
    if summary.get("mlflow_failed"):
        print(f"facetrain train: error: {summary['mlflow_failed']}", file=sys.stderr)
    elif summary.get("mlflow_warning"):
        print(f"facetrain train: warning: {summary['mlflow_warning']}", file=sys.stderr)


def _check_checkpoint_data(cfg, index) -> None:
    """A checkpoint.dir that holds a run of other data is the user's input too (exit 2):
    resuming it would mix two models."""
    from facetrain.pipeline.train import checkpoint
    from facetrain.pipeline.train.loop import data_fingerprint

    try:
        found = checkpoint.find_checkpoint(cfg.checkpoint.dir)
        if found is not None:
            checkpoint.check_dataset(found, data_fingerprint(cfg, index), cfg.data.shards)
    except checkpoint.DatasetMismatchError as err:
        raise UsageError(str(err)) from err
    except (OSError, ValueError):
        pass  # an unreadable checkpoint: the ranks choose another one and say why


def _check_before_ranks_start(cfg, index, args: argparse.Namespace) -> None:
    """Config values that would only fail inside a rank, checked here for exit 2."""
    from facetrain.pipeline.data.loader import FaceBatches
    from facetrain.pipeline.models import available_backbones

    if cfg.model.backbone not in available_backbones():
        raise UsageError(
            f"model.backbone {cfg.model.backbone!r}: unknown backbone; expected one of "
            f"{available_backbones()}"
        )
    offline = any(getattr(term, "selection", "online") == "offline" for term in cfg.loss)
    if not offline:
        world_size = args.nproc * args.nnodes
        try:
            FaceBatches(index, cfg.data, cfg.sampler, 0, world_size, cfg.train.seed)
        except ValueError as err:
            raise UsageError(str(err)) from err
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    key = "mlflow.tracking_uri" if cfg.mlflow.tracking_uri else "$MLFLOW_TRACKING_URI"
    if cfg.mlflow.enabled and (uri.startswith("file:") or uri.startswith("/")):
        raise UsageError(
            f"{key} {uri!r}: MLflow 3 does not accept a file store (file: or a bare path); use "
            "sqlite:///PATH/mlflow.db for a local store or http://HOST:PORT for a server"
        )
