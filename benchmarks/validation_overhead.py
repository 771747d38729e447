"""Validation during training: its embedding rate, and its share of a run's wall time.

One process, one backbone, one LFW-sized set (LFW View 2 packed into a `.bin` from
../shared/data/lfw, 12,000 aligned faces; random faces where LFW is absent):

1. rate: `ValidationHook.evaluate` (embed with flip + gather + score the 6,000 pairs) against
   the baseline, a plain `torch.no_grad()` loop of the same backbone over the same decoded,
   aligned faces at the same batch size, also with flip. Alternating rounds, medians.
2. share: one evaluation's time E against the time of 1,000 training steps of the same
   backbone (`Trainer.train_step`, batch p x k, median step time t):
   share = E / (1000 t + E) at `eval.every: 1000`. The set's one-time decoding and alignment
   (at `on_start`) is reported separately: it happens once per run, not per evaluation.

    .venv/bin/python benchmarks/validation_overhead.py [--quick] [--backbone tiny] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
EVERY = 1000


def _pairs_subset(pairs_txt: Path, per_class: int, out: Path) -> Path:
    """A View-1 style file with the first `per_class` same and different pairs of View 2."""
    lines = pairs_txt.read_text().splitlines()[1:]
    same = [line for line in lines if len(line.split()) == 3][:per_class]
    different = [line for line in lines if len(line.split()) == 4][:per_class]
    out.write_text(f"{per_class}\n" + "\n".join(same + different) + "\n")
    return out


def build_set(scratch: Path, quick: bool) -> tuple[Path, str, float]:
    """(a .bin of the set, where it came from, seconds it took to pack)."""
    started = time.perf_counter()
    if LFW.is_dir():
        from facetrain.pipeline.eval.pack import pack_pairs

        pairs = LFW / "pairs.txt"
        if quick:
            pairs = _pairs_subset(pairs, 300, scratch / "pairs-quick.txt")
        result = pack_pairs(
            pairs, LFW / "images", scratch / "lfw.bin", LFW / "landmarks.txt", progress=False
        )
        return result.path, f"LFW {pairs.name}, {result.pairs} pairs", time.perf_counter() - started
    from facetrain.pipeline.eval.bin_format import encode_image, write_bin

    count = 600 if quick else 6000
    rng = np.random.default_rng(0)
    images = [encode_image(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(2 * count)]
    path = write_bin(scratch / "random.bin", images, rng.random(count) < 0.5)
    return path, f"random faces, {count} pairs", time.perf_counter() - started


@torch.no_grad()
def plain_loop(model: torch.nn.Module, faces: np.ndarray, batch: int) -> torch.Tensor:
    """The baseline: what anyone would write to embed decoded faces with flip."""
    model.eval()
    rows = []
    for start in range(0, len(faces), batch):
        x = torch.from_numpy(faces[start : start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        both = model(torch.cat([x, x.flip(3)]))
        rows.append(both[: len(x)] + both[len(x) :])
    return torch.cat(rows)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 pairs, 1 round, 5 steps")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch", type=int, default=128, help="eval.batch_size (x2 with flip)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=20)
    args = parser.parse_args(argv)
    rounds, train_steps = (1, 5) if args.quick else (args.rounds, args.train_steps)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.train.trainer import Trainer
    from facetrain.pipeline.train.validation import ValidationHook, embed_faces_batched

    with tempfile.TemporaryDirectory() as scratch:
        bin_path, described, pack_seconds = build_set(Path(scratch), args.quick)
        cfg = TrainConfig.model_validate(
            {
                "data": {"shards": scratch, "batch": {"p": 32, "k": 4}},
                "model": {"backbone": args.backbone, "embedding_size": 128},
                "loss": [{"type": "softmax"}],
                "train": {"steps": 10**6, "lr": 0.01, "device": "cpu", "precision": "fp32"},
                "checkpoint": {"dir": str(Path(scratch) / "ckpt")},
                "mlflow": {"enabled": False},
                "eval": {"every": EVERY, "batch_size": args.batch,
                         "sets": [{"name": "lfw", "bin": str(bin_path)}]},
            }
        )  # fmt: skip
        trainer = Trainer(cfg, num_classes=1000, group=None)
        hook = ValidationHook(cfg, progress=False)
        started = time.perf_counter()
        hook.on_start(trainer)
        decode_seconds = time.perf_counter() - started
        faces = hook.sets[0].local.faces
        model = trainer.backbone

        plain, embed_only, ours = [], [], []
        for _ in range(rounds):
            started = time.perf_counter()
            plain_loop(model, faces, args.batch)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            embed_faces_batched(model, faces, args.batch, trainer.device)
            embed_only.append(time.perf_counter() - started)
            model.train()
            started = time.perf_counter()
            results = hook.evaluate(trainer)
            ours.append(time.perf_counter() - started)
        evaluation = statistics.median(ours)
        plain_rate = len(faces) / statistics.median(plain)
        our_rate = len(faces) / evaluation
        embed_rate = len(faces) / statistics.median(embed_only)

        images = torch.rand(cfg.data.batch.size, 3, 112, 112) * 2 - 1
        labels = torch.randint(0, 1000, (cfg.data.batch.size,))
        step_times = []
        for step in range(train_steps + 2):
            started = time.perf_counter()
            trainer.train_step(images, labels)
            if step >= 2:  # the first steps pay for allocation and DeepSpeed's set-up
                step_times.append(time.perf_counter() - started)
        step = statistics.median(step_times)
        share = evaluation / (EVERY * step + evaluation)

    summary = results["lfw"].summary
    return "\n".join(
        [
            "## Validation during training: embedding rate and share of the run",
            "",
            f"`{args.backbone}` backbone, 1 process on CPU ({torch.get_num_threads()} threads), "
            f"eval.batch_size {args.batch} with flip; set: {described}, {len(faces)} faces "
            f"(packed in {pack_seconds:.0f} s, decoded once per run in {decode_seconds:.1f} s). "
            f"Medians of {rounds} alternating round(s).",
            "",
            "| | images/s | × plain loop |",
            "|---|---:|---:|",
            f"| plain `torch.no_grad()` loop (embedding only) | {plain_rate:.0f} | 1.00 |",
            f"| validation's embedding (`embed_faces_batched`) | {embed_rate:.0f} "
            f"| {embed_rate / plain_rate:.2f} |",
            f"| `ValidationHook.evaluate` (embedding + scoring {summary['pairs']} pairs) "
            f"| {our_rate:.0f} | {our_rate / plain_rate:.2f} |",
            "",
            f"One evaluation: {evaluation:.1f} s. Training step (batch {cfg.data.batch.size}): "
            f"{step:.3f} s (median of {len(step_times)}). At `eval.every: {EVERY}`, evaluation "
            f"takes **{100 * share:.1f}%** of the training wall time "
            f"({evaluation:.1f} s per {EVERY * step:.0f} s of training).",
            "",
        ]
    )


if __name__ == "__main__":
    print(main())
