"""`facetrain demo`: the whole pipeline on one machine, stage by stage.

1. data: synthetic faces with landmarks (or `--data`: an image folder + landmark list)
2. prep: `data_prep.run_prep` on embedded Ray, holding identities out of training
3. pairs: LFW-style verification pairs over the held-out identities
4. train: what `facetrain train --nproc N` does (DeepSpeed, gloo on CPU), tracked in MLflow
5. eval: verification of the trained model on the held-out pairs, logged onto the run,
   next to a raw-pixel baseline on the same pairs (what learning added)

Everything lands under `--out`: data, shards, checkpoints, the MLflow store (SQLite) and its
artifacts, the ROC plot, `summary.json`. Each stage is a function taking the config section it
needs, so a test or a notebook can run one alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facetrain.jobs.demo.config import DemoConfig
from facetrain.jobs.demo.heldout import HeldOutPairs, heldout_sources, make_heldout_pairs
from facetrain.pipeline.eval.tracking import ensure_experiment

STAGES = ("data", "prep", "pairs", "train", "eval")


@dataclass
class DemoLayout:
    """Where each stage writes, all under one folder."""

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def shards(self) -> Path:
        return self.out / "shards"

    @property
    def pairs(self) -> Path:
        return self.out / "heldout-pairs.txt"

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def train_config(self) -> Path:
        return self.out / "train.yaml"

    @property
    def train_log(self) -> Path:
        return self.out / "train.log"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.out / 'mlflow.db').resolve()}"

    @property
    def artifacts(self) -> Path:
        return (self.out / "mlartifacts").resolve()

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"


@dataclass
class DemoResult:
    run_id: str = ""
    experiment_id: str = ""
    tracking_uri: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    heldout: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    @property
    def run_url(self) -> str:
        return f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def find_data(path: str | Path, landmarks: str | Path | None = None) -> tuple[Path, Path]:
    """(images root, landmark list) of `--data PATH`: PATH/images + PATH/landmarks.txt (the layout
    of the synthetic set and of LFW), or PATH itself as the images root with `--landmarks`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--data {path}: not a folder")
    images = path / "images" if (path / "images").is_dir() else path
    if landmarks is None:
        candidates = [path / "landmarks.txt", path.parent / "landmarks.txt"]
        landmarks = next((c for c in candidates if c.is_file()), None)
        if landmarks is None:
            raise FileNotFoundError(
                f"--data {path}: no landmarks.txt beside the images; pass --landmarks FILE "
                "(`relpath x1 y1 ... x5 y5` per line, or a CSV/Parquet list)"
            )
    landmarks = Path(landmarks)
    if not landmarks.is_file():
        raise FileNotFoundError(f"--landmarks {landmarks}: not found")
    return images, landmarks


def make_synthetic(config: DemoConfig, layout: DemoLayout) -> tuple[Path, Path, dict[str, Any]]:
    from facetrain.jobs.demo.synthetic_faces import write_dataset

    section = config.synthetic
    dataset = write_dataset(
        layout.data, section.identities, section.images, section.size, section.seed
    )
    info = {"source": "synthetic", "identities": len(dataset.counts), "images": dataset.total}
    return dataset.images, dataset.landmarks, info


def run_prep_stage(config: DemoConfig, images: Path, landmarks: Path, layout: DemoLayout):
    from facetrain.data_prep import run_prep
    from facetrain.data_prep.config import PrepConfig

    section = config.prep
    prep_config = PrepConfig(
        source=str(images), landmarks=str(landmarks), out=str(layout.shards),
        val_identities=section.val_identities, min_images=section.min_images,
        max_images=section.max_images, shard_size=section.shard_size, workers=section.workers,
        seed=section.seed,
    )  # fmt: skip
    return run_prep(prep_config)


VALIDATIONS_PER_RUN = 8  # held-out evaluations during training (plus one at the end)


