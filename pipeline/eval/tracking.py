"""Evaluation results into MLflow: onto the training run when one is named, else a new run.

Logged with `MlflowClient` by run id, so results can be added to a finished training run (or a
running one, from inside the trainer) without reopening or ending it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_EXPERIMENT = "facetrain-eval"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_prefix(name: str) -> str:
    """A dataset name as an MLflow key prefix ('pairsDevTest', 'lfw', 'agedb_30')."""
    return _UNSAFE.sub("_", name).strip("/") or "eval"


def flat_metrics(summary: Mapping, prefix: str) -> dict[str, float]:
    """Every number of a summary as `prefix/name`; `tar_at_far` as `prefix/tar_at_far_0.001`."""
    flat = {}
    for key, value in summary.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            flat[f"{prefix}/{key}"] = float(value)
        elif key in ("tar_at_far", "threshold_at_far") and isinstance(value, Mapping):
            for far, rate in value.items():
                if rate is not None:
                    flat[f"{prefix}/{key}_{far}"] = float(rate)
    return flat


def ensure_experiment(
    tracking_uri: str | None, name: str, artifacts: str | Path | None = None
) -> str:
    """The id of experiment `name`, created when missing; `artifacts`: the folder its runs'
    artifacts go to (without it MLflow picks ./mlruns of whatever directory it runs in)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = Path(artifacts).resolve().as_uri() if artifacts is not None else None
    return client.create_experiment(name, artifact_location=location)


def log_results(
    summary: Mapping,
    name: str,
    run_id: str | None = None,
    artifacts: Iterable[str | Path] = (),
    tags: Mapping[str, str] | None = None,
    step: int | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
) -> str:
    """Log `summary`'s numbers (and files such as the ROC PNG and the JSON) and return the run id.

    run_id given: onto that run (it must exist). Otherwise: a new run in `experiment`, ended here.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    prefix = metric_prefix(name)
    created = run_id is None
    if created:
        experiment_id = ensure_experiment(tracking_uri, experiment)
        run_id = client.create_run(
            experiment_id, run_name=f"eval-{prefix}", tags={"facetrain.kind": "evaluation"}
        ).info.run_id
    else:
        try:
            client.get_run(run_id)
        except Exception as err:  # the store's own "not found" type differs per backend
            raise ValueError(
                f"MLflow run {run_id}: not found in {client.tracking_uri} ({err})"
            ) from err
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(key, value, timestamp, step or 0)
        for key, value in flat_metrics(summary, prefix).items()
    ]
    client.log_batch(run_id, metrics=metrics)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, f"eval.{prefix}.{key}", str(value))
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=f"eval/{prefix}")
    if created:
        client.set_terminated(run_id)
    return run_id
