"""MLflow tracking as a hook on rank 0, that never stops training.

Every record (params, tags, metrics) is appended to `<checkpoint.dir>/tracking/records.jsonl`
first, then sent to MLflow. If a call to the tracking server fails, the hook warns once,
stops talking to the server and goes on writing the local file; the run's summary then says
tracking was lost (`tracking_lost`) and `facetrain tracking sync` uploads the file later.

The model is different: a run whose model did not reach MLflow (log_model or registration
failed, or tracking was lost before the end) reports `mlflow_failed`, which makes
`facetrain train` exit 1 after the checkpoint is written, unless `mlflow.required` is false.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from facetrain.pipeline.config import ModelConfig, TrainConfig
from facetrain.pipeline.train.hooks import Hook
from facetrain.pipeline.train.tracking_sync import describe_mlflow_error
from facetrain.pipeline.train.trainer import StepOutput, Trainer
from facetrain.pipeline.train.validation import model_version_tags, weights_to_log

log = logging.getLogger("facetrain.tracking")


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else ""


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists of sections become a.0.x (MLflow params are flat)."""
    flat: dict[str, str] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict) or (
            isinstance(value, list) and value and isinstance(value[0], dict)
        ):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def manifest_hash(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def step_metrics(out: StepOutput) -> dict[str, float]:
    metrics = {"loss": out.loss, "lr": out.lr}
    metrics.update({f"loss/{name}": value for name, value in out.terms.items()})
    metrics.update(out.stats)
    if out.grad_norm is not None:
        metrics["grad_norm"] = out.grad_norm
    if out.head_grad_norm is not None:
        metrics["head_grad_norm"] = out.head_grad_norm
    return metrics


class MlflowHook(Hook):
    def __init__(
        self, cfg: TrainConfig, manifest: dict, world_size: int, rank_hosts: list[str] | None = None
    ):
        self.cfg = cfg
        self.manifest = manifest
        self.world_size = world_size
        self.rank_hosts = rank_hosts
        self.records_path = Path(cfg.checkpoint.dir) / "tracking" / "records.jsonl"
        self.offline = False
        self.lost_reason: str | None = None
        self.run_id: str | None = None
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._window_samples = 0
        self._window_start = time.perf_counter()

    # ---------------------------------------------------------------- plumbing
    def _record(self, kind: str, payload: dict) -> None:
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.records_path, "a") as handle:
            handle.write(json.dumps({"kind": kind, **payload}) + "\n")

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        if self.offline:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # any failure of the tracking side must not stop training
            self.offline = True
            self.lost_reason = (
                f"{what} failed: {describe_mlflow_error(err, self.cfg.mlflow.tracking_uri)}"
            )
            log.warning(
                "MLflow %s failed (%s: %s); training continues without tracking, records kept in %s",
                what,
                type(err).__name__,
                _first_line(err),
                self.records_path,
            )
            return None

    # ---------------------------------------------------------------- hook
    def on_start(self, trainer: Trainer) -> None:
        import mlflow

        # Fail fast instead of MLflow's minutes of retries against an unreachable server.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if self.cfg.mlflow.tracking_uri:
            mlflow.set_tracking_uri(self.cfg.mlflow.tracking_uri)
        resumed_id = trainer.extra_state.get("mlflow_run_id")
        params = flatten(self.cfg.model_dump(mode="json"))
        tags = {
            "git_commit": git_commit(),
            "world_size": str(self.world_size),
            "data_manifest_sha256": manifest_hash(self.manifest),
            "backbone": self.cfg.model.backbone,
        }
        if trainer.extra_state.get("parent_run"):
            # A run started from another run's weights (train.init_from).
            tags["facetrain.parent_run"] = trainer.extra_state["parent_run"]
        if self.rank_hosts is not None:
            # Which machine each rank ran on, in rank order: where to look when one is slow.
            tags["facetrain.rank_hosts"] = json.dumps(self.rank_hosts)
        self._record("start", {"params": params, "tags": tags, "resumed_run_id": resumed_id})

        def start() -> Any:
            mlflow.set_experiment(self.cfg.mlflow.experiment)
            return mlflow.start_run(run_id=resumed_id, run_name=self.cfg.mlflow.run_name)

        run = self._call("start_run", start)
        if run is None:
            return
        self.run_id = run.info.run_id
        trainer.extra_state["mlflow_run_id"] = self.run_id
        # Which run these records belong to: where `facetrain tracking sync` uploads them.
        self._record("run", {"run_id": self.run_id, "tracking_uri": mlflow.get_tracking_uri()})
        if resumed_id is None:
            self._call("log_params", mlflow.log_params, params)
        self._call("set_tags", mlflow.set_tags, tags)
        self._call("log_dict", mlflow.log_dict, self.cfg.model_dump(mode="json"), "config.yaml")
        self._call("log_dict", mlflow.log_dict, self.manifest, "dataset.json")

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        self._window_samples += out.samples
        if out.skipped:
            return
        self._pending.append((out.step, step_metrics(out)))
        if trainer.step % self.cfg.train.log_every == 0 or trainer.step >= self.cfg.train.steps:
            self.flush(trainer)

    def flush(self, trainer: Trainer) -> None:
        import mlflow

        if not self._pending:
            return
        elapsed = time.perf_counter() - self._window_start
        last_step, last = self._pending[-1]
        last["samples_per_s"] = self._window_samples / max(elapsed, 1e-9)
        last["skipped_steps"] = float(trainer.skipped_steps)
        for step, metrics in self._pending:
            self._record("metrics", {"step": step, "metrics": metrics})
        batch = [
            mlflow.entities.Metric(key, float(value), int(time.time() * 1000), step)
            for step, metrics in self._pending
            for key, value in metrics.items()
        ]
        if self.run_id is not None:
            self._call("log_metrics", mlflow.MlflowClient().log_batch, self.run_id, metrics=batch)
        self._pending.clear()
        self._window_samples = 0
        self._window_start = time.perf_counter()

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        import mlflow

        self.flush(trainer)
        self._record(
            "end",
            {"summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}},
        )
        # The run id stays valid even if the server went away mid-run (its later metrics
        # are in the local records); None only when no run could be started at all.
        summary["mlflow_run_id"] = self.run_id
        summary["tracking_records"] = str(self.records_path)
        if not self.offline and self.cfg.mlflow.log_model:
            self._finish_model(trainer, summary)
        if self.offline:
            summary["tracking_lost"] = self.lost_reason
            if self.cfg.mlflow.log_model:
                self._model_failed(summary, f"tracking was lost ({self.lost_reason})")
            return
        self._call("end_run", mlflow.end_run)

    def _finish_model(self, trainer: Trainer, summary: dict) -> None:
        """Log (and register) the model; its failure is the run's, not a warning to skip."""
        try:
            # `mlflow.register`: the best checkpoint's weights or the last, tagged as such.
            info = self._log_model(weights_to_log(trainer, self.cfg))
            tag_logged_model(
                info, model_version_tags(trainer, self.cfg), self.cfg.mlflow.registered_model
            )
        except Exception as err:  # MLflow raises its own exception types per store and version
            reason = describe_mlflow_error(err, self.cfg.mlflow.tracking_uri)
            self._model_failed(summary, f"log_model failed: {reason}")
            return
        self._record("model", {"run_id": self.run_id, "logged": True})

    def on_stop(self, trainer: Trainer, signum: int) -> None:
        """Preempted: the metrics so far reach MLflow and the run is closed as KILLED (the
        resumed run reopens it by id); no model is logged for an unfinished run."""
        import mlflow

        self.flush(trainer)
        self._record("stopped", {"step": trainer.step, "signal": signum})
        if self.run_id is not None and not self.offline:
            self._call("end_run", mlflow.end_run, status="KILLED")

    def _model_failed(self, summary: dict, reason: str) -> None:
        message = (
            f"the model is not in MLflow: {reason}; the checkpoint is complete and "
            f"`facetrain tracking sync {self.cfg.checkpoint.dir}` logs it later"
        )
        if self.cfg.mlflow.required:
            summary["mlflow_failed"] = message
        else:
            summary["mlflow_warning"] = message
        log.warning("%s", message)

    def _log_model(self, backbone: torch.nn.Module) -> Any:
        return log_backbone(backbone, self.cfg.model, self.cfg.mlflow.registered_model)


def log_backbone(
    backbone: torch.nn.Module, model_cfg: ModelConfig, registered_model: str | None = None
) -> Any:
    """Log the trained backbone to the active run as `model`: a pyfunc (aligned RGB faces ->
    L2-normalised embeddings) whose artifacts are plain weights and the model config, so
    nothing logged is ever unpickled (`pipeline/models/saved.py`). Returns MLflow's ModelInfo."""
    import tempfile

    import mlflow.pyfunc
    from facetrain.pipeline.eval.serving import ENTRY
    from facetrain.pipeline.models.saved import MODEL_CONFIG, WEIGHTS, save_model_dir
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # Input schema: any number of 112x112 RGB faces; output: one embedding per face.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 112, 112, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model_cfg.embedding_size))]),
    )
    with tempfile.TemporaryDirectory(prefix="facetrain-model-") as staging:
        folder = save_model_dir(backbone, model_cfg, staging)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"weights": str(folder / WEIGHTS), "config": str(folder / MODEL_CONFIG)},
            signature=signature,
            registered_model_name=registered_model,
            metadata={"facetrain_format": "safetensors"},
            # Explicit requirements: inferring them would re-import the model in a subprocess.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                "numpy",
                "safetensors",
                "facetrain",
            ],
        )


def tag_logged_model(info: Any, tags: dict[str, str], registered_model: str | None) -> None:
    """Tags on the logged model's run and on its registered version, when it has one."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(info.run_id, f"model.{key}", value)
    version = getattr(info, "registered_model_version", None)
    if registered_model and version is not None:
        for key, value in tags.items():
            client.set_model_version_tag(registered_model, str(version), key, value)


def upload_records(
    records: str | Path, tracking_uri: str | None = None, experiment: str = "facetrain"
) -> str:
    """Send a `records.jsonl` kept while the server was unreachable to MLflow as a new run."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        for line in Path(records).read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "start":
                mlflow.log_params(record["params"])
                mlflow.set_tags({**record["tags"], "uploaded_from": str(records)})
            elif record["kind"] == "metrics":
                now = int(time.time() * 1000)
                client.log_batch(
                    run.info.run_id,
                    metrics=[
                        mlflow.entities.Metric(k, float(v), now, record["step"])
                        for k, v in record["metrics"].items()
                    ],
                )
        return run.info.run_id
