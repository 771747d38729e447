"""LFW View 1: five training objectives, same backbone, data and budget, on real faces.

    python benchmarks/lfw.py [--steps N] [--backbone NAME] [--objectives NAME ...] [--quick]

1. prep: the identities of `peopleDevTrain.txt` (their images only, through a folder of
   links), aligned 112x112 with the SphereFace authors' landmarks, on local Ray;
2. train each objective with `facetrain train --nproc N` for the same number of steps:
   softmax, A-Softmax (m=4), ArcFace, CosFace, softmax + centre, triplet (semi-hard),
   A-Softmax + triplet;
3. verify each on `pairsDevTest.txt` (people disjoint from DevTrain) at the threshold chosen
   on `pairsDevTrain.txt`, plus AUC and TAR@FAR on DevTest.

All runs go to one MLflow experiment (select them and press Compare in the UI). The table goes
into BENCHMARKS.md (section `lfw`), the overlaid ROC curves into one PNG. The papers' order
(A-Softmax >= centre > softmax, ArcFace ≈ CosFace >= A-Softmax) is a hypothesis here: small budgets can reorder it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_LFW = REPO.parent / "shared" / "data" / "lfw"

# Each objective as the `loss:` list of a TrainConfig; everything else is shared.
OBJECTIVES: dict[str, list[dict]] = {
    "softmax": [{"type": "softmax"}],
    "asoftmax": [{"type": "asoftmax", "margin": 4}],
    "arcface": [{"type": "arcface", "margin": 0.5, "scale": 64.0}],
    "cosface": [{"type": "cosface", "margin": 0.35, "scale": 64.0}],
    "softmax+center": [{"type": "softmax"}, {"type": "center", "weight": 0.003}],
    "triplet": [{"type": "triplet", "mining": "semihard", "margin": 0.2}],
    # FaceNet's offline selection: every 100 steps, embed 90 identities x <= 20 images and
    # train on their semi-hard triplets (docs/training.md); same steps and images per step.
    "triplet-offline": [
        {
            "type": "triplet",
            "margin": 0.2,
            "selection": "offline",
            "offline": {"every": 100, "identities": 90, "images_per_identity": 20},
        }
    ],
    "asoftmax+triplet": [
        {"type": "asoftmax", "margin": 4},
        {"type": "triplet", "weight": 0.5, "mining": "semihard"},
    ],
}
EXPERIMENT = "lfw-view1-objectives"
RUN_LINE = re.compile(r"MLflow run: ([0-9a-f]{32})")  # what `facetrain train` prints at the end


def read_people(path: Path) -> dict[str, int]:
    """`peopleDevTrain.txt`: a count line, then `name images` lines."""
    lines = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    return {name: int(count) for name, count in lines}


def devtrain_view(lfw: Path, people: dict[str, int], view: Path) -> tuple[Path, Path]:
    """A folder of links to the DevTrain identities' folders + their landmark rows: prep sees
    exactly those people, and nothing is copied."""
    images = view / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in people:
        link = images / name
        if not link.exists():
            link.symlink_to((lfw / "images" / name).resolve(), target_is_directory=True)
    rows = [
        line
        for line in (lfw / "landmarks.txt").read_text().splitlines()
        if line.split("/", 1)[0] in people
    ]
    landmarks = view / "landmarks.txt"
    landmarks.write_text("\n".join(rows) + "\n")
    return images, landmarks


def prep(
    images: Path,
    landmarks: Path,
    shards: Path,
    min_images: int,
    workers: int,
    detector: str | None = None,
):
    """DevTrain's shards, aligned from the landmark file, or with `detector` (hog|cnn) from
    the points `prep --detect` finds, as for a user whose photos come without landmarks."""
    from facetrain.data_prep import run_prep
    from facetrain.data_prep.config import PrepConfig

    located = {"detect": True, "detector": detector} if detector else {"landmarks": str(landmarks)}
    config = PrepConfig(
        source=str(images), out=str(shards), min_images=min_images, shard_size=2000,
        workers=workers, **located,
    )  # fmt: skip
    return run_prep(config)


def train_tree(
    args: argparse.Namespace,
    name: str,
    loss: list[dict],
    shards: Path,
    tracking_uri: str,
    experiment: str = EXPERIMENT,
) -> dict:
    return {
        "data": {
            "shards": str(shards),
            "batch": {"p": args.p, "k": args.k},
            "workers": 1,
            "landmark_jitter": args.landmark_jitter,
        },
        "model": {"backbone": args.backbone, "embedding_size": args.embedding_size},
        "loss": loss,
        "train": {
            "steps": args.steps, "lr": args.lr, "warmup_steps": max(1, args.steps // 20),
            "schedule": "cosine", "precision": "fp32", "device": args.device, "seed": args.seed,
            "log_every": max(1, min(20, args.steps // 10)),
        },
        "checkpoint": {"dir": str(args.out / "checkpoints" / name), "every": args.steps},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": experiment, "run_name": name, "registered_model": None},
    }  # fmt: skip


def train_one(
    args: argparse.Namespace,
    name: str,
    shards: Path,
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    loss: list[dict] | None = None,
) -> tuple[str, float]:
    """Train `loss` (default: the objective called `name`; the calibration run takes the
    costliest, A-Softmax + triplet) as MLflow run `name`; returns (run id, wall seconds)."""
    import shutil

    import yaml
    from facetrain.pipeline.config import TrainConfig

    if loss is None:
        loss = OBJECTIVES.get(name, OBJECTIVES["asoftmax+triplet"])
    config = TrainConfig.model_validate(
        train_tree(args, name, loss, shards, tracking_uri, experiment)
    )
    # A checkpoint left by an earlier run would resume it: every measurement starts fresh.
    shutil.rmtree(config.checkpoint.dir, ignore_errors=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    config_path = args.out / f"train-{slug}.yaml"  # the resolved config, as the CLI saves it
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    started = time.perf_counter()
    run_id = run_train_command(
        config_path, args.nproc, args.out / f"train-{slug}.log", tracking_uri
    )
    return run_id, time.perf_counter() - started


def run_train_command(config_path: Path, nproc: int, log_path: Path, tracking_uri: str) -> str:
    """`facetrain train` as a user runs it (a fresh interpreter that launches the ranks), its
    output into `log_path`; returns the run id from its `MLflow run: <id>` line. The command,
    not an import: benchmarks measure the product and stay out of `jobs`."""
    import shutil
    import subprocess

    import torch

    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank: ranks share the cores
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    # The console script of this interpreter's environment, else the one on PATH.
    beside = Path(sys.executable).with_name("facetrain")
    facetrain = str(beside) if beside.exists() else shutil.which("facetrain")
    if facetrain is None:
        raise FileNotFoundError("the `facetrain` command: not beside python nor on PATH")
    command = [facetrain, "train", "--config", str(config_path), "--nproc", str(nproc)]
    run_ids = []
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            text = line.decode(errors="replace")
            _quiet_echo(text)
            run_ids += RUN_LINE.findall(text)
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"facetrain train exited with code {code}; log: {log_path}")
    if not run_ids:
        raise RuntimeError(f"facetrain train printed no 'MLflow run: <id>' line; log: {log_path}")
    return run_ids[-1]


def calibrate_steps(args: argparse.Namespace, shards: Path, tracking_uri: str) -> int:
    """Steps that fill `--minutes` per objective: a short A-Softmax + triplet run measures the
    steady samples/s (its last logging window), in an experiment of its own."""
    import copy

    import mlflow
    from facetrain.pipeline.eval.tracking import ensure_experiment

    calibration = copy.copy(args)
    calibration.steps = 60
    experiment = EXPERIMENT + "-calibration"
    ensure_experiment(tracking_uri, experiment, (args.out / "mlartifacts").resolve())
    run_id, _ = train_one(calibration, "calibration", shards, tracking_uri, experiment)
    samples_per_s = mlflow.MlflowClient(tracking_uri).get_run(run_id).data.metrics["samples_per_s"]
    global_batch = args.p * args.k * args.nproc
    steps = max(1, int(args.minutes * 60 * samples_per_s / global_batch))
    print(
        f"calibration: {samples_per_s:.0f} samples/s -> {steps} steps in {args.minutes} min",
        file=sys.stderr,
    )
    return steps


# ---------------------------------------------------------------- learning-curve sweep
def steps_per_minute(args: argparse.Namespace, backbone: str, shards: Path, uri: str) -> float:
    """`--steps-per-minute BACKBONE=N` when given (a rate measured on a quiet machine, so a
    sweep run beside other work trains the same steps), else a calibration run's rate."""
    import copy

    given = dict(item.split("=", 1) for item in args.steps_per_minute or [])
    if backbone in given:
        return float(given[backbone])
    calibration = copy.copy(args)
    calibration.backbone, calibration.minutes = backbone, 1.0
    return float(calibrate_steps(calibration, shards, uri))


