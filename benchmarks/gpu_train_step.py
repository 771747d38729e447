"""GPU recipe throughput: iResNet-50, bf16, 112x112, A-Softmax over a class-sharded layer.

One process on one GPU (NCCL group of one): the facetrain Trainer (DeepSpeed engine, bf16,
the configs/gpu-iresnet50-asoftmax.yaml settings) on synthetic batches that stay on the
device, so the figure is the training step alone. Reports samples/s and peak GPU memory.
Reference: arcface_torch publishes about 740 samples/s per GPU for r50 (8 GPUs, WebFace42M).
Without a GPU it reports "not run" (`--quick` then smoke-tests the same code on CPU with a
small model).

    .venv/bin/python benchmarks/gpu_train_step.py [--batch 256] [--classes 100000] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist

ARCFACE_TORCH_R50 = 740.0  # samples/s per GPU, arcface_torch's published r50 figure


def _run(backbone: str, batch: int, classes: int, steps: int, warmup: int, device: str) -> dict:
    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.ports import free_port
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.trainer import Trainer

    if not dist.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
        )
    cfg = TrainConfig.model_validate(
        {
            "data": {"shards": "synthetic", "batch": {"p": batch // 2, "k": 2}},
            "model": {"backbone": backbone, "embedding_size": 512},
            "loss": [{"type": "asoftmax", "margin": 4}],
            "train": {
                "steps": 10**6,
                "lr": 0.1,
                "zero_stage": 1,
                "device": device,
                "precision": "bf16" if device == "cuda" else "fp32",
                "grad_clip": 5.0,
            },
        }
    )
    trainer = Trainer(cfg, classes, world_group())
    generator = torch.Generator(device=trainer.device).manual_seed(0)
    images = torch.rand(batch, 3, 112, 112, device=trainer.device, generator=generator) * 2 - 1
    labels = torch.randint(0, classes, (batch,), device=trainer.device, generator=generator)
    for _ in range(warmup):
        trainer.train_step(images, labels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"samples_per_s": batch * steps / seconds, "peak_gib": peak}


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run when there is no GPU")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    title = "## GPU recipe: iResNet-50, bf16, A-Softmax over a class-sharded layer"
    if not torch.cuda.is_available():
        lines = [title, "", "Not run: no GPU on this machine."]
        if args.quick:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            smoke = _run("iresnet18", 4, 1000, 1, 1, "cpu")
            lines.append(
                f"CPU smoke run of the same code (iresnet18, batch 4): {smoke['samples_per_s']:.1f} samples/s."
            )
        return "\n".join([*lines, ""])
    result = _run("iresnet50", args.batch, args.classes, args.steps, args.warmup, "cuda")
    ratio = result["samples_per_s"] / ARCFACE_TORCH_R50
    return "\n".join(
        [
            title,
            "",
            f"{torch.cuda.get_device_name()}, 1 GPU, batch {args.batch} at 112x112, {args.classes:,} classes, "
            f"ZeRO-1, synthetic data on the device, {args.steps} steps after {args.warmup} warm-up.",
            "",
            "| | samples/s | peak memory (GiB) | ratio |",
            "|---|---:|---:|---:|",
            f"| arcface_torch r50, published (8 GPUs, per GPU) | {ARCFACE_TORCH_R50:.0f} | – | 1.00 |",
            f"| facetrain Trainer, measured | {result['samples_per_s']:.0f} | {result['peak_gib']:.1f} | {ratio:.2f} |",
            "",
        ]
    )


if __name__ == "__main__":
    print(main())
