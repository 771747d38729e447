"""Loader throughput: facetrain's P x K WebDataset stream vs a torch DataLoader on a folder.

Both read the *same* 112x112 JPEG bytes (LFW faces from ../shared/data/lfw, centre-cropped and
resized, or synthetic faces where LFW is absent): once packed into identity-grouped shards
(`facetrain prep` layout), once as ROOT/<class>/<key>.jpg files. Both decode with PIL, flip
at random and deliver float [B, 3, 112, 112] batches in [-1, 1] to the training process, with
the same number of worker processes. The baseline is the usual map-style Dataset (open file,
decode, per-sample tensor) + shuffling DataLoader; facetrain streams tar shards, decodes into
uint8 batches in the workers and normalises once per batch in the training process.

    .venv/bin/python benchmarks/loader_throughput.py [--quick] [--images 4000] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
import torch
import webdataset as wds
from facetrain.pipeline.config import DataConfig
from facetrain.pipeline.data.loader import build_loader
from facetrain.pipeline.data.shards import DatasetIndex, read_dataset_index
from facetrain.pipeline.data.transforms import normalize_batch, to_tensor
from PIL import Image
from torch.utils.data import DataLoader, Dataset

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "images"


def face_jpegs(num_images: int, seed: int = 0) -> list[tuple[int, str, bytes]]:
    """(label, key, 112x112 JPEG bytes), grouped by identity, from LFW or synthetic."""
    faces = []
    if LFW.is_dir():
        people = sorted(p for p in LFW.iterdir() if p.is_dir())
        people = [p for p in people if len(list(p.glob("*.jpg"))) >= 2]
        for label, person in enumerate(people):
            for path in sorted(person.glob("*.jpg")):
                image = (
                    Image.open(path).convert("RGB").crop((19, 19, 131, 131))
                )  # 150 -> 112 centre
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=95)
                faces.append((label, f"{label:05d}_{path.stem}", buffer.getvalue()))
                if len(faces) >= num_images:
                    return faces
    rng = np.random.default_rng(seed)
    label = len({f[0] for f in faces})
    while len(faces) < num_images:
        for index in range(int(rng.integers(2, 12))):
            pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
            faces.append((label, f"{label:05d}_{index:04d}", buffer.getvalue()))
        label += 1
    return faces[:num_images]


def write_both(faces, root: Path, shard_size: int = 1000) -> tuple[Path, Path]:
    shard_root, folder = root / "shards", root / "folder"
    (shard_root / "shards").mkdir(parents=True)
    entries, start = [], 0
    while start < len(faces):
        end = min(len(faces), start + shard_size)
        while end < len(faces) and faces[end][0] == faces[end - 1][0]:
            end += 1  # never split an identity
        name = f"train-{len(entries):06d}.tar"
        with wds.TarWriter(str(shard_root / "shards" / name)) as sink:
            for label, key, data in faces[start:end]:
                sink.write({"__key__": key, "jpg": data, "cls": str(label)})
        chunk = faces[start:end]
        tar_bytes = (shard_root / "shards" / name).read_bytes()
        entries.append(
            {
                "name": name,
                "samples": len(chunk),
                "identities": len({f[0] for f in chunk}),
                "bytes": len(tar_bytes),
                "sha256": hashlib.sha256(tar_bytes).hexdigest(),
            }
        )
        start = end
    manifest = {"num_classes": faces[-1][0] + 1, "splits": {"train": {"shards": entries}}}
    (shard_root / "dataset.json").write_text(json.dumps(manifest))
    for label, key, data in faces:
        (folder / f"{label:05d}").mkdir(parents=True, exist_ok=True)
        (folder / f"{label:05d}" / f"{key}.jpg").write_bytes(data)
    return shard_root, folder


class ImageFolderFaces(Dataset):
    """The baseline: one file per sample, decoded and converted per sample."""

    def __init__(self, root: Path):
        self.items = [(path, int(path.parent.name)) for path in sorted(root.glob("*/*.jpg"))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        pixels = np.asarray(Image.open(path).convert("RGB"))
        if np.random.random() < 0.5:
            pixels = pixels[:, ::-1]
        return to_tensor(np.ascontiguousarray(pixels)), label


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (the loader workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


def measure(batches, num_batches: int, warmup: int) -> tuple[float, float]:
    """(images per second, images per CPU-second) over `num_batches` batches after `warmup`.

    The second figure is what the loader costs, whatever else the machine is running."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    cpu_start, started, images = _cpu_seconds(), time.perf_counter(), 0
    for _ in range(num_batches):
        images += next(iterator).shape[0]
    cpu = _cpu_seconds() - cpu_start
    return images / (time.perf_counter() - started), images / max(cpu, 1e-9)


