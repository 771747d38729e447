"""The GPU check: one prepared script for a lent GPU machine (under 8 minutes on an H200).

1. Device discipline. Two ranks share the one GPU and train 20 steps of A-Softmax + triplet +
   centre through the real loop (`run_rank`). NCCL refuses two ranks on one device and gloo
   cannot all-gather CUDA tensors, so every `torch.distributed` collective the code calls is
   wrapped: the wrapper fails on any tensor that is not on CUDA (NCCL's rule) and carries the
   CUDA tensors through CPU copies over gloo. A collective on a CPU tensor in a GPU run (the
   bug class of `clip_sharded_grad_norm_` before) then fails loudly on one GPU.
2. Throughput. One GPU, iResNet-50, bf16, A-Softmax over 100k classes: samples/s and peak
   memory of the Trainer against a plain PyTorch loop (autocast bf16, same backbone, plain
   linear softmax) in the same run.
3. Export and `eval verify` of the part-1 checkpoint on the GPU.

Writes its section of BENCHMARKS.md to --out (default: print). `--smoke` runs parts 1 and 3
on CPU with tiny sizes (the wrapper then checks every tensor is on the training device), so
the script is tested where there is no GPU.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.md        # on the GPU machine
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

WRAPPED = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "broadcast")
ROOT = Path(__file__).resolve().parents[1]


class DeviceRuleBroken(RuntimeError):
    """A collective was called on a tensor NCCL would refuse."""


def install_device_rule(expected: str, calls: Counter) -> None:
    """Wrap the collectives: every tensor must be on `expected` ("cuda": NCCL's rule); CUDA
    tensors travel through CPU copies, since the group underneath is gloo."""

    def tensors_of(value) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, list | tuple):
            return [t for item in value for t in tensors_of(item)]
        return []

    def wrap(name: str):
        original = getattr(dist, name)

        @functools.wraps(original)
        def collective(*args, **kwargs):
            tensors = tensors_of(list(args) + list(kwargs.values()))
            for tensor in tensors:
                if tensor.device.type != expected:
                    raise DeviceRuleBroken(
                        f"dist.{name} on a {tensor.device} tensor {tuple(tensor.shape)} in a "
                        f"{expected} run: NCCL serves CUDA tensors only"
                    )
            calls[name] += 1
            if expected != "cuda":
                return original(*args, **kwargs)
            staged = {id(t): t.detach().cpu() for t in tensors}

            def staged_copy(value):
                if isinstance(value, torch.Tensor):
                    return staged[id(value)]
                if isinstance(value, list | tuple):
                    return type(value)(staged_copy(item) for item in value)
                return value

            result = original(
                *[staged_copy(a) for a in args], **{k: staged_copy(v) for k, v in kwargs.items()}
            )
            with torch.no_grad():
                for tensor in tensors:
                    tensor.copy_(staged[id(tensor)].to(tensor.device))
            return result

        setattr(dist, name, collective)

    for name in WRAPPED:
        wrap(name)


def _shards(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.pipeline.shards import write_shards

    write_shards(root, [6] * 24, num_shards=2)
    return root


def _discipline_rank(rank: int, world: int, port: int, shards: str, out: str, device: str):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    calls: Counter = Counter()
    install_device_rule(device, calls)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.train.loop import run_rank

    cfg = TrainConfig.model_validate(
        {
            "data": {"shards": shards, "batch": {"p": 4, "k": 2}, "workers": 0},
            "model": {"backbone": "tiny", "embedding_size": 32},
            "loss": [
                {"type": "asoftmax", "margin": 4},
                {"type": "triplet", "weight": 0.5},
                {"type": "center", "weight": 0.01},
            ],
            "train": {
                "steps": 20,
                "lr": 0.05,
                "device": device,
                "precision": "bf16" if device == "cuda" else "fp32",
                "log_every": 5,
            },
            "checkpoint": {"dir": str(Path(out) / "ckpt"), "every": 10},
            "mlflow": {"enabled": False},
        }
    )
    try:
        summary = run_rank(cfg, progress=False)
        if rank == 0:
            torch.save({"summary": summary, "calls": dict(calls)}, Path(out) / "discipline.pt")
    finally:
        dist.destroy_process_group()


def device_discipline(device: str, work: Path) -> dict:
    import torch.multiprocessing as mp
    from facetrain.pipeline.ports import free_port

    shards = _shards(work / "shards")
    started = time.perf_counter()
    mp.start_processes(
        _discipline_rank,
        args=(2, free_port(), str(shards), str(work), device),
        nprocs=2,
        start_method="spawn",
    )
    result = torch.load(work / "discipline.pt", weights_only=False)
    result["seconds"] = time.perf_counter() - started
    return result


def throughput(batch: int, classes: int, steps: int) -> dict[str, dict[str, float]]:
    """Trainer vs a plain autocast-bf16 loop, one GPU, same backbone and batch."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from facetrain.pipeline.models import build_backbone
    from gpu_train_step import _run  # the Trainer half, shared with gpu_train_step.py

    results = {"facetrain": _run("iresnet50", batch, classes, steps, 5, "cuda")}
    torch.manual_seed(0)
    model = torch.nn.Sequential(build_backbone("iresnet50", 512), torch.nn.Linear(512, classes))
    model = model.cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(batch, 3, 112, 112, device="cuda") * 2 - 1
    labels = torch.randint(0, classes, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    results["plain"] = {
        "samples_per_s": batch * steps / (time.perf_counter() - started),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    return results


def export_and_verify(checkpoint: Path, work: Path) -> dict[str, str]:
    """`facetrain export` and `facetrain eval verify` of a checkpoint, as a user runs them."""
    import numpy as np
    from PIL import Image

    # Aligned 112x112 faces (no landmarks needed): a noisy copy of one texture per identity.
    images = work / "faces"
    rng = np.random.default_rng(3)
    for identity in range(6):
        base = rng.integers(0, 256, (112, 112, 3))
        (images / f"id{identity}").mkdir(parents=True)
        for index in (1, 2):
            pixels = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"id{identity}" / f"id{identity}_{index:04d}.jpg")
    pairs = work / "pairs.txt"
    lines = [f"id{i}\t1\t2" for i in range(3)] + [f"id{i}\t1\tid{i + 3}\t1" for i in range(3)]
    pairs.write_text("1\t3\n" + "\n".join(lines) + "\n")
    facetrain = str(Path(sys.executable).with_name("facetrain"))
    outcome = {}
    for name, argv in (
        (
            "export",
            [
                facetrain,
                "export",
                "--model",
                str(checkpoint),
                "--out",
                str(work / "model.torchscript.pt"),
            ],
        ),
        (
            "eval verify",
            [
                facetrain,
                "eval",
                "verify",
                "--model",
                str(checkpoint),
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--no-mlflow",
                "--json",
                str(work / "v.json"),
            ],
        ),
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        outcome[name] = (
            "ok"
            if done.returncode == 0
            else f"exit {done.returncode}: " + (done.stderr.strip().splitlines() or ["?"])[-1]
        )
    return outcome


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="parts 1 and 3 on CPU, tiny")
    parser.add_argument("--out", type=Path, help="write the BENCHMARKS.md section here")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --smoke for the CPU run)")
    lines = ["## GPU check (benchmarks/gpu_check.py)", ""]
    if device == "cuda":
        lines.append(
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}."
        )
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        discipline = device_discipline(device, work)
        calls = ", ".join(f"{name} x{count}" for name, count in sorted(discipline["calls"].items()))
        lines += [
            "",
            f"**1. Device discipline** ({device}): 2 ranks on one device, 20 steps of "
            f"A-Softmax + triplet + centre, {discipline['summary']['steps']} steps done, "
            f"{discipline['summary']['skipped_steps']} skipped, in "
            f"{discipline['seconds']:.0f} s. Every collective ran on {device} tensors: "
            f"{calls} (rank 0).",
        ]
        if device == "cuda":
            figures = throughput(args.batch, args.classes, args.steps)
            ratio = figures["facetrain"]["samples_per_s"] / figures["plain"]["samples_per_s"]
            lines += [
                "",
                f"**2. Throughput**: iResNet-50, bf16, batch {args.batch}, "
                f"{args.classes:,} classes, {args.steps} steps after 5 warm-up.",
                "",
                "| loop | samples/s | peak GiB | ratio |",
                "|---|---:|---:|---:|",
                f"| plain PyTorch (autocast bf16, linear softmax) | "
                f"{figures['plain']['samples_per_s']:.0f} | "
                f"{figures['plain']['peak_gib']:.1f} | 1.00 |",
                f"| facetrain Trainer (A-Softmax, class-sharded) | "
                f"{figures['facetrain']['samples_per_s']:.0f} | "
                f"{figures['facetrain']['peak_gib']:.1f} | {ratio:.2f} |",
            ]
        outcome = export_and_verify(work / "ckpt", work)
        lines += [
            "",
            f"**3. Export and verify** on {device}: "
            + "; ".join(f"{name}: {status}" for name, status in outcome.items())
            + ".",
        ]
    section = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(section)
    return section


if __name__ == "__main__":
    print(main())
