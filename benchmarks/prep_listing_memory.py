"""Peak driver memory of listing an image folder with a landmark list vs the list's length.

A synthetic whitespace landmark list of N rows (`id_XXXXXXX/NNNN.jpg` and 10 numbers, 20 images
per identity, identities in a scrambled order) goes with a small real folder tree (the first 20
identities, each with a listed file and an unlisted one). Each measurement runs in a fresh
process: `streamed` is what `facetrain prep` does (open_source sorts the list into runs on disk,
then iter_chunks merges them; chunks are consumed and dropped); the baseline `whole list` only
reads the list into one in-memory table (`read_landmark_table`), which is where the listing
started before it was streamed (it then built row indexes on top). Reported: resident memory
after imports, peak (`ru_maxrss`) and the time taken.

    python benchmarks/prep_listing_memory.py [--rows 100000 1000000 4000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_IDENTITY = 20
FOLDER_IDENTITIES = 20
WRITE_ROWS = 50_000


def write_list(path: Path, rows: int) -> None:
    """The synthetic list, written a block at a time (identity order scrambled, rows within an
    identity in order)."""
    identities = -(-rows // PER_IDENTITY)
    with path.open("w") as out:
        for start in range(0, rows, WRITE_ROWS):
            lines = []
            for row in range(start, min(rows, start + WRITE_ROWS)):
                slot, image = divmod(row, PER_IDENTITY)
                identity = (slot * 7919) % identities if identities % 7919 else slot
                x = 30.0 + image % 7
                lines.append(
                    f"id_{identity:07d}/{image:04d}.jpg {x} 51.5 {x + 34} 51.2 {x + 18} 71.7 "
                    f"{x + 3} 92.3 {x + 32} 92.2\n"
                )
            out.writelines(lines)


def make_folder(root: Path) -> None:
    for identity in range(FOLDER_IDENTITIES):
        folder = root / f"id_{identity:07d}"
        folder.mkdir(parents=True)
        (folder / "0000.jpg").write_bytes(b"")
        (folder / "extra.jpg").write_bytes(b"")


def _resident_mib() -> float:
    import resource

    with open("/proc/self/statm") as statm:  # resident pages now (Linux)
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(root: str, landmark_file: str, mode: str) -> dict:
    """Runs in a child: list (or only read) the landmark list, report memory and time."""
    import gc
    import resource

    from facetrain.data_prep.config import PrepConfig
    from facetrain.data_prep.landmarks import read_landmark_table
    from facetrain.data_prep.sources import iter_chunks, open_source

    gc.collect()
    baseline = _resident_mib()
    started = time.perf_counter()
    entries = chunks = 0
    if mode == "streamed":
        config = PrepConfig(source=root, out="/unused", landmarks=landmark_file)
        source = open_source(config)
        for chunk in iter_chunks(source, config):
            entries += len(chunk.entries)
            chunks += 1
    else:
        entries = read_landmark_table(landmark_file).table.num_rows
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "baseline_mib": baseline,
        "peak_mib": peak,
        "seconds": seconds,
        "entries": entries,
        "chunks": chunks,
    }


def _child(root: Path, landmark_file: Path, mode: str) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(root), str(landmark_file), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=int, default=[100_000, 1_000_000, 4_000_000])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args(argv)
    sizes = [2_000, 20_000] if args.quick else args.rows
    results = []
    with tempfile.TemporaryDirectory(prefix="listing-memory-") as scratch:
        root = Path(scratch) / "faces"
        make_folder(root)
        for rows in sizes:
            landmark_file = Path(scratch) / f"landmarks-{rows}.txt"
            write_list(landmark_file, rows)
            streamed = _child(root, landmark_file, "streamed")
            whole = _child(root, landmark_file, "whole")
            list_mib = landmark_file.stat().st_size / 2**20
            landmark_file.unlink()
            results.append(
                {"rows": rows, "list_mib": list_mib, "streamed": streamed, "whole": whole}
            )
    lines = [
        "## Prep listing: peak driver memory",
        "",
        f"Synthetic whitespace landmark list ({PER_IDENTITY} rows per identity, scrambled "
        f"identity order) plus a {FOLDER_IDENTITIES}-identity folder tree; each measurement in a "
        "fresh process. `streamed`: open_source + iter_chunks as `facetrain prep` lists (sorted "
        "runs on disk, k-way merge). Baseline `whole list`: read_landmark_table into one "
        "in-memory table (the first step of the listing before it was streamed).",
        "",
        "| rows | list (MiB) | RSS after imports (MiB) | peak streamed (MiB) | streamed increment "
        "(MiB) | peak whole list (MiB) | whole-list increment (MiB) | streamed / whole increment "
        "| streamed s | whole list s | entries listed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        streamed, whole = row["streamed"], row["whole"]
        streamed_increment = streamed["peak_mib"] - streamed["baseline_mib"]
        whole_increment = whole["peak_mib"] - whole["baseline_mib"]
        lines.append(
            f"| {row['rows']:,} | {row['list_mib']:.0f} | {streamed['baseline_mib']:.0f} "
            f"| {streamed['peak_mib']:.0f} | {streamed_increment:.0f} | {whole['peak_mib']:.0f} "
            f"| {whole_increment:.0f} | {streamed_increment / max(whole_increment, 1e-9):.2f}x "
            f"| {streamed['seconds']:.1f} | {whole['seconds']:.1f} | {streamed['entries']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_measure(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        print(main())
