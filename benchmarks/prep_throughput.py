"""Prep throughput: `run_prep` end to end on Ray vs a bare multiprocessing.Pool, same cores, same run.

Baseline (the target in the data_prep issue): a multiprocessing.Pool with as many processes as
Ray gets CPUs, doing only decode -> align (arcface 112x112) -> JPEG-encode of every image with
`data_prep.faces.process_image` (the file read included), writing nothing. facetrain:
`run_prep` end to end on embedded Ray into a fresh output directory (list, process = hash +
header checks + decode/align/encode, plan, shard tars, manifests, dataset.json). Runs are
interleaved so load changes hit both sides; ratios use medians and back-to-back pairs. Also
shown: run_prep's time per phase, and `image_library` pil vs opencv per image in one process.
Images: real LFW (../shared/data/lfw, all of it by default: 150x150 JPEGs, small enough that
everything but the pixel work weighs most) when present, else synthetic; then the same faces
enlarged to 250x250 (CASIA-WebFace's size) as a second set.

    python benchmarks/prep_throughput.py [--images N] [--workers N] [--repeats 5]
        [--enlarge 250 ...] [--quick]
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
    from facetrain.data_prep.landmarks import read_landmarks

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
    from facetrain.data_prep.align import TEMPLATES
    from PIL import Image

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
_POOL_PIL_CONFIG = None


def _pool_init(config) -> None:
    global _POOL_CONFIG, _POOL_PIL_CONFIG
    _POOL_CONFIG = config
    _POOL_PIL_CONFIG = config.model_copy(update={"image_library": "pil"})


def _pool_work(item: tuple[str, list[float]]) -> int:
    """One face with run_prep's own image library (`auto`: OpenCV when it imports)."""
    return _pool_face(item, _POOL_CONFIG)


def _pool_work_pil(item: tuple[str, list[float]]) -> int:
    """One face with PIL: the bare PIL pool the issue's throughput bar is set against."""
    return _pool_face(item, _POOL_PIL_CONFIG)


def _pool_face(item: tuple[str, list[float]], config) -> int:
    from facetrain.data_prep.faces import process_image
    from facetrain.data_prep.images import read_file

    relpath, points = item
    jpg, _, _ = process_image(read_file(Path(config.source) / relpath), points, config, relpath)
    return len(jpg)


def _enlarged(root: Path, landmarks_file: Path, workdir: Path, side: int) -> tuple[Path, Path]:
    """The same faces resized to side x side (landmarks scaled): a CASIA-size proxy."""
    from facetrain.data_prep.landmarks import read_landmarks
    from PIL import Image

    points = read_landmarks(landmarks_file)
    out = workdir / f"faces-{side}"
    lines = []
    for relpath, p in sorted(points.items()):
        with Image.open(root / relpath) as image:
            scale = side / image.width
            (out / relpath).parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
                out / relpath, quality=95
            )
        lines.append(relpath + " " + " ".join(f"{v:.3f}" for v in (p * scale).ravel()) + "\n")
    (workdir / f"landmarks-{side}.txt").write_text("".join(lines))
    return out, workdir / f"landmarks-{side}.txt"


def _compare(root: Path, landmarks_file: Path, workdir: Path, args) -> dict:
    """Interleaved timings of the bare Pool and run_prep on one image set."""
    from facetrain.data_prep.config import PrepConfig
    from facetrain.data_prep.executor import TaskRunner
    from facetrain.data_prep.landmarks import read_landmarks
    from facetrain.data_prep.run import run_prep

    points = read_landmarks(landmarks_file)
    items = [(relpath, p.ravel().tolist()) for relpath, p in sorted(points.items())]

    def config(out: Path) -> PrepConfig:
        return PrepConfig(
            source=str(root),
            out=str(out),
            landmarks=str(landmarks_file),
            workers=args.workers,
            progress=False,
            **({"images_per_scan_task": args.images_per_task} if args.images_per_task else {}),
        )

    base = config(workdir / "unused")
    times: dict[str, list[float]] = {"pool_bare": [], "pool_pil": [], "run_prep": []}
    summaries = []
    with (
        # spawn: forking a process that already runs Ray (a test session) is unsafe.
        get_context("spawn").Pool(args.workers, initializer=_pool_init, initargs=(base,)) as pool,
        TaskRunner(base),  # run_prep below finds this Ray running and uses it
    ):
        # Warm-up: every worker process started and every import done on both sides.
        list(pool.imap_unordered(_pool_work, items, chunksize=16))
        list(pool.imap_unordered(_pool_work_pil, items, chunksize=16))
        run_prep(config(workdir / "warm"))
        shutil.rmtree(workdir / "warm")
        for repeat in range(args.repeats):
            start = time.perf_counter()
            list(pool.imap_unordered(_pool_work, items, chunksize=16))
            times["pool_bare"].append(time.perf_counter() - start)

            start = time.perf_counter()
            list(pool.imap_unordered(_pool_work_pil, items, chunksize=16))
            times["pool_pil"].append(time.perf_counter() - start)

            start = time.perf_counter()
            summaries.append(run_prep(config(workdir / f"full-{repeat}")))
            times["run_prep"].append(time.perf_counter() - start)
            shutil.rmtree(workdir / f"full-{repeat}")
    return {"items": items, "base": base, "times": times, "summaries": summaries}