def endless_folder_batches(loader):
    while True:
        for images, _ in loader:
            yield images


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per side")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batches, args.repeats = 600, 15, 1
    torch.set_num_threads(1)
    batch_size = args.p * args.k
    faces = face_jpegs(args.images)
    source = "LFW (centre 112x112 of the 150x150 crops)" if LFW.is_dir() else "synthetic"
    rates: dict[str, list[tuple[float, float]]] = {"folder": [], "facetrain": [], "unverified": []}
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        shard_root, folder = write_both(faces, Path(tmp))
        index = read_dataset_index(str(shard_root))
        # The same stream without the SHA-256 and size checks: what verification costs.
        unverified = DatasetIndex(
            index.num_classes,
            tuple(dataclasses.replace(s, bytes=None, sha256=None) for s in index.shards),
            index.manifest,
        )
        data = DataConfig(
            shards=str(shard_root),
            batch={"p": args.p, "k": args.k},
            workers=args.workers,
            buffer_identities=max(64, 2 * args.p),
        )
        for _ in range(args.repeats):
            baseline = DataLoader(
                ImageFolderFaces(folder),
                batch_size=batch_size,
                shuffle=True,
                num_workers=args.workers,
                drop_last=True,
                prefetch_factor=4,
                persistent_workers=True,  # no restart per pass (and its CPU stays counted)
            )
            rates["folder"].append(
                measure(endless_folder_batches(baseline), args.batches, warmup=args.workers)
            )
            del baseline
            ours = build_loader(index, data, "pk", rank=0, world_size=1, seed=0)
            stream = (normalize_batch(batch["images"]) for batch in ours)
            rates["facetrain"].append(measure(stream, args.batches, warmup=args.workers))
            del ours, stream
            plain = build_loader(unverified, data, "pk", rank=0, world_size=1, seed=0)
            stream = (normalize_batch(batch["images"]) for batch in plain)
            rates["unverified"].append(measure(stream, args.batches, warmup=args.workers))
            del plain, stream
    wall = {name: float(np.median([r[0] for r in runs])) for name, runs in rates.items()}
    per_cpu = {name: float(np.median([r[1] for r in runs])) for name, runs in rates.items()}
    return "\n".join(
        [
            "## Loader throughput: P x K WebDataset stream vs torch DataLoader on an image folder",
            "",
            f"{len(faces):,} JPEGs ({source}), batches of {args.p}x{args.k}={batch_size}, "
            f"{args.workers} worker processes each, {os.cpu_count()} CPU cores, median of "
            f"{args.repeats} alternating runs of {args.batches} batches. Target: >= 1.5x. "
            "Images per CPU-second (training process + workers) is what a loader costs and does "
            "not move with other load on the machine; images/s is what this machine gave.",
            "",
            "| loader | images/s | ratio | images per CPU-s | ratio |",
            "|---|---:|---:|---:|---:|",
            f"| torch DataLoader, map-style folder dataset (baseline) | {wall['folder']:.0f} | 1.00 "
            f"| {per_cpu['folder']:.0f} | 1.00 |",
            f"| facetrain P x K stream over shards | {wall['facetrain']:.0f} | "
            f"{wall['facetrain'] / wall['folder']:.2f} | {per_cpu['facetrain']:.0f} | "
            f"{per_cpu['facetrain'] / per_cpu['folder']:.2f} |",
            f"| the same without size/SHA-256 checks | {wall['unverified']:.0f} | "
            f"{wall['unverified'] / wall['folder']:.2f} | {per_cpu['unverified']:.0f} | "
            f"{per_cpu['unverified'] / per_cpu['folder']:.2f} |",
            "",
            "Shard verification (size on open, SHA-256 and sample count while streaming) costs "
            f"{100 * (1 - per_cpu['facetrain'] / per_cpu['unverified']):.1f}% of the loader's "
            "images per CPU-second.",
            "",
        ]
    )


if __name__ == "__main__":
    print(main())
