"""Prep throughput: `run_prep` end to end on Ray vs a bare multiprocessing.Pool, same cores, same run.

Baseline (the target in the data_prep issue): a multiprocessing.Pool with as many processes as
Ray gets CPUs, doing only decode -> align (arcface 112x112) -> JPEG-encode of every image with
`data_prep.faces.process_image` (the file read included), writing nothing. facetrain:
`run_prep` end to end on embedded Ray into a fresh output directory (list, process = hash +
header checks + decode/align/encode, plan, shard tars, manifests, dataset.json). Runs are
interleaved so load changes hit both sides; ratios use medians and back-to-back pairs. Also
shown: run_prep's time per phase, and `image_library` pil vs opencv per image in one process.
Images: real LFW (../shared/data/lfw, all of it by default) when present, else synthetic.

    python benchmarks/prep_throughput.py [--images N] [--workers N] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw"


def _lfw_subset(workdir: Path, images: int | None) -> tuple[Path, Path, str]:
    """LFW identities (whole folders, in name order) up to `images` images (None: all)."""
    from data_prep.landmarks import read_landmarks

    points = read_landmarks(LFW / "landmarks.txt")
    root = workdir / "faces"
    root.mkdir()
    by_identity: dict[str, list[str]] = {}
    for relpath in points:
        by_identity.setdefault(relpath.split("/")[0], []).append(relpath)
    chosen: list[str] = []
    for identity in sorted(by_identity):
        if images is not None and len(chosen) >= images:
            break
        if (LFW / "images" / identity).is_dir():
            (root / identity).symlink_to(LFW / "images" / identity)
            chosen += [p for p in by_identity[identity] if (LFW / "images" / p).is_file()]
    lines = "".join(
        p + " " + " ".join(f"{v:.2f}" for v in points[p].ravel()) + "\n" for p in chosen
    )
    (workdir / "landmarks.txt").write_text(lines)
    return root, workdir / "landmarks.txt", f"LFW ({len(chosen)} images, 150x150 JPEG)"


def _synthetic(workdir: Path, images: int) -> tuple[Path, Path, str]:
    from PIL import Image

    from data_prep.align import TEMPLATES

    rng = np.random.default_rng(0)
    root = workdir / "faces"
    lines = []
    for index in range(images):
        identity = f"id{index // 4:05d}"
        (root / identity).mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((250, 250), Image.BICUBIC).save(
            root / identity / f"{index}.jpg", quality=90
        )
        points = TEMPLATES["arcface"].points * 1.6 + rng.uniform(20, 40, 2)
        lines.append(
            f"{identity}/{index}.jpg " + " ".join(f"{v:.2f}" for v in points.ravel()) + "\n"
        )
    (workdir / "landmarks.txt").write_text("".join(lines))
    return root, workdir / "landmarks.txt", f"synthetic ({images} images, 250x250 JPEG)"


_POOL_CONFIG = None


def _pool_init(config) -> None:
    global _POOL_CONFIG
    _POOL_CONFIG = config


def _pool_work(item: tuple[str, list[float]]) -> int:
    from data_prep.faces import process_image
    from data_prep.images import read_file

    relpath, points = item
    jpg, _, _ = process_image(
        read_file(Path(_POOL_CONFIG.source) / relpath), points, _POOL_CONFIG, relpath
    )
    return len(jpg)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="default: all of LFW (or 4000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 200, 1

    from data_prep.config import PrepConfig
    from data_prep.executor import TaskRunner
    from data_prep.faces import process_image
    from data_prep.images import read_file
    from data_prep.landmarks import read_landmarks
    from data_prep.run import run_prep

    workdir = Path(tempfile.mkdtemp(prefix="prep-bench-"))
    try:
        if LFW.joinpath("landmarks.txt").is_file():
            root, landmarks_file, what = _lfw_subset(workdir, args.images)
        else:
            root, landmarks_file, what = _synthetic(workdir, args.images or 4000)
        points = read_landmarks(landmarks_file)
        items = [(relpath, p.ravel().tolist()) for relpath, p in sorted(points.items())]

        def config(out: Path) -> PrepConfig:
            return PrepConfig(
                source=str(root),
                out=str(out),
                landmarks=str(landmarks_file),
                workers=args.workers,
                progress=False,
            )

        base = config(workdir / "unused")
        times: dict[str, list[float]] = {"pool_bare": [], "run_prep": []}
        summaries = []
        with (
            # spawn: forking a process that already runs Ray (a test session) is unsafe.
            get_context("spawn").Pool(
                args.workers, initializer=_pool_init, initargs=(base,)
            ) as pool,
            TaskRunner(base),  # run_prep below finds this Ray running and uses it
        ):
            # Warm-up: every worker process started and every import done on both sides.
            list(pool.imap_unordered(_pool_work, items, chunksize=16))
            run_prep(config(workdir / "warm"))
            for repeat in range(args.repeats):
                start = time.perf_counter()
                list(pool.imap_unordered(_pool_work, items, chunksize=16))
                times["pool_bare"].append(time.perf_counter() - start)

                start = time.perf_counter()
                summaries.append(run_prep(config(workdir / f"full-{repeat}")))
                times["run_prep"].append(time.perf_counter() - start)
                shutil.rmtree(workdir / f"full-{repeat}")

        serial = []
        sample = items[: min(len(items), 300)]
        blobs = [(read_file(root / relpath), p) for relpath, p in sample]
        for library in ("pil", "opencv"):
            try:
                library_config = base.model_copy(update={"image_library": library})
                for _ in range(2):  # the first pass warms caches and imports
                    start = time.perf_counter()
                    for data, p in blobs:
                        process_image(data, p, library_config, "bench")
                    seconds = time.perf_counter() - start
                serial.append((f"image_library: {library}", seconds))
            except ImportError:
                serial.append((f"image_library: {library} (not installed)", float("nan")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    count = len(items)
    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    rows = [
        ("multiprocessing.Pool: decode-align-encode only, nothing written (baseline)", "pool_bare"),
        ("**facetrain run_prep on Ray, end to end**", "run_prep"),
    ]
    last = summaries[-1]
    lines = [
        "## Prep throughput: run_prep vs a bare multiprocessing.Pool",
        "",
        f"{what}; {args.workers} processes on each side; {args.repeats} interleaved runs. The "
        "baseline only reads, decodes, aligns and encodes each face; run_prep also lists, hashes, "
        f"dedupes, plans and writes {sum(last.splits[s]['shards'] for s in last.splits)} shard "
        "tars and the manifests. Ratios use medians (bests swing more on a shared machine).",
        "",
        "| method | images | median s | best s | images/s (median) | throughput vs baseline (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {count} | {median[key]:.2f} | {best[key]:.2f} | {count / median[key]:.0f} "
        f"| {median['pool_bare'] / median[key]:.2f}x |"
        for name, key in rows
    ]
    paired = [pool / ours for pool, ours in zip(times["pool_bare"], times["run_prep"], strict=True)]
    lines += [
        "",
        f"run_prep vs Pool, median of the {len(paired)} paired runs (each pair back to back): "
        f"**{statistics.median(paired):.2f}x** (range {min(paired):.2f}-{max(paired):.2f}; "
        "target >= 0.9x).",
        "",
        "run_prep time by phase (median over runs, s): "
        + ", ".join(
            f"{phase} {statistics.median(s.phase_seconds[phase] for s in summaries):.2f}"
            for phase in last.phase_seconds
        ),
        "",
        "All runs (s): "
        + "; ".join(
            f"{name} " + ", ".join(f"{t:.2f}" for t in values) for name, values in times.items()
        ),
        "",
        "Per-image work (decode, align, encode) by image library, one process, same images:",
        "",
        "| library | images | seconds | images/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {len(sample)} | {seconds:.3f} | {len(sample) / seconds:.0f} |"
        for name, seconds in serial
    ]
    pool_runs = times["pool_bare"]
    spread = (
        statistics.pstdev(pool_runs) / statistics.mean(pool_runs) if len(pool_runs) > 1 else 0.0
    )
    lines += [
        "",
        f"Baseline run-to-run spread {spread:.0%} (shared machine: read ratios, not absolutes).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
