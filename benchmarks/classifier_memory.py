"""Class-sharded classifier: per-rank peak memory and step time; triplet all-gather overhead.

With several `--losses`, also the normalised-weight layers (A-Softmax, ArcFace, CosFace,
combined) against softmax on the same configuration, in the same run; `asoftmax-naive` is
A-Softmax written the direct way (`x @ normalize(W).T`, autograd through it), as facetrain
had it before the lean layer, kept here as the before-figure.

Each configuration runs in fresh processes (gloo on CPU, one thread per rank) so the peak
RSS of a rank belongs to that configuration alone. Memory is the rank's peak RSS minus its
RSS measured just before the loss layer is built; a step is forward + backward + a plain
SGD update of the shard. Ratios are against baselines measured in the same run: N=1 for
memory, sample_rate=1.0 for step time, local-only mining for the triplet gather.

    .venv/bin/python benchmarks/classifier_memory.py                 # C = 100k and 1M
    .venv/bin/python benchmarks/classifier_memory.py --classes 100000 --steps 2
    .venv/bin/python benchmarks/classifier_memory.py --quick         # smoke run, small C
    .venv/bin/python benchmarks/classifier_memory.py --classes 1000000 --worlds 2 --rates 1.0 \
        --batch 128 --steps 1 --losses softmax asoftmax arcface cosface --no-triplet
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from facetrain.losses import LOSS_TYPES, ASoftmaxLoss, TripletLoss
from facetrain.losses.distributed import gather_batch
from facetrain.pipeline.ports import free_port
from tqdm import tqdm

MIB = 2**20


class NaiveASoftmaxLoss(ASoftmaxLoss):
    """A-Softmax with a normalised copy of W and autograd through it: the before-figure."""

    def class_logits(self, embeddings_all, kept_cols, target_cols):
        from facetrain.losses.margins import sphereface_psi

        weight = self.weight if kept_cols is None else self.weight[kept_cols]
        logits = embeddings_all @ F.normalize(weight, dim=1).T
        target_rows = (target_cols >= 0).nonzero().squeeze(1)
        cols = target_cols[target_rows]
        norms = embeddings_all[target_rows].norm(dim=1)
        cos_target = logits[target_rows, cols] / norms
        lam = self.current_lambda
        target = norms * (lam * cos_target + sphereface_psi(cos_target, self.margin)) / (1 + lam)
        return logits.index_put((target_rows, cols), target)


LAYERS = {**LOSS_TYPES, "asoftmax-naive": NaiveASoftmaxLoss}
CLASSIFIERS = ["softmax", "asoftmax", "arcface", "cosface", "combined", "asoftmax-naive"]


def _local_batch(seed: int, global_batch: int, dim: int, num_classes: int, rank: int, world: int):
    gen = torch.Generator().manual_seed(seed)
    embeddings_all = torch.randn(global_batch, dim, generator=gen)
    labels_all = torch.randint(0, num_classes, (global_batch,), generator=gen)
    per_rank = global_batch // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return embeddings_all[rows].clone().requires_grad_(True), labels_all[rows].clone()


def _classifier_rank(rank: int, world: int, spec: dict, group) -> dict:
    embeddings, labels = _local_batch(0, spec["batch"], spec["dim"], spec["classes"], rank, world)
    # Warm the process first: the optimizer's first use imports ~70 MiB of modules, and
    # kernels and gloo buffers load on the first step; none of that belongs to the layer.
    loss_type = LAYERS[spec["loss"]]
    warm_fn = loss_type(spec["dim"], 2 * world, group=group, sample_rate=spec["sample_rate"])
    warm_optimizer = torch.optim.SGD(warm_fn.parameters(), lr=0.1)
    warm_fn(embeddings, labels % (2 * world)).backward()
    warm_optimizer.step()
    del warm_fn, warm_optimizer
    embeddings.grad = None
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    loss_fn = loss_type(
        spec["dim"], spec["classes"], group=group, seed=0, sample_rate=spec["sample_rate"]
    )
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    times, cpu_times = [], []
    for step in range(spec["steps"] + 1):  # step 0 warms up allocator and kernels
        if group is not None:
            dist.barrier(group)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_fn(embeddings, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        embeddings.grad = None
        if step:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "peak_above_baseline": peak - baseline,
        "step_s": sum(times) / len(times),
        # CPU seconds of the rank (one thread): what the layer costs, without the time spent
        # waiting for the core on a loaded machine, which wall time also counts.
        "cpu_s": sum(cpu_times) / len(cpu_times),
    }


def _triplet_rank(rank: int, world: int, spec: dict, group) -> dict:
    embeddings, labels = _local_batch(
        1, spec["batch"], spec["dim"], spec["batch"] // 4, rank, world
    )
    local_fn = TripletLoss(mining="semihard")
    gathered_fn = TripletLoss(mining="semihard", group=group)
    calls = {
        "local": lambda: local_fn(embeddings, labels),
        "gathered": lambda: gathered_fn(embeddings, labels),
        # The communication alone: the all-gather and the gradient all-reduce it implies.
        "communication": lambda: gather_batch(embeddings, labels, group)[0].sum(),
    }
    results = {}
    for name, call in calls.items():
        times = []
        for step in range(spec["steps"] + 2):  # two warm-up calls
            dist.barrier(group)
            start = time.perf_counter()
            call().backward()
            embeddings.grad = None
            if step >= 2:
                times.append(time.perf_counter() - start)
        results[f"{name}_s"] = statistics.median(times)
    return results


def _worker(rank: int, world: int, port: int, out_dir: str, kind: str, spec: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    group = None
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        group = dist.group.WORLD
    try:
        run = _classifier_rank if kind == "classifier" else _triplet_rank
        result = run(rank, world, spec, group)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
        if group is not None:
            # A rank that tears gloo down while its peer still talks to it aborts that peer
            # ("terminate called without an active exception").
            dist.barrier()
    finally:
        if group is not None:
            dist.destroy_process_group()


def _launch(kind: str, world: int, spec: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world, free_port(), out_dir, kind, spec),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(world)]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=CLASSIFIERS,
        default=["softmax"],
        help="layers to measure; the first one fills the scaling table, softmax is the baseline",
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--triplet-world", type=int, default=2)
    parser.add_argument("--no-triplet", action="store_true", help="skip the triplet section")
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.dim, args.batch, args.steps = [20_000], 128, 32, 1
    return args


def _comparison(args: argparse.Namespace, measured: dict[tuple, dict]) -> list[str]:
    """The normalised-weight layers against softmax, configuration by configuration."""
    lines = [
        "",
        "## Normalised-weight layers against softmax",
        "",
        f"D={args.dim}, global batch {args.batch}, gloo on CPU, one thread per rank; "
        f"{args.steps} timed step(s) (forward + backward + SGD) after one warm-up, slowest "
        "rank; peak RSS above the baseline on the largest rank. Softmax is the baseline, "
        "measured in the same run. Targets for the lean layers: × softmax <= 1.3 in both. "
        "CPU s: the rank's CPU time per step (one thread), which a loaded machine does not "
        "inflate as it does wall time.",
        "",
        "| layer | classes | ranks | sample_rate | peak above baseline (MiB) | × softmax "
        "| step (s) | × softmax | CPU s | × softmax |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (loss, classes, world, rate), m in measured.items():
        base = measured.get(("softmax", classes, world, rate))
        if base is None:
            continue
        lines.append(
            f"| {loss} | {classes:,} | {world} | {rate:g} | {m['peak'] / MIB:,.0f} | "
            f"{m['peak'] / max(base['peak'], 1):.2f} | {m['step_s']:.3f} | "
            f"{m['step_s'] / base['step_s']:.2f} | {m['cpu_s']:.3f} | "
            f"{m['cpu_s'] / base['cpu_s']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> str:
    args = _parse(argv)
    configs = [
        (loss, c, n, r)
        for c in args.classes
        for n in args.worlds
        for r in args.rates
        for loss in args.losses
    ]
    measured: dict[tuple, dict] = {}
    for loss, classes, world, rate in tqdm(configs, desc="classifier configs", leave=False):
        spec = dict(
            loss=loss,
            classes=classes,
            dim=args.dim,
            batch=args.batch,
            sample_rate=rate,
            steps=args.steps,
        )
        ranks = _launch("classifier", world, spec)
        measured[(loss, classes, world, rate)] = {
            "peak": max(r["peak_above_baseline"] for r in ranks),
            "step_s": max(r["step_s"] for r in ranks),
            "cpu_s": max(r["cpu_s"] for r in ranks),
        }
        tqdm.write(
            f"{loss} C={classes} N={world} rate={rate}: {measured[(loss, classes, world, rate)]}"
        )

    first = args.losses[0]
    lines = [
        "## Class-sharded classifier: memory and step time per rank",
        "",
        f"{LAYERS[first].__name__}, D={args.dim}, global batch {args.batch}, gloo on CPU, one thread per rank; "
        f"{args.steps} timed steps (forward + backward + SGD) after one warm-up. Memory: peak RSS "
        "minus the RSS just before the layer is built (largest rank).",
        "",
        "| classes | ranks | sample_rate | peak above baseline (MiB) | × N=1 | step (s) | × rate 1.0 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (loss, classes, world, rate), m in measured.items():
        if loss != first:
            continue
        mem_base = measured.get((loss, classes, min(args.worlds), rate), m)["peak"]
        time_base = measured.get((loss, classes, world, max(args.rates)), m)["step_s"]
        lines.append(
            f"| {classes:,} | {world} | {rate:g} | {m['peak'] / MIB:,.0f} | "
            f"{m['peak'] / max(mem_base, 1):.2f} | {m['step_s']:.3f} | {m['step_s'] / time_base:.2f} |"
        )
    if len(args.losses) > 1 and "softmax" in args.losses:
        lines += _comparison(args, measured)
    if args.no_triplet:
        return "\n".join(lines) + "\n"

    triplet_spec = dict(dim=args.dim, batch=args.batch, steps=max(args.steps, 30))
    triplet = _launch("triplet", args.triplet_world, triplet_spec)

    local_s, gathered_s, communication_s = (
        max(r[f"{name}_s"] for r in triplet) for name in ("local", "gathered", "communication")
    )
    overhead = gathered_s - local_s
    lines += [
        "",
        "## Triplet mining: all-gather overhead",
        "",
        f"TripletLoss(semihard), {args.triplet_world} gloo ranks, global batch {args.batch} "
        f"(local {args.batch // args.triplet_world}), D={args.dim}; forward + backward, median of "
        f"{triplet_spec['steps']} calls, slowest rank. The gathered loss also mines over "
        f"{args.triplet_world}x the candidates; the communication row isolates the collectives.",
        "",
        "| mining over | time (ms) | × local |",
        "| --- | ---: | ---: |",
        f"| local batch only (baseline) | {local_s * 1e3:.2f} | 1.00 |",
        f"| all-gathered global batch | {gathered_s * 1e3:.2f} | {gathered_s / local_s:.2f} |",
        f"| (communication alone) | {communication_s * 1e3:.2f} | {communication_s / local_s:.2f} |",
    ]
    head_key = (first, min(args.classes), args.triplet_world, 1.0)
    if head_key in measured:
        step_s = measured[head_key]["step_s"] + local_s
        lines += [
            "",
            f"Gather overhead {overhead * 1e3:.2f} ms = {overhead / step_s:.1%} of a loss-head "
            f"step (classifier at C={head_key[1]:,}, N={head_key[2]}, plus local triplet: "
            f"{step_s * 1e3:.0f} ms); a backbone, not measured here, only makes the share smaller.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