def build_train_config(
    config: DemoConfig, layout: DemoLayout, heldout_pairs: Path | None = None
):
    """The demo's TrainConfig: the `train` tree with this run's paths filled in (and saved).

    With `heldout_pairs` (an LFW pairs file over the prep `val` split), training evaluates
    them as `val/heldout/*` every steps/8 steps, so the run charts the held-out accuracy."""
    from facetrain.jobs.cli.config import save_resolved, validate
    from facetrain.pipeline.config import TrainConfig

    tree = json.loads(json.dumps(config.train))  # a deep copy of plain data
    tree.setdefault("data", {})["shards"] = str(layout.shards.resolve())
    tree.setdefault("checkpoint", {})["dir"] = str(layout.checkpoints.resolve())
    mlflow_section = tree.setdefault("mlflow", {})
    mlflow_section["tracking_uri"] = layout.tracking_uri
    mlflow_section["experiment"] = config.experiment
    if heldout_pairs is not None:
        steps = tree.get("train", {}).get("steps", TrainConfig.model_fields["train"].default.steps)
        eval_section = tree.setdefault("eval", {})
        eval_section.setdefault("every", max(1, steps // VALIDATIONS_PER_RUN))
        eval_section.setdefault("sets", []).append(
            {"name": "heldout", "pairs": str(heldout_pairs), "shards": str(layout.shards.resolve())}
        )
        # The eval stage reports the held-out pairs: the model it loads must not have been
        # chosen on them, so the run logs its last weights, not the best on `heldout`.
        mlflow_section.setdefault("register", "last")
    train_config = validate(TrainConfig, tree, source="demo config 'train'")
    save_resolved(train_config, layout.train_config)
    return train_config


def train_command(config_path: str | Path, nproc: int, summary_path: str | Path) -> list[str]:
    # `facetrain train` in a fresh interpreter that launches the ranks (its output streams to
    # the terminal and the log), handing train_local's summary back through `summary_path`.
    launcher = (
        "import sys; from facetrain.jobs.demo.run import train_child; "
        "sys.exit(train_child(*sys.argv[1:]))"
    )
    return [sys.executable, "-c", launcher, str(config_path), str(nproc), str(summary_path)]


def train_child(config_path: str, nproc: str, summary_path: str) -> int:
    """`facetrain train --config CONFIG_PATH --nproc NPROC` (same output, same exit codes) that
    also writes rank 0's summary to `summary_path` as JSON."""
    from facetrain.jobs.cli import train as command
    from facetrain.jobs.cli.common import parse_command, run_parsed

    def run_and_keep_summary(args) -> int:
        summary = command.run_training(args)
        if summary is None:
            return 1
        Path(summary_path).write_text(json.dumps(summary, default=str))
        return 0

    args = parse_command(command, "train", ["--config", str(config_path), "--nproc", str(nproc)])
    args.func = run_and_keep_summary
    return run_parsed(args)


def run_train_cli(
    config_path: str | Path,
    nproc: int,
    log_path: str | Path,
    tracking_uri: str | None = None,
    echo=sys.stdout.write,
) -> str:
    """Run `facetrain train`, streaming its output (progress bars included) to `echo` and
    `log_path`; return the MLflow run id of the summary training returned."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank: ranks share the cores
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    summary_path = Path(log_path).with_suffix(".summary.json")
    # A summary left by an earlier run must not answer for this one.
    summary_path.unlink(missing_ok=True)
    with Path(log_path).open("wb") as log:
        process = subprocess.Popen(
            train_command(config_path, nproc, summary_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), 65536):
            log.write(chunk)
            echo(chunk.decode(errors="replace"))
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"facetrain train exited with code {code}; log: {log_path}")
    summary = json.loads(summary_path.read_text())
    if not summary.get("mlflow_run_id"):
        raise RuntimeError(
            "facetrain train finished without an MLflow run (records kept in "
            f"{summary.get('tracking_records')}); log: {log_path}"
        )
    return summary["mlflow_run_id"]


def raw_pixel_model():
    """The aligned image itself as the embedding: the no-learning baseline."""
    import torch

    return torch.nn.Flatten()


def evaluate(
    run_id: str, pairs: HeldOutPairs, images: Path, landmarks: Path, layout: DemoLayout
) -> tuple[dict, dict, Path]:
    """(held-out summary of the trained model, raw-pixel baseline summary, ROC png); the first
    is logged onto the training run as `heldout/*` metrics with its ROC plot."""
    import mlflow
    from facetrain.pipeline.eval import load_model, log_verification, run_verification
    from facetrain.pipeline.eval.config import EvalOptions

    mlflow.set_tracking_uri(layout.tracking_uri)
    options = EvalOptions(batch_size=64, workers=2, device="cpu")
    pair_list = pairs.pair_list()
    model = load_model(run_id, device="cpu").module
    verification = run_verification(
        model, pairs=pair_list, images=images, landmarks=landmarks, options=options
    )
    log_verification(
        verification, "heldout", run_id=run_id, tracking_uri=layout.tracking_uri, out_dir=layout.out
    )
    baseline = run_verification(
        raw_pixel_model(), pairs=pair_list, images=images, landmarks=landmarks, options=options
    )
    client = mlflow.MlflowClient(layout.tracking_uri)
    client.log_metric(run_id, "heldout/raw_pixels_accuracy", baseline.summary["accuracy"])
    return verification.summary, baseline.summary, layout.out / "roc-heldout.png"


def training_figures(tracking_uri: str, run_id: str) -> dict[str, float]:
    """The run's last logged losses and throughput, for the summary."""
    import mlflow

    metrics = mlflow.MlflowClient(tracking_uri).get_run(run_id).data.metrics
    wanted = ("loss", "samples", "lambda", "active", "step")
    return {
        name: value
        for name, value in sorted(metrics.items())
        if any(w in name for w in wanted) and not name.startswith("heldout")
    }


def run_demo(
    config: DemoConfig,
    out: str | Path,
    data: str | Path | None = None,
    landmarks: str | Path | None = None,
    console=None,
) -> DemoResult:
    from rich.console import Console

    console = console or Console()
    layout = DemoLayout(Path(out))
    result = DemoResult(tracking_uri=layout.tracking_uri)
    started = time.perf_counter()

    def stage(index: int, title: str) -> None:
        console.rule(
            f"[bold][{index}/{len(STAGES)}] {title}[/]  ({time.perf_counter() - started:.0f} s)"
        )

    def done(name: str, since: float) -> None:
        result.seconds[name] = round(time.perf_counter() - since, 1)

    # Check the training config before spending minutes on data (this also creates --out).
    build_train_config(config, layout)

    t = time.perf_counter()
    if data is None:
        stage(1, f"synthetic faces: {config.synthetic.identities} identities -> {layout.data}")
        images, landmark_file, result.dataset = make_synthetic(config, layout)
    else:
        images, landmark_file = find_data(data, landmarks)
        stage(1, f"data: {images} with landmarks {landmark_file}")
        result.dataset = {"source": str(images), "landmarks": str(landmark_file)}
    done("data", t)

    t = time.perf_counter()
    stage(
        2,
        f"prep on local Ray: align 112x112, shard, hold out {config.prep.val_identities} identities",
    )
    prep_summary = run_prep_stage(config, images, landmark_file, layout)
    console.print(prep_summary.render())
    result.splits = prep_summary.splits
    done("prep", t)

    t = time.perf_counter()
    stage(3, "verification pairs over the held-out identities")
    section = config.pairs
    pairs = make_heldout_pairs(
        heldout_sources(layout.shards),
        section.folds,
        section.pairs_per_fold,
        section.seed,
        layout.pairs,
    )
    console.print(
        f"{len(pairs.is_same)} pairs ({int(pairs.is_same.sum())} same) over {pairs.identities} identities, "
        f"{pairs.images} images"
        + (f"; LFW pairs file {pairs.pairs_file}" if pairs.pairs_file else "")
    )
    done("pairs", t)

    t = time.perf_counter()
    train_config = build_train_config(config, layout, pairs.pairs_file)
    stage(4, f"train: {config.nproc} local ranks, {train_config.model.backbone}, "
          f"{' + '.join(term.type for term in train_config.loss)}, {train_config.train.steps} steps")  # fmt: skip
    result.experiment_id = ensure_experiment(
        layout.tracking_uri, config.experiment, layout.artifacts
    )
    result.run_id = run_train_cli(
        layout.train_config, config.nproc, layout.train_log, layout.tracking_uri
    )
    result.training = training_figures(layout.tracking_uri, result.run_id)
    done("train", t)

    t = time.perf_counter()
    stage(5, f"verify on held-out identities: MLflow run {result.run_id}")
    result.heldout, result.baseline, roc_png = evaluate(
        result.run_id, pairs, images, landmark_file, layout
    )
    done("eval", t)
    result.seconds["total"] = round(time.perf_counter() - started, 1)

    result.files = {
        "images": str(images), "landmarks": str(landmark_file), "shards": str(layout.shards),
        "train_config": str(layout.train_config), "train_log": str(layout.train_log),
        "roc": str(roc_png), "summary": str(layout.summary),
    }  # fmt: skip
    if pairs.pairs_file:
        result.files["pairs"] = str(pairs.pairs_file)
    write_summary(result, layout.summary)
    return result


def write_summary(result: DemoResult, path: Path) -> None:
    payload = {
        "run_id": result.run_id,
        "experiment_id": result.experiment_id,
        "tracking_uri": result.tracking_uri,
        "mlflow_ui": result.ui_command,
        "run_url": result.run_url,
        "dataset": result.dataset,
        "splits": result.splits,
        "training": result.training,
        "heldout": {key: value for key, value in result.heldout.items() if key != "skipped"},
        "baseline_raw_pixels": {
            key: result.baseline.get(key) for key in ("accuracy", "accuracy_std", "auc", "eer")
        },
        "files": result.files,
        "seconds": result.seconds,
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
