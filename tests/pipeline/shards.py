"""Tiny identity-grouped shards in the `facetrain prep` format, written directly for tests.

Each identity's faces are a flat colour chosen from its label plus noise, so a tiny CNN can
learn them in a few steps; images are contiguous per identity inside one shard.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def face_pixels(label: int, index: int, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng([label, index])
    colour = np.random.default_rng(label).integers(30, 225, size=3)
    noise = rng.integers(-25, 26, size=(size, size, 3))
    pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
    pixels[: size // 4, : size // 2] = 255 - pixels[: size // 4, : size // 2]  # an asymmetric mark
    return pixels


def write_shards(
    root: Path, counts: list[int], num_shards: int, size: int = 112, seed: int = 0
) -> Path:
    """Write identities with `counts[label]` images into `num_shards` shards under `root`."""
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).permutation(len(counts))
    entries = []
    for shard, members in enumerate(np.array_split(labels, num_shards)):
        name = f"train-{shard:06d}.tar"
        with wds.TarWriter(str(shard_dir / name)) as sink:
            for label in members:
                for index in range(counts[label]):
                    buffer = io.BytesIO()
                    Image.fromarray(face_pixels(int(label), index, size)).save(
                        buffer, "JPEG", quality=90
                    )
                    sink.write(
                        {
                            "__key__": f"{label:05d}_{index:04d}",
                            "jpg": buffer.getvalue(),
                            "cls": str(int(label)),
                            "json": json.dumps({"identity": f"id{label:05d}"}),
                        }
                    )
        entries.append(
            {
                "name": name,
                "samples": int(sum(counts[m] for m in members)),
                "identities": len(members),
            }
        )
    manifest = {"num_classes": len(counts), "splits": {"train": {"shards": entries}}}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root