def _per_image_by_library(root: Path, measured: dict) -> list[tuple[str, float, int]]:
    from facetrain.data_prep.faces import process_image
    from facetrain.data_prep.images import read_file

    sample = measured["items"][:300]
    blobs = [(read_file(root / relpath), p) for relpath, p in sample]
    rows = []
    for library in ("pil", "opencv"):
        try:
            library_config = measured["base"].model_copy(update={"image_library": library})
            for _ in range(2):  # the first pass warms caches and imports
                start = time.perf_counter()
                for data, p in blobs:
                    process_image(data, p, library_config, "bench")
                seconds = time.perf_counter() - start
            rows.append((f"image_library: {library}", seconds, len(sample)))
        except ImportError:
            rows.append((f"image_library: {library} (not installed)", float("nan"), len(sample)))
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="default: all of LFW (or 4000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--enlarge",
        type=int,
        nargs="*",
        default=[250],
        help="also measure the same faces resized to these sides (default 250: CASIA's size)",
    )
    parser.add_argument(
        "--images-per-task", type=int, help="run_prep's images_per_scan_task (default: its own)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 200, 1

    workdir = Path(tempfile.mkdtemp(prefix="prep-bench-"))
    try:
        if LFW.joinpath("landmarks.txt").is_file():
            root, landmarks_file, what = _lfw_subset(workdir, args.images)
        else:
            root, landmarks_file, what = _synthetic(workdir, args.images or 4000)
        sets = [(what, root, landmarks_file)]
        for side in args.enlarge:
            enlarged_root, enlarged_landmarks = _enlarged(root, landmarks_file, workdir, side)
            sets.append(
                (f"the same faces enlarged to {side}x{side}", enlarged_root, enlarged_landmarks)
            )
        measured = [(name, _compare(r, lm, workdir, args)) for name, r, lm in sets]
        serial = _per_image_by_library(root, measured[0][1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _report(measured, serial, args)


def _report(measured: list[tuple[str, dict]], serial, args) -> str:
    first = measured[0][1]["summaries"][-1]
    first_library = measured[0][1]["base"].image_library
    lines = [
        "## Prep throughput: run_prep vs a bare multiprocessing.Pool",
        "",
        f"{measured[0][0]}; {args.workers} processes on each side; {args.repeats} interleaved runs "
        f"per image set; image_library {first_library}: run_prep and the baseline Pool use "
        "it, a second Pool uses PIL (the bar: run_prep >= 1.5x that PIL Pool, >= 0.9x the "
        "same-library Pool); "
        "the baseline only reads, decodes, aligns and encodes each face; run_prep "
        f"also lists, hashes, dedupes, plans and writes the shard tars ({sum(v['shards'] for v in first.splits.values())} "
        "at the default shard_size) and the manifests. Ratios use medians (bests swing more on a "
        "shared machine).",
        "",
        "| images | method | count | median s | best s | images/s (median) | vs baseline (median) | paired runs: median (range) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in measured:
        times, count = result["times"], len(result["items"])
        median = {key: statistics.median(values) for key, values in times.items()}
        best = {key: min(values) for key, values in times.items()}
        paired = [p / o for p, o in zip(times["pool_bare"], times["run_prep"], strict=True)]
        library = result["base"].image_library
        for label, key in (
            (
                f"multiprocessing.Pool ({library}): decode-align-encode only, nothing written "
                "(baseline)",
                "pool_bare",
            ),
            ("multiprocessing.Pool (pil): decode-align-encode only, nothing written", "pool_pil"),
            (f"**facetrain run_prep on Ray ({library}), end to end**", "run_prep"),
        ):
            ratio = f"{median['pool_bare'] / median[key]:.2f}x"
            pairs = (
                f"**{statistics.median(paired):.2f}x** ({min(paired):.2f}-{max(paired):.2f})"
                if key == "run_prep"
                else ""
            )
            lines.append(
                f"| {name} | {label} | {count} | {median[key]:.2f} | {best[key]:.2f} "
                f"| {count / median[key]:.0f} | {ratio} | {pairs} |"
            )
    for name, result in measured:
        times = result["times"]
        paired_pil = [p / o for p, o in zip(times["pool_pil"], times["run_prep"], strict=True)]
        lines.append(
            f"\n{name}: run_prep vs the bare PIL Pool: median "
            f"**{statistics.median(times['pool_pil']) / statistics.median(times['run_prep']):.2f}x**"
            f", paired {min(paired_pil):.2f}-{max(paired_pil):.2f}x (target >= 1.5x)"
        )
    lines += [
        "",
        "Target: >= 0.9x against the same-library Pool. run_prep time by phase (median over runs, s), and its process stage "
        "alone (Ray tasks reading, hashing, checking, decoding, aligning and encoding every face "
        "and writing chunk files: the baseline's work and more) against the baseline:",
        "",
    ]
    for name, result in measured:
        summaries = result["summaries"]
        phases = {
            phase: statistics.median(s.phase_seconds[phase] for s in summaries)
            for phase in summaries[-1].phase_seconds
        }
        stage = statistics.median(result["times"]["pool_bare"]) / phases["process"]
        lines.append(
            f"- {name}: "
            + ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in phases.items())
            + f"; process stage vs baseline **{stage:.2f}x**"
        )
    lines += ["", "All runs (s):", ""]
    for name, result in measured:
        lines.append(
            f"- {name}: "
            + "; ".join(
                f"{key} " + ", ".join(f"{t:.2f}" for t in values)
                for key, values in result["times"].items()
            )
        )
    lines += [
        "",
        "Per-image work (decode, align, encode) by image library, one process, same images:",
        "",
        "| library | images | seconds | images/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {count} | {seconds:.3f} | {count / seconds:.0f} |"
        for name, seconds, count in serial
    ]
    pool_runs = measured[0][1]["times"]["pool_bare"]
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