def previous_sweep(path: Path) -> list[dict]:
    """The rows an earlier sweep wrote to its record `path` (none if it has not run)."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(
            f"{path}: not a sweep record ({err}); move it away to start afresh"
        ) from None
    return rows if isinstance(rows, list) else []


def write_table(args: argparse.Namespace, prep_line: str, rows: list[dict], png=None) -> None:
    results = {
        "argv": args.argv,
        "prep": prep_line,
        "steps": args.steps,
        "png": png and str(png),
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))


def previous_table(args: argparse.Namespace) -> dict[str, dict]:
    """Finished rows of an earlier objective table in `args.out` run with the same argv, by
    objective (none when the arguments differ: those runs measured another recipe)."""
    path = args.out / "results.json"
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    if earlier.get("argv") != args.argv or earlier.get("steps") != args.steps:
        return {}
    return {row["objective"]: row for row in earlier.get("rows", []) if "summary" in row}


def sweep(args: argparse.Namespace, shards: Path, uri: str) -> list[dict]:
    """Every (backbone, objective, budget) of the sweep trained from scratch with a schedule
    fitted to its own budget (cosine to zero), then verified on DevTest: a learning curve
    whose points are each a finished run, not one run read at intermediate steps."""
    import copy

    from tqdm import tqdm

    plan = []
    for backbone in args.backbones:
        rate = steps_per_minute(args, backbone, shards, uri)
        # Budget by budget, so a sweep stopped early still compares the objectives.
        for minutes in sorted(args.sweep):
            for objective in args.objectives:
                plan.append((backbone, objective, minutes, max(1, round(rate * minutes))))
    # Points finished by an earlier sweep into the same record are kept, not retrained: a
    # sweep can be stopped and extended (more budgets, another backbone) run by run, and,
    # the record being committed beside its plot, on another machine than the one that began it.
    rows = [row for row in previous_sweep(args.record) if "summary" in row]
    done = {(row["backbone"], row["objective"], row["minutes"], row["steps"]) for row in rows}
    todo = [point for point in plan if point not in done]
    if len(todo) < len(plan):
        tqdm.write(f"sweep: {len(plan) - len(todo)} point(s) kept from {args.record}")
    for backbone, objective, minutes, steps in tqdm(todo, desc="sweep", unit="run"):
        run_args = copy.copy(args)
        run_args.backbone, run_args.steps = backbone, steps
        name = f"sweep-{backbone}-{objective}-{minutes:g}min"
        row = {"backbone": backbone, "objective": objective, "minutes": minutes, "steps": steps}
        try:
            run_id, seconds = train_one(run_args, name, shards, uri, loss=OBJECTIVES[objective])
            verification = evaluate(run_id, args.lfw, uri, args.workers)
        except Exception as err:  # one failed point must not lose the others
            rows.append({**row, "error": f"{type(err).__name__}: {err}"})
            tqdm.write(f"{name}: failed: {err}", file=sys.stderr)
            continue
        rows.append({**row, "run_id": run_id, "seconds": seconds, "summary": verification.summary})
        tqdm.write(f"{name}: accuracy {verification.summary['accuracy']:.4f}", file=sys.stderr)
        # Written after every point: a crash or a stopped sweep keeps what was measured.
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(rows, indent=2, default=str))
    return rows


def plot_sweep(rows: list[dict], path: Path) -> Path:
    """Accuracy against budget, one line per (backbone, objective), fold spread as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    lines: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if "summary" in row:
            lines.setdefault((row["backbone"], row["objective"]), []).append(row)
    for (backbone, objective), points in lines.items():
        points.sort(key=lambda row: row["minutes"])
        axes.errorbar(
            [row["minutes"] for row in points],
            [100 * row["summary"]["accuracy"] for row in points],
            yerr=[100 * row["summary"]["accuracy_std"] for row in points],
            marker="o", capsize=3, label=f"{backbone}, {objective}",
        )  # fmt: skip
    axes.set_xscale("log")
    budgets = sorted({row["minutes"] for points in lines.values() for row in points})
    axes.set_xticks(budgets, [f"{minutes:g}" for minutes in budgets])
    axes.minorticks_off()
    axes.set_xlabel("training budget (minutes on 2 CPU ranks)")
    axes.set_ylabel("LFW View 1 DevTest accuracy % (± fold spread)")
    axes.set_title("Learning curves on LFW DevTrain")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def sweep_markdown(rows: list[dict], args: argparse.Namespace, prep_line: str, png: Path) -> str:
    png_link = _link(png, args.report)
    lines = [
        "## LFW View 1: learning-curve sweep",
        "",
        f"`python benchmarks/lfw.py {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"Trained on the people of `peopleDevTrain.txt` ({prep_line}); {args.embedding_size}-d "
        f"embedding, batch {args.p}x{args.k} per rank on {args.nproc} ranks, random flips, cosine "
        "schedule fitted to each budget: every point is its own run from scratch. A budget in "
        "minutes is a step count (steps per minute per backbone, measured by a calibration run "
        "or given with `--steps-per-minute`), so a point does not depend on the machine's load "
        "while it ran. Accuracy on `pairsDevTest.txt` at the threshold chosen on "
        "`pairsDevTrain.txt`, ± the spread over its 10 folds.",
        "",
        "| backbone | objective | budget (min) | steps | accuracy % | AUC | wall time | MLflow run |",
        "|---|---|---:|---:|---|---|---:|---|",
    ]

    # A record grows in the order its points were run; the table reads as a curve per backbone.
    def place(row: dict) -> tuple:
        backbone, objective = row["backbone"], row["objective"]
        return (
            args.backbones.index(backbone) if backbone in args.backbones else len(args.backbones),
            row["minutes"],
            args.objectives.index(objective) if objective in args.objectives else 0,
        )

    for row in sorted(rows, key=place):
        head = f"| {row['backbone']} | {row['objective']} | {row['minutes']:g} | {row['steps']} "
        if "summary" not in row:
            lines.append(head + f"| **failed**: {row.get('error')} | | | |")
            continue
        summary = row["summary"]
        lines.append(
            head + f"| {_percent(summary['accuracy'])} ± {_percent(summary['accuracy_std'])} "
            f"| {summary['auc']:.4f} | {row['seconds']:.0f} s | `{row['run_id']}` |"
        )
    lines += ["", f"![LFW learning curves]({png_link})"]
    return "\n".join(lines)


