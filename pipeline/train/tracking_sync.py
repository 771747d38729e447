"""`facetrain tracking sync CHECKPOINT_DIR`: upload what `MlflowHook` kept while the
tracking server was unreachable, into the run it belongs to.

The run is the one recorded in `records.jsonl` (a `run` record, written once MLflow answered),
or, when that run cannot be found on the server (another server, a deleted run, a run that
never started), a new run whose id is kept in `tracking/sync.json` so that later syncs go to
it too. Each (metric, step) is uploaded only when the run does not hold it yet, and the model
only when it is not logged yet: running sync twice uploads nothing twice.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

# MLflow's log_batch accepts at most 1000 metrics per call.
BATCH = 1000


class TrackingUnreachable(RuntimeError):
    """The tracking server did not answer (or refused our credentials)."""


@dataclass
class SyncResult:
    run_id: str
    new_run: bool
    metrics_uploaded: int
    params_uploaded: int
    model_logged: bool


def describe_mlflow_error(err: BaseException, tracking_uri: str | None) -> str:
    """An MLflow client error as one line; a refused login names the variables to set."""
    text = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    if "401" in text or "Unauthorized" in text or "credentials" in text.lower():
        missing = [
            name
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
            if not os.environ.get(name)
        ]
        if missing:
            return (
                f"MLflow server {tracking_uri} requires authentication: {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set"
            )
        return (
            f"MLflow server {tracking_uri} refused MLFLOW_TRACKING_USERNAME / "
            f"MLFLOW_TRACKING_PASSWORD (wrong user or password)"
        )
    if "403" in text or "Permission denied" in text:
        return f"MLflow server {tracking_uri}: user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} may not do this ({text})"
    return f"{type(err).__name__}: {text}"


def read_records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            # The last line of a run killed mid-write may be cut short; anything else is damage.
            if number == len(path.read_text().splitlines()):
                break
            raise ValueError(f"tracking records {path}: line {number} is not JSON ({err})") from err
    return records


def latest_values(records: list[dict]) -> dict[str, dict[int, float]]:
    """key -> step -> value; a step replayed after a resume keeps its last value."""
    values: dict[str, dict[int, float]] = {}
    for record in records:
        if record.get("kind") == "metrics":
            for key, value in record["metrics"].items():
                values.setdefault(key, {})[int(record["step"])] = float(value)
    return values


def sync_records(
    checkpoint_dir: str | Path, tracking_uri: str | None = None, progress: bool = True
) -> SyncResult:
    import mlflow
    from facetrain.pipeline.config import ModelConfig
    from facetrain.pipeline.train.checkpoint import find_checkpoint, load_config_dict

    checkpoint_dir = Path(checkpoint_dir)
    folder = checkpoint_dir / "tracking"
    records_path = folder / "records.jsonl"
    if not records_path.is_file():
        raise FileNotFoundError(
            f"checkpoint dir {checkpoint_dir}: no tracking/records.jsonl (was it trained with "
            "mlflow.enabled?)"
        )
    records = read_records(records_path)
    starts = [r for r in records if r.get("kind") == "start"]
    if not starts:
        raise ValueError(f"tracking records {records_path}: no start record")
    found = find_checkpoint(checkpoint_dir)
    config = load_config_dict(found) if found is not None else {}
    mlflow_cfg = config.get("mlflow", {})
    uri = tracking_uri or mlflow_cfg.get("tracking_uri") or None
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = mlflow.MlflowClient(tracking_uri=uri)
    uri = uri or mlflow.get_tracking_uri()
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # MLflow raises its own exception types per store and version
        raise TrackingUnreachable(
            f"tracking server {uri}: {describe_mlflow_error(err, uri)}"
        ) from err

    state_path = folder / "sync.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    candidates = [state.get("run_id")] + [
        r["run_id"] for r in reversed(records) if r.get("kind") == "run"
    ]
    run_id, new_run = None, False
    for candidate in filter(None, candidates):
        try:
            client.get_run(candidate)
            run_id = candidate
            break
        except Exception:  # noqa: S112 - not on this server: try the next, else a new run
            continue
    if run_id is None:
        experiment = mlflow_cfg.get("experiment", "facetrain")
        found_experiment = client.get_experiment_by_name(experiment)
        experiment_id = (
            found_experiment.experiment_id
            if found_experiment is not None
            else client.create_experiment(experiment)
        )
        tags = {**starts[0]["tags"], "facetrain.synced_from": str(records_path)}
        run_id = client.create_run(experiment_id, tags=tags, run_name=mlflow_cfg.get("run_name")).info.run_id
        new_run = True
    state["run_id"] = run_id
    state_path.write_text(json.dumps(state, indent=1))

    # Params: those the run lacks (log_params may have been what failed).
    held = client.get_run(run_id).data.params
    params = [
        mlflow.entities.Param(key, value)
        for key, value in starts[0]["params"].items()
        if key not in held
    ]
    for first in range(0, len(params), 100):
        client.log_batch(run_id, params=params[first : first + 100])

    values = latest_values(records)
    pending: list = []
    now = int(time.time() * 1000)
    for key, by_step in tqdm(values.items(), desc="sync metrics", disable=not progress):
        present = {metric.step for metric in client.get_metric_history(run_id, key)}
        pending += [
            mlflow.entities.Metric(key, value, now, step)
            for step, value in sorted(by_step.items())
            if step not in present
        ]
    for first in range(0, len(pending), BATCH):
        client.log_batch(run_id, metrics=pending[first : first + BATCH])
    uploaded = len(pending)

    model_logged = False
    logged_for = {r.get("run_id") for r in records if r.get("kind") == "model"}
    logged_for |= set(state.get("models_logged", []))
    if mlflow_cfg.get("log_model", True) and run_id not in logged_for:
        if found is None:
            raise FileNotFoundError(
                f"checkpoint dir {checkpoint_dir}: no complete checkpoint to log the model from"
            )
        from facetrain.pipeline.train.checkpoint import load_backbone
        from facetrain.pipeline.train.tracking import log_backbone

        backbone = load_backbone(found)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id):
            log_backbone(
                backbone,
                ModelConfig.model_validate(config["model"]),
                mlflow_cfg.get("registered_model"),
            )
        state["models_logged"] = sorted({*state.get("models_logged", []), run_id})
        state_path.write_text(json.dumps(state, indent=1))
        model_logged = True
    return SyncResult(run_id, new_run, uploaded, len(params), model_logged)
