"""`facetrain tracking sync CHECKPOINT_DIR`: upload the records a run kept while MLflow was
unreachable (`<checkpoint.dir>/tracking/records.jsonl`), and its model if it is missing."""

from __future__ import annotations

import argparse

from facetrain.jobs.cli.common import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tracking",
        help="upload tracking records kept during an MLflow outage",
        description="Every training run keeps its params, tags and metrics in "
        "<checkpoint.dir>/tracking/records.jsonl. `sync` uploads what MLflow lacks.",
    )
    actions = parser.add_subparsers(dest="tracking_action", metavar="ACTION", required=True)
    sync = actions.add_parser(
        "sync",
        help="upload the kept records (and the model) into their run, or a new one",
        description="Uploads into the run the records belong to, or into a new run when that "
        "one cannot be reached; each metric step and the model are uploaded once, however "
        "often this runs. Credentials: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.",
    )
    sync.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="the run's checkpoint.dir")
    sync.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow server (default: the run's mlflow.tracking_uri, else $MLFLOW_TRACKING_URI)",
    )
    sync.add_argument("--no-progress", action="store_true", help="no progress bar")
    sync.set_defaults(func=run_sync)


def run_sync(args: argparse.Namespace) -> int:
    import sys

    from facetrain.pipeline.train.tracking_sync import TrackingUnreachable, sync_records

    try:
        result = sync_records(args.checkpoint_dir, args.tracking_uri, not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    except TrackingUnreachable as err:
        print(f"facetrain tracking: error: {err}", file=sys.stderr)
        return 1
    where = "new run" if result.new_run else "run"
    print(
        f"MLflow {where} {result.run_id}: {result.metrics_uploaded} metric values, "
        f"{result.params_uploaded} params uploaded; model "
        f"{'logged' if result.model_logged else 'already there'}"
    )
    return 0
