"""Peak driver memory of prep planning (dedupe, filters, labels, shard plan) vs dataset size.

Each measurement runs in a fresh process on a synthetic scan table (no images: the planner
only sees scan rows): 20 images per identity, 1 % duplicates within an identity, 0.1 % images
repeated under another identity, 0.5 % scan rejects. Reported: the process's peak RSS
RSS after building the scan table (the baseline; Linux /proc) and the peak RSS (`ru_maxrss`)
after planning; their difference is what planning adds.

    python benchmarks/prep_plan_memory.py [--sizes 100000 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _scan_table(images: int, seed: int = 0):
    import numpy as np
    import pyarrow as pa

    from data_prep.scan import SCAN_SCHEMA

    rng = np.random.default_rng(seed)
    per_identity = 20
    identity_index = np.arange(images) // per_identity
    identities = pa.array([f"id_{i:07d}" for i in identity_index], pa.string())
    sources = pa.array(
        [f"id_{i:07d}/{n % per_identity:04d}.jpg" for n, i in enumerate(identity_index)],
        pa.string(),
    )
    digests = rng.integers(0, 256, size=(images, 20), dtype=np.uint8)
    within = rng.choice(images - 1, size=images // 100, replace=False)
    within = within[identity_index[within] == identity_index[within + 1]]
    digests[within + 1] = digests[within]  # the next image of the same identity: a duplicate
    across = rng.choice(images - per_identity, size=images // 1000, replace=False)
    digests[across + per_identity] = digests[across]  # the next identity: a label conflict
    sha1 = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(20), images, [None, pa.py_buffer(digests.tobytes())]
    )
    points = pa.FixedSizeListArray.from_arrays(pa.array(rng.uniform(30, 120, images * 10)), 10)
    reason = np.where(rng.random(images) < 0.005, "truncated or corrupt image", None)
    return pa.table(
        {
            "identity": identities,
            "source": sources,
            "offset": pa.nulls(images, pa.int64()),
            "sha1": sha1,
            "bytes": pa.array(rng.integers(5_000, 50_000, images), pa.int64()),
            "width": pa.array(np.full(images, 250, np.int32)),
            "height": pa.array(np.full(images, 250, np.int32)),
            "landmarks": points,
            "face_size": pa.array(rng.uniform(60, 200, images)),
            "reason": pa.array(reason, pa.string()),
        },
        schema=SCAN_SCHEMA,
    )


def _measure(images: int) -> dict:
    """Runs in a child: build the scan table, plan it, report peak RSS at both points."""
    import gc
    import resource

    from data_prep.config import PrepConfig
    from data_prep.plan import make_plan

    scan = _scan_table(images)
    gc.collect()
    with open("/proc/self/statm") as statm:  # resident pages now (Linux)
        built = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    started = time.perf_counter()
    plan = make_plan(scan, PrepConfig(source="/synthetic", out="/unused", max_images=18))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images": images,
        "table_mib": scan.nbytes / 2**20,
        "built_mib": built,
        "peak_mib": peak,
        "seconds": seconds,
        "samples": plan.samples.num_rows,
        "rejects": plan.rejects.num_rows,
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args(argv)
    sizes = [2_000, 20_000] if args.quick else args.sizes
    results = []
    for images in sizes:
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(images)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    base = results[0]
    lines = [
        "## Prep planning: peak driver memory",
        "",
        "| images | scan table (MiB) | RSS after building it (MiB) | peak RSS planning (MiB) "
        "| planning increment (MiB) | increment vs smallest | plan (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        increment = row["peak_mib"] - row["built_mib"]
        base_increment = max(base["peak_mib"] - base["built_mib"], 1e-9)
        lines.append(
            f"| {row['images']:,} | {row['table_mib']:.0f} | {row['built_mib']:.0f} "
            f"| {row['peak_mib']:.0f} | {increment:.0f} | {increment / base_increment:.1f}x "
            f"| {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_measure(int(sys.argv[2]))))
    else:
        print(main())
