"""Peak driver memory of prep planning (dedupe, conflicts, filters, labels, shard plan) vs
dataset size.

Each run (a number of images and of images per identity) runs in a fresh process. It writes synthetic processed chunks (the planner's columns
only; no images: planning never sees pixels) to local files one chunk at a time, exactly as
run_prep's driver keeps them, then plans them with `data_prep.plan.make_plan` and builds every
shard's row list (what the driver sends to the shard tasks). 1 %
duplicates within an identity, 0.1 % images repeated under another identity, 0.5 % scan
rejects, `max_images=18`. Reported: the process's resident memory once the chunks are written
(the baseline: interpreter, numpy, pyarrow), and its peak (`ru_maxrss`) after planning.

    python benchmarks/prep_plan_memory.py [--runs 100000:20 1000000:20 4000000:80] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK_ROWS = 5000


def _chunk(index: int, images: int, per_identity: int, rng):
    """Rows [index * CHUNK_ROWS, ...) of the synthetic dataset, as the process tasks emit them."""
    import numpy as np
    import pyarrow as pa
    from facetrain.data_prep.plan import PLAN_INPUT_SCHEMA

    first = index * CHUNK_ROWS
    rows = np.arange(first, min(images, first + CHUNK_ROWS))
    identity_index = rows // per_identity
    digests = rng.integers(0, 256, size=(len(rows), 20), dtype=np.uint8)
    # A duplicate: the next image of the same identity repeats this one's bytes.
    duplicate = np.flatnonzero(rng.random(len(rows) - 1) < 0.01)
    duplicate = duplicate[identity_index[duplicate] == identity_index[duplicate + 1]]
    digests[duplicate + 1] = digests[duplicate]
    # A label conflict: the same bytes as an image of another identity (global hash, by row).
    conflict = rng.random(len(rows)) < 0.001
    shared = np.frombuffer(
        np.repeat(rows[conflict] // 997, 20).astype(np.uint8).tobytes(), np.uint8
    )
    digests[conflict] = shared.reshape(-1, 20) ^ 0x5A
    reason = np.where(rng.random(len(rows)) < 0.005, "truncated or corrupt image", None)
    return pa.table(
        {
            "identity": pa.array([f"id_{i:07d}" for i in identity_index], pa.string()),
            "source": pa.array(
                [
                    f"id_{i:07d}/{r % per_identity:04d}.jpg"
                    for r, i in zip(rows, identity_index, strict=True)
                ],
                pa.string(),
            ),
            "sha1": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(20), len(rows), [None, pa.py_buffer(digests.tobytes())]
            ),
            "face_size": pa.array(rng.uniform(60, 200, len(rows))),
            "reason": pa.array(reason, pa.string()),
            "error": pa.nulls(len(rows), pa.string()),
        },
        schema=PLAN_INPUT_SCHEMA,
    )


def _measure(images: int, per_identity: int) -> dict:
    """Runs in a child: write the chunks, plan them, report memory at both points."""
    import gc
    import resource

    import numpy as np
    from facetrain.data_prep.config import PrepConfig
    from facetrain.data_prep.plan import ChunkFiles, make_plan

    with tempfile.TemporaryDirectory(prefix="plan-memory-") as scratch:
        chunks = ChunkFiles(Path(scratch) / "chunks")
        rng = np.random.default_rng(0)
        for index in range(-(-images // CHUNK_ROWS)):
            chunks.add(index, _chunk(index, images, per_identity, rng))
        gc.collect()
        with open("/proc/self/statm") as statm:  # resident pages now (Linux)
            baseline = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
        started = time.perf_counter()
        config = PrepConfig(source="/synthetic", out="/unused", max_images=18, shard_size=5000)
        plan = make_plan(chunks, config, Path(scratch) / "plan")
        planned = sum(plan.shard_rows(spec).num_rows for spec in plan.shards)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": images,
        "per_identity": per_identity,
        "identities": len(plan.names),
        "baseline_mib": baseline,
        "peak_mib": peak,
        "seconds": seconds,
        "samples": planned,
        "rejects": sum(plan.rejected_by_reason.values()),
        "conflicts": plan.rejected_by_reason.get(
            "label conflict (same image under several identities)", 0
        ),
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["100000:20", "1000000:20", "4000000:20", "4000000:80"],
        help="IMAGES:IMAGES_PER_IDENTITY per run",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args(argv)
    runs = ["2000:20", "20000:20", "20000:80"] if args.quick else args.runs
    results = []
    for run in runs:
        images, per_identity = run.split(":")
        child = subprocess.run(
            [sys.executable, __file__, "--child", images, per_identity],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    base = results[0]
    base_increment = max(base["peak_mib"] - base["baseline_mib"], 1e-9)
    lines = [
        "## Prep planning: peak driver memory",
        "",
        f"Synthetic processed chunks of {CHUNK_ROWS:,} rows on local disk; each run in a fresh "
        "process. The planner streams the chunks (twice) and sorts hashes one on-disk bucket at "
        "a time, so what it holds grows with identities (a few numbers each), not with images: "
        "compare runs with the same number of identities.",
        "",
        "| images | identities | images per identity | RSS before planning (MiB) | peak RSS planning (MiB) "
        "| planning increment (MiB) | increment vs smallest | bytes per image | plan + shard lists (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        increment = row["peak_mib"] - row["baseline_mib"]
        lines.append(
            f"| {row['images']:,} | {row['identities']:,} | {row['per_identity']} "
            f"| {row['baseline_mib']:.0f} "
            f"| {row['peak_mib']:.0f} | {increment:.0f} | {increment / base_increment:.1f}x "
            f"| {increment * 2**20 / row['images']:.0f} | {row['seconds']:.1f} |"
        )
    lines += [
        "",
        "Planned samples / rejects (label conflicts): "
        + "; ".join(
            f"{row['images']:,}: {row['samples']:,} / {row['rejects']:,} ({row['conflicts']:,})"
            for row in results
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_measure(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(main())
