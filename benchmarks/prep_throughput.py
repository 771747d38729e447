"""Prep throughput: facetrain's Ray-task prep vs a bare multiprocessing.Pool, same cores, same run.

Baseline: a multiprocessing.Pool running the shard writer (`data_prep.shards.write_shard`:
read, decode, align to arcface 112x112, JPEG-encode, write the tar and part file) over the
same planned shards as the Ray tasks, on the same number of processes; their ratio is the cost
of Ray as the executor. Also shown: a Pool doing only decode -> align -> encode (nothing
written), run_prep end to end, and `image_library` pil vs opencv (when installed) for the
per-image work in one process. Images: a subset of real LFW (../shared/data/lfw) when present,
else synthetic faces.

    python benchmarks/prep_throughput.py [--images 4000] [--workers N] [--repeats 5] [--quick]
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


def _lfw_subset(workdir: Path, images: int) -> tuple[Path, Path, str]:
    from data_prep.landmarks import read_landmarks

    points = read_landmarks(LFW / "landmarks.txt")
    root = workdir / "faces"
    root.mkdir()
    by_identity: dict[str, list[str]] = {}
    for relpath in points:
        by_identity.setdefault(relpath.split("/")[0], []).append(relpath)
    chosen: list[str] = []
    for identity in sorted(by_identity):
        if len(chosen) >= images:
            break
        if (LFW / "images" / identity).is_dir():
            (root / identity).symlink_to(LFW / "images" / identity)
            chosen += [p for p in by_identity[identity] if (LFW / "images" / p).is_file()]
    lines = "".join(
        p + " " + " ".join(f"{v:.2f}" for v in points[p].ravel()) + "\n" for p in chosen
    )
    (workdir / "landmarks.txt").write_text(lines)
    return root, workdir / "landmarks.txt", f"LFW subset ({len(chosen)} images, 150x150 JPEG)"


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
    from data_prep.images import read_file
    from data_prep.shards import process_image

    relpath, points = item
    jpg, _, _ = process_image(
        read_file(Path(_POOL_CONFIG.source) / relpath), points, _POOL_CONFIG, relpath
    )
    return len(jpg)


def _pool_shard(job: tuple) -> dict:
    from data_prep.shards import write_shard

    return write_shard(*job)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 200, 1

    from data_prep.config import PrepConfig
    from data_prep.executor import TaskRunner
    from data_prep.images import read_file
    from data_prep.landmarks import read_landmarks
    from data_prep.plan import make_plan
    from data_prep.run import run_prep
    from data_prep.shards import process_image, write_shard
    from data_prep.sources import iter_chunks, open_source

    workdir = Path(tempfile.mkdtemp(prefix="prep-bench-"))
    try:
        if LFW.joinpath("landmarks.txt").is_file():
            root, landmarks_file, what = _lfw_subset(workdir, args.images)
        else:
            root, landmarks_file, what = _synthetic(workdir, args.images)
        points = read_landmarks(landmarks_file)
        items = [(relpath, p.ravel().tolist()) for relpath, p in sorted(points.items())]
        shard_size = max(16, len(items) // (args.workers * 8))

        def config(out: str, executor: str = "ray") -> PrepConfig:
            return PrepConfig(
                source=str(root),
                out=out,
                landmarks=str(landmarks_file),
                shard_size=shard_size,
                executor=executor,
                progress=False,
            )

        base = config(str(workdir / "unused")).model_copy(update={"workers": args.workers})
        # The plan the Ray side writes (scan + plan are timed separately, in the end-to-end row).
        import pyarrow as pa

        from data_prep.scan import scan_chunk

        source = open_source(base)
        plan = make_plan(
            pa.concat_tables([scan_chunk(c, base) for c in iter_chunks(source, base)]), base
        )

        def shard_jobs(out: Path) -> list[tuple]:
            shard_config = config(str(out))
            return [(s.name, plan.shard_rows(s), shard_config, "folder") for s in plan.shards]

        times: dict[str, list[float]] = {
            "pool_shards": [],
            "ray_shards": [],
            "pool_bare": [],
            "run_prep": [],
        }
        with (
            # spawn: forking a process that already runs Ray (a test session) is unsafe.
            get_context("spawn").Pool(
                args.workers, initializer=_pool_init, initargs=(base,)
            ) as pool,
            TaskRunner(base) as runner,
        ):
            # Warm-up: every worker process started and every import done on both sides.
            list(pool.imap_unordered(_pool_work, items, chunksize=16))
            list(pool.imap_unordered(_pool_shard, shard_jobs(workdir / "warm-pool")))
            list(runner.map(write_shard, shard_jobs(workdir / "warm-ray")))
            for repeat in range(args.repeats):  # interleaved, so load changes hit every side
                jobs = shard_jobs(workdir / f"pool-{repeat}")
                start = time.perf_counter()
                list(pool.imap_unordered(_pool_shard, jobs))
                times["pool_shards"].append(time.perf_counter() - start)

                jobs = shard_jobs(workdir / f"ray-{repeat}")
                start = time.perf_counter()
                list(runner.map(write_shard, jobs))
                times["ray_shards"].append(time.perf_counter() - start)

                start = time.perf_counter()
                list(pool.imap_unordered(_pool_work, items, chunksize=16))
                times["pool_bare"].append(time.perf_counter() - start)

                start = time.perf_counter()
                run_prep(config(str(workdir / f"full-{repeat}")))
                times["run_prep"].append(time.perf_counter() - start)

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
        ("multiprocessing.Pool: write_shard per shard (baseline)", "pool_shards"),
        ("**Ray tasks: write_shard per shard (facetrain)**", "ray_shards"),
        ("multiprocessing.Pool: bare decode-align-encode, nothing written", "pool_bare"),
        ("run_prep end to end on Ray (scan+hash, plan, shards, manifests)", "run_prep"),
    ]
    lines = [
        "## Prep throughput: Ray tasks vs multiprocessing.Pool",
        "",
        f"{what}; {args.workers} worker processes each side, {len(plan.shards)} shards; "
        f"{args.repeats} interleaved runs. The baseline and Ray run the same function "
        "(decode, align, encode, write tar + part file) on the same shards, so their ratio is "
        "the cost of Ray as the executor. Ratios use medians (bests swing more on a shared machine).",
        "",
        "| method | images | median s | best s | images/s (median) | throughput vs baseline (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {count} | {median[key]:.2f} | {best[key]:.2f} | {count / median[key]:.0f} "
        f"| {median['pool_shards'] / median[key]:.2f}x |"
        for name, key in rows
    ]
    paired = [
        pool / ray for pool, ray in zip(times["pool_shards"], times["ray_shards"], strict=True)
    ]
    lines += [
        "",
        f"Ray vs Pool, median of the {len(paired)} paired runs (each pair ran back to back, under "
        f"similar load): **{statistics.median(paired):.2f}x** (range {min(paired):.2f}-{max(paired):.2f}).",
    ]
    lines += [
        "",
        "All runs (s): "
        + "; ".join(
            f"{name} " + ", ".join(f"{t:.2f}" for t in values) for name, values in times.items()
        ),
    ]
    lines += [
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
    pool_runs = times["pool_shards"]
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