def _quiet_echo(text: str) -> None:
    # Keep the rank logs in their log file; pass through only what says where things stand.
    for line in text.splitlines():
        if "MLflow run:" in line or "error" in line.lower():
            print(line, file=sys.stderr)


def evaluate(run_id: str, lfw: Path, tracking_uri: str, workers: int):
    import mlflow
    import torch
    from facetrain.pipeline.eval import load_model, log_verification, run_verification
    from facetrain.pipeline.eval.config import EvalOptions

    # --workers CPUs embed the pairs, whatever thread count the ranks were given (one each).
    torch.set_num_threads(max(1, workers))
    mlflow.set_tracking_uri(tracking_uri)
    model = load_model(run_id, device="cpu").module
    verification = run_verification(
        model, pairs=lfw / "pairsDevTest.txt", fit_pairs=lfw / "pairsDevTrain.txt", images=lfw / "images",
        landmarks=lfw / "landmarks.txt", options=EvalOptions(batch_size=128, workers=workers, device="cpu"),
    )  # fmt: skip
    log_verification(verification, "lfw_devtest", run_id=run_id, tracking_uri=tracking_uri)
    return verification


def plot_rocs(curves: dict[str, tuple], path: Path, title: str) -> Path:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    for name, (fpr, tpr, auc) in curves.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    chance = np.logspace(-3, 0, 50)
    axes.plot(chance, chance, color="grey", linestyle=":", linewidth=0.8, label="chance")
    axes.set_xscale("log")
    axes.set_xlim(1e-3, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false accept rate (different people accepted)")
    axes.set_ylabel("true accept rate")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _link(path: Path, report: Path) -> str:
    """`path` as the report links it: relative to the report's folder where one exists."""
    try:
        return os.path.relpath(path, report.parent)
    except ValueError:  # another drive on Windows
        return str(path)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(
    rows: list[dict], args: argparse.Namespace, prep_line: str, roc_png: Path, report: Path
) -> str:
    roc_link = _link(roc_png, report)
    aligned = (
        f"aligned from the points `prep --detect --detector {args.detect}` finds"
        if args.detect
        else "aligned from the landmark file"
    )
    lines = [
        "## LFW View 1: training objectives",
        "",
        f"`python benchmarks/lfw.py {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"Trained on the people of `peopleDevTrain.txt` ({prep_line}; {aligned}); {args.backbone} backbone, "
        f"{args.embedding_size}-d embedding, batch {args.p}x{args.k} per rank on {args.nproc} ranks, "
        f"{args.steps} steps each, {args.device}. Accuracy on `pairsDevTest.txt` (people disjoint "
        "from training) at the threshold chosen on `pairsDevTrain.txt`, ± the spread over its 10 "
        "folds; AUC and TAR@FAR on DevTest. Wall time includes process start and rank launch.",
        "",
        "| objective | accuracy % | AUC | TAR@FAR=1e-2 % | steps | wall time | MLflow run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("error"):
            lines.append(
                f"| {row['objective']} | **failed**: {row['error']} | | | {args.steps} | {row['seconds']:.0f} s | |"
            )
            continue
        summary = row["summary"]
        tar = (summary.get("tar_at_far") or {}).get("0.01")
        lines.append(
            f"| {row['objective']} | {_percent(summary['accuracy'])} ± {_percent(summary['accuracy_std'])} "
            f"| {summary['auc']:.4f} | {_percent(tar)} | {args.steps} | {row['seconds']:.0f} s | `{row['run_id']}` |"
        )
    skipped = {row["summary"].get("skipped_pairs", 0) for row in rows if "summary" in row}
    if skipped - {0}:
        lines += [
            "",
            f"DevTest pairs skipped for a missing image: {', '.join(map(str, sorted(skipped)))}.",
        ]
    lines += ["", f"ROC curves on DevTest: ![LFW DevTest ROC]({roc_link})"]
    machine = _run_all().machine_description()
    lines += [
        "",
        "Measured on: " + "; ".join(f"{key} {value}" for key, value in machine.items()) + ".",
    ]
    if args.quick:
        lines += [
            "",
            "_Quick smoke run (tiny budget): shows the pipeline works, says nothing about the objectives._",
        ]
    return "\n".join(lines)


def _run_all():
    """benchmarks/run_all.py as a module (for its report helpers), loaded once."""
    if "run_all" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_all", HERE / "run_all.py")
        module = sys.modules["run_all"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["run_all"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lfw",
        type=Path,
        default=DEFAULT_LFW,
        help="LFW folder (images/, landmarks.txt, View 1 lists)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "out" / "lfw-benchmark", help="work folder"
    )
    parser.add_argument(
        "--objectives", nargs="+", choices=sorted(OBJECTIVES), default=list(OBJECTIVES)
    )
    parser.add_argument(
        "--steps", type=int, default=3000, help="training steps per objective (the budget)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="instead of --steps: steps that take this long (measured by a calibration run)",
    )
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--p", type=int, default=16, help="identities per rank per step")
    parser.add_argument("--k", type=int, default=4, help="images per identity")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--landmark-jitter", type=float, default=0.0, help="data.landmark_jitter (pixels)"
    )
    parser.add_argument(
        "--detect",
        choices=("hog", "cnn"),
        help="prep DevTrain from detected points (prep --detect), not the landmark file",
    )
    parser.add_argument("--nproc", type=int, default=2, help="local training ranks")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--min-images", type=int, default=2, help="DevTrain people with fewer images are left out"
    )
    parser.add_argument("--workers", type=int, default=2, help="CPUs for prep and evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking-uri", help="MLflow store (default: SQLite under --out)")
    parser.add_argument(
        "--report", type=Path, default=REPO / "BENCHMARKS.md", help="report to update"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print the section, leave the report alone"
    )
    parser.add_argument(
        "--png", type=Path, help="ROC plot (default: benchmarks/results/lfw-roc.png)"
    )
    parser.add_argument(
        "--sweep",
        nargs="+",
        type=float,
        metavar="MINUTES",
        help="learning-curve mode: train --objectives on --backbones at each budget",
    )
    parser.add_argument(
        "--backbones", nargs="+", help="the sweep's backbones (default: --backbone)"
    )
    parser.add_argument(
        "--record",
        type=Path,
        help="the sweep's points, kept between runs (default: benchmarks/results/lfw-sweep.json)",
    )
    parser.add_argument(
        "--steps-per-minute",
        nargs="+",
        metavar="BACKBONE=N",
        help="the sweep's step rates instead of calibration runs",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny backbone, 20 steps")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.backbone, args.embedding_size, args.steps, args.p = "tiny", 32, min(args.steps, 20), 8
    if args.png is None:
        name = "lfw-sweep.png" if args.sweep else "lfw-roc.png"
        args.png = (args.out if args.quick else HERE / "results") / name
    if args.record is None:
        args.record = (args.out if args.quick else HERE / "results") / "lfw-sweep.json"
    args.backbones = args.backbones or [args.backbone]
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    lfw = args.lfw
    for needed in (
        "images",
        "landmarks.txt",
        "peopleDevTrain.txt",
        "pairsDevTrain.txt",
        "pairsDevTest.txt",
    ):
        if not (lfw / needed).exists():
            raise FileNotFoundError(
                f"--lfw {lfw}: {needed} is missing (see ../shared/data/lfw/README.md)"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    from facetrain.pipeline.eval.tracking import ensure_experiment

    ensure_experiment(tracking_uri, EXPERIMENT, (args.out / "mlartifacts").resolve())

    people = read_people(lfw / "peopleDevTrain.txt")
    images, landmarks = devtrain_view(lfw, people, args.out / "devtrain")
    print(f"prep: {len(people)} DevTrain people -> {args.out / 'shards'}", file=sys.stderr)
    summary = prep(
        images, landmarks, args.out / "shards", args.min_images, args.workers, args.detect
    )
    train_split = summary.splits.get("train", {})
    reasons = ", ".join(
        f"{count} {reason}" for reason, count in sorted(summary.rejected_by_reason.items())
    )
    prep_line = (
        f"{train_split.get('identities')} people with >= {args.min_images} images, "
        f"{train_split.get('images')} images; left out: {reasons or 'none'}"
    )

    from tqdm import tqdm

    if args.sweep:
        rows = sweep(args, args.out / "shards", tracking_uri)
        text = sweep_markdown(rows, args, prep_line, plot_sweep(rows, args.png))
        if not args.no_report:
            _run_all().update_section(args.report, "lfw_sweep", text)
        return text

    if args.minutes:
        args.steps = calibrate_steps(args, args.out / "shards", tracking_uri)

    # Objectives an earlier run of this same table (same argv) finished are kept, not
    # retrained: a table stopped part-way costs only the objectives it had not reached.
    kept = previous_table(args)
    rows, curves = [], {}
    for name in tqdm(args.objectives, desc="objectives", unit="run"):
        started = time.perf_counter()
        try:
            if name in kept:
                run_id, seconds = kept[name]["run_id"], kept[name]["seconds"]
                tqdm.write(f"{name}: kept run {run_id} from {args.out / 'results.json'}")
            else:
                run_id, seconds = train_one(args, name, args.out / "shards", tracking_uri)
            verification = evaluate(run_id, lfw, tracking_uri, args.workers)
        except Exception as err:  # one objective failing must not lose the others' figures
            rows.append(
                {
                    "objective": name,
                    "error": f"{type(err).__name__}: {err}",
                    "seconds": time.perf_counter() - started,
                }
            )
            tqdm.write(f"{name}: failed: {err}", file=sys.stderr)
            continue
        fpr, tpr, _ = verification.roc()
        curves[name] = (fpr, tpr, verification.summary["auc"])
        rows.append(
            {
                "objective": name,
                "run_id": run_id,
                "seconds": seconds,
                "summary": verification.summary,
            }
        )
        tqdm.write(
            f"{name}: accuracy {verification.summary['accuracy']:.4f}, AUC {verification.summary['auc']:.4f}",
            file=sys.stderr,
        )
        # Written after every objective: a crash or a stopped table keeps what was measured.
        write_table(args, prep_line, rows)

    roc_png = plot_rocs(curves, args.png, f"LFW DevTest, {args.backbone}, {args.steps} steps")
    write_table(args, prep_line, rows, png=roc_png)
    text = markdown(rows, args, prep_line, roc_png, args.report)
    if not args.no_report:
        _run_all().update_section(args.report, "lfw", text)
    return text


if __name__ == "__main__":
    print(main())
