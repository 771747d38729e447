"""facetrain's losses against pytorch-metric-learning's: same backbone, data, batches, budget.

    pip install -e '.[bench]'          # pytorch-metric-learning, the second implementation
    python benchmarks/vs_pml.py --shards out/lfw-benchmark/shards [--steps 300] [--quick]

`--shards` is a `facetrain prep` output of LFW's DevTrain people (`benchmarks/lfw.py` makes
one under its --out). For each pair below, two runs train the same backbone from the same
initial weights (and, for the classifiers, the same initial class rows) on the same P x K
batches with the same flips, seeds and step budget; only the loss differs. The two runs of a
pair step in alternation in one process, so the time ratio is measured under the same load.
Each model is then verified on LFW View 1 DevTest at the threshold fitted on DevTrain.

- triplet: TripletLoss(semihard) vs TripletMarginLoss + TripletMarginMiner("semihard");
  the two differ by design: facetrain takes FaceNet's one semi-hard negative per (a, p) on
  squared distances, PML every semi-hard triplet on plain distances.
- sphereface: ASoftmaxLoss(m=4) at a fixed λ = 0 vs SphereFaceLoss(m=4): PML has no λ
  annealing, so facetrain's is switched off here (λ = 0 is PML's form exactly).
- arcface: ArcFaceLoss(m=0.5, s=64) vs ArcFaceLoss(margin=28.6°, scale=64).
- cosface: CosFaceLoss(m=0.35, s=64) vs CosFaceLoss(margin=0.35, scale=64).
PML has no centre loss, so the softmax + centre objective is not compared.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_LFW = REPO.parent / "shared" / "data" / "lfw"
PAIRS = ("triplet", "sphereface", "arcface", "cosface")


def _losses(name: str, num_classes: int, dim: int, seed: int):
    """(facetrain loss, PML loss, PML miner or None) of one pair, class rows made equal."""
    from pytorch_metric_learning import losses as pml
    from pytorch_metric_learning import miners

    from facetrain import losses as ft

    if name == "triplet":
        return (
            ft.TripletLoss(margin=0.2, mining="semihard"),
            pml.TripletMarginLoss(margin=0.2),
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
        )
    if name == "sphereface":
        mine = ft.ASoftmaxLoss(
            dim, num_classes, margin=4, lambda_base=0.0, lambda_min=0.0, seed=seed
        )
        theirs = pml.SphereFaceLoss(num_classes, dim, margin=4, scale=1)
    elif name == "arcface":
        mine = ft.ArcFaceLoss(dim, num_classes, margin=0.5, scale=64.0, seed=seed)
        theirs = pml.ArcFaceLoss(num_classes, dim, margin=math.degrees(0.5), scale=64)
    elif name == "cosface":
        mine = ft.CosFaceLoss(dim, num_classes, margin=0.35, scale=64.0, seed=seed)
        theirs = pml.CosFaceLoss(num_classes, dim, margin=0.35, scale=64)
    else:
        raise ValueError(f"pair {name!r}: expected one of {PAIRS}")
    with torch.no_grad():
        theirs.W.copy_(mine.weight.T)  # PML keeps W as [D, C]
    return mine, theirs, None


def load_faces(shards: Path) -> tuple[torch.Tensor, np.ndarray, int]:
    """Every training face of a prep output, decoded once: uint8 [M, H, W, 3], labels [M]."""
    from facetrain.pipeline.data.shards import iter_samples, read_dataset_index
    from facetrain.pipeline.data.transforms import decode_rgb

    index = read_dataset_index(str(shards))
    faces, labels = [], []
    for shard in index.shards:
        for label, key, data in iter_samples(shard.url):
            faces.append(decode_rgb(data, where=key))
            labels.append(label)
    return torch.from_numpy(np.stack(faces)), np.asarray(labels), index.num_classes


def pk_plan(labels: np.ndarray, steps: int, p: int, k: int, seed: int) -> list[tuple]:
    """For each step: (face indices [P*K], flip mask); identical for both runs of a pair."""
    rng = np.random.default_rng(seed)
    by_label = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    names = np.asarray(sorted(by_label))
    plan = []
    for _ in range(steps):
        chosen = rng.choice(names, size=p, replace=False)
        picks = np.concatenate(
            [rng.choice(by_label[c], size=k, replace=len(by_label[c]) < k) for c in chosen]
        )
        plan.append((picks, rng.random(p * k) < 0.5))
    return plan


def _batch(
    faces: torch.Tensor, labels: np.ndarray, picks, flips
) -> tuple[torch.Tensor, torch.Tensor]:
    from facetrain.pipeline.data.transforms import normalize_batch

    images = normalize_batch(faces[torch.from_numpy(picks)])
    flip_rows = torch.from_numpy(flips)
    images[flip_rows] = images[flip_rows].flip(-1)
    return images, torch.from_numpy(labels[picks]).long()


class Run:
    """One training run: backbone + loss (+ miner), SGD, cosine schedule with warm-up."""

    def __init__(self, backbone: torch.nn.Module, loss, miner, args: argparse.Namespace):
        self.backbone, self.loss, self.miner = backbone, loss, miner
        params = list(backbone.parameters()) + list(loss.parameters())
        self.optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
        warmup = max(1, args.steps // 20)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: (
                min(1.0, (step + 1) / warmup)
                * 0.5
                * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))
            ),
        )
        self.params = params
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.losses: list[float] = []

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        embeddings = self.backbone(images)
        if self.miner is not None:
            value = self.loss(embeddings, labels, self.miner(embeddings, labels))
        else:
            value = self.loss(embeddings, labels)
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 5.0)
        self.optimizer.step()
        self.schedule.step()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(time.process_time() - cpu_start)
        self.losses.append(float(value.detach()))


def evaluate(model: torch.nn.Module, lfw: Path, workers: int) -> dict:
    from facetrain.pipeline.eval import run_verification
    from facetrain.pipeline.eval.config import EvalOptions

    model.eval()
    options = EvalOptions(batch_size=128, workers=workers, device="cpu", progress=False)
    verification = run_verification(
        model, pairs=lfw / "pairsDevTest.txt", fit_pairs=lfw / "pairsDevTrain.txt",
        images=lfw / "images", landmarks=lfw / "landmarks.txt", options=options,
    )  # fmt: skip
    return verification.summary


def compare(
    name: str,
    data: tuple,
    plan: list[tuple],
    args: argparse.Namespace,
    make_backbone: Callable[[], torch.nn.Module],
) -> dict:
    faces, labels, num_classes = data
    mine, theirs, miner = _losses(name, num_classes, args.embedding_size, args.seed)
    backbone = make_backbone()
    runs = {
        "facetrain": Run(backbone, mine, None, args),
        "pml": Run(copy.deepcopy(backbone), theirs, miner, args),
    }
    for step, (picks, flips) in enumerate(tqdm(plan, desc=name, unit="step", leave=False)):
        images, batch_labels = _batch(faces, labels, picks, flips)
        # Alternate which run goes first, so neither always inherits the other's warm caches.
        order = ("facetrain", "pml") if step % 2 == 0 else ("pml", "facetrain")
        for which in order:
            runs[which].step(images, batch_labels)
    result = {"pair": name}
    for which, run in runs.items():
        timed = slice(min(5, len(run.wall) - 1), None)  # first steps warm up allocator/kernels
        result[which] = {
            "summary": evaluate(run.backbone, args.lfw, args.workers),
            "step_s": statistics.median(run.wall[timed]),
            "cpu_s": statistics.median(run.cpu[timed]),
            "final_loss": statistics.fmean(run.losses[-10:]),
        }
        tqdm.write(
            f"{name}/{which}: accuracy {result[which]['summary']['accuracy']:.4f} "
            f"± {result[which]['summary']['accuracy_std']:.4f}, step {result[which]['step_s']:.3f} s",
            file=sys.stderr,
        )
    return result


def markdown(results: list[dict], args: argparse.Namespace, faces: int, classes: int) -> str:
    lines = [
        "## facetrain vs pytorch-metric-learning: same backbone, data and budget",
        "",
        f"`python benchmarks/vs_pml.py {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"{args.backbone} backbone, {args.embedding_size}-d, trained from the same initial weights "
        f"on LFW DevTrain ({faces} faces, {classes} people with >= 2 images), the same "
        f"{args.steps} P x K batches ({args.p}x{args.k}, random flips) in one process, SGD "
        f"(lr {args.lr}, momentum 0.9, cosine); the two runs of a pair alternate step by step. "
        "Accuracy: LFW View 1 DevTest at the threshold fitted on DevTrain, ± the spread over "
        "its 10 folds. Step: median wall seconds (forward, backward, update), and CPU seconds "
        "of the process; ratio = PML / facetrain (>= 1.0: facetrain no slower).",
        "",
        "| pair | facetrain acc % | PML acc % | Δ (pts) | within spread | facetrain step (s) "
        "| PML step (s) | step ratio | CPU ratio |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in results:
        mine, theirs = row["facetrain"], row["pml"]
        acc, acc_pml = mine["summary"]["accuracy"], theirs["summary"]["accuracy"]
        spread = theirs["summary"]["accuracy_std"]
        verdict = "better" if acc >= acc_pml else ("yes" if acc_pml - acc <= spread else "**no**")
        lines.append(
            f"| {row['pair']} | {100 * acc:.1f} ± {100 * mine['summary']['accuracy_std']:.1f} "
            f"| {100 * acc_pml:.1f} ± {100 * spread:.1f} | {100 * (acc - acc_pml):+.1f} | {verdict} "
            f"| {mine['step_s']:.3f} | {theirs['step_s']:.3f} "
            f"| {theirs['step_s'] / mine['step_s']:.2f} | {theirs['cpu_s'] / mine['cpu_s']:.2f} |"
        )
    lines += [
        "",
        "sphereface: facetrain's A-Softmax at a fixed λ = 0 (PML has no λ annealing). "
        "triplet: the miners differ by design (see the script). "
        "Centre loss: no PML counterpart, not compared.",
    ]
    if args.quick:
        lines += ["", "_Quick smoke run: shows the comparison works, says nothing of accuracy._"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=REPO / "out" / "lfw-benchmark" / "shards")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="threads aligning eval images")
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 steps")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.steps = min(args.steps, 10)
    if not (args.shards / "dataset.json").exists():
        parser.error(f"--shards {args.shards}: no dataset.json (run `facetrain prep` first)")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    from facetrain.pipeline.models import build_backbone

    torch.set_num_threads(1)
    faces, labels, num_classes = load_faces(args.shards)
    plan = pk_plan(labels, args.steps, args.p, args.k, args.seed)

    def make_backbone() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return build_backbone(args.backbone, embedding_size=args.embedding_size)

    results = [
        compare(name, (faces, labels, num_classes), plan, args, make_backbone)
        for name in tqdm(args.pairs, desc="pairs", unit="pair")
    ]
    text = markdown(results, args, len(labels), len(np.unique(labels)))
    if not args.no_report:
        spec = importlib.util.spec_from_file_location("run_all", HERE / "run_all.py")
        run_all = importlib.util.module_from_spec(spec)
        sys.modules["run_all"] = run_all  # its dataclasses look their module up there
        spec.loader.exec_module(run_all)
        run_all.update_section(args.report, "vs_pml", text)
    return text


if __name__ == "__main__":
    print(main())
