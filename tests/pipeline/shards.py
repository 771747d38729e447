"""Tiny identity-grouped shards in the `facetrain prep` format, written directly for tests.

Each identity's faces are a flat colour chosen from its label plus noise, so a tiny CNN can
learn them in a few steps (the demo's faces, facetrain.jobs.demo.synthetic_faces, are made to
be hard for pixels and take far more); images are contiguous per identity inside one shard.
The tar and dataset.json come from data_prep's own writer and schema, so these shards are
what prep writes, pixels aside.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from facetrain.data_prep.shard_format import (
    DATASET_FILE,
    IMAGE_KEY,
    LABEL_KEY,
    PROVENANCE_KEY,
    SHARDS_DIR,
    DatasetManifest,
)
from facetrain.data_prep.tar_writer import ShardTarWriter
from PIL import Image


def face_pixels(label: int, index: int, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng([label, index])
    colour = np.random.default_rng(label).integers(30, 225, size=3)
    noise = rng.integers(-25, 26, size=(size, size, 3))
    pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
    pixels[: size // 4, : size // 2] = 255 - pixels[: size // 4, : size // 2]  # an asymmetric mark
    return pixels


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_shards(
    root: Path,
    counts: list[int],
    num_shards: int,
    size: int = 112,
    seed: int = 0,
    bad_images: frozenset[tuple[int, int]] = frozenset(),
) -> Path:
    """Write identities with `counts[label]` images into `num_shards` shards under `root`;
    the (label, index) pairs in `bad_images` get bytes that no decoder accepts (the shard
    and dataset.json stay consistent: only the image is broken)."""
    shard_dir = root / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).permutation(len(counts))
    entries = []
    for shard, members in enumerate(np.array_split(labels, num_shards)):
        name = f"train-{shard:06d}.tar"
        with open(shard_dir / name, "wb") as stream:
            writer = ShardTarWriter(stream)
            # Members in name order (cls, jpg, json), as these shards have always held them.
            writer.write_samples(
                (
                    f"{label:05d}_{index:04d}",
                    {
                        LABEL_KEY: str(int(label)).encode(),
                        IMAGE_KEY: b"\xff\xd8 not a jpeg"
                        if (int(label), index) in bad_images
                        else _jpeg(face_pixels(int(label), index, size)),
                        PROVENANCE_KEY: json.dumps({"identity": f"id{label:05d}"}).encode(),
                    },
                )
                for label in members
                for index in range(counts[label])
            )
            writer.close()
        entries.append(
            {
                "name": name,
                "samples": int(sum(counts[m] for m in members)),
                "identities": len(members),
                "bytes": writer.bytes,
                "sha256": writer.sha256,
            }
        )
    manifest = DatasetManifest.model_validate(
        {"num_classes": len(counts), "splits": {"train": {"shards": entries}}}
    )
    (root / DATASET_FILE).write_text(manifest.to_json())
    return root
