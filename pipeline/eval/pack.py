"""Pairs file + images -> an insightface verification `.bin` (`facetrain pack`).

The faces are aligned by data_prep's aligner and template, exactly as `facetrain prep` aligns
training faces and `facetrain eval verify --landmarks` aligns pairs, so a pack evaluates the
same crop, colour order and template as the pairs route. Pair p is images 2p and 2p+1, in the
pairs file's order, so a View 2 `pairs.txt` keeps its ten folds of 600 as insightface's
contiguous folds. A pair with an unusable image is left out of the pack (and reported).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from facetrain.pipeline.eval.bin_format import write_bin
from facetrain.pipeline.eval.pairs import read_pairs
from facetrain.pipeline.eval.valsets import decode_faces

PACK_FORMATS = ("jpeg", "png")
PACK_CHUNK = 1024


@dataclass(frozen=True)
class PackResult:
    path: Path
    pairs: int
    images: int
    skipped: list[dict] = field(default_factory=list)  # {"a", "b", "same", "reason"}


def encode_face(face: np.ndarray, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """An aligned [112, 112, 3] uint8 RGB face as JPEG (insightface's packs) or lossless PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(face).save(buffer, format="JPEG", quality=quality)
    elif image_format == "png":
        Image.fromarray(face).save(buffer, format="PNG")
    else:
        raise ValueError(f"pack format {image_format!r}: expected one of {', '.join(PACK_FORMATS)}")
    return buffer.getvalue()


def pack_pairs(
    pairs: str | Path,
    images: str | Path,
    out: str | Path,
    landmarks: str | Path | None = None,
    template: str = "arcface",
    image_format: str = "jpeg",
    quality: int = 95,
    workers: int = 4,
    progress: bool = True,
) -> PackResult:
    """Align, encode and pickle every pair of `pairs` into `out` (insightface's `.bin`)."""
    from facetrain.pipeline.eval.evaluate import folder_source

    if image_format not in PACK_FORMATS:
        raise ValueError(f"pack format {image_format!r}: expected one of {', '.join(PACK_FORMATS)}")
    pair_list = read_pairs(pairs)
    source = folder_source(images, landmarks, template)
    from tqdm import tqdm

    keys = pair_list.unique_keys()
    encoded: dict[str, bytes] = {}
    failures: dict[str, str] = {}
    # In chunks: only the encoded bytes of a whole set are held, never all decoded faces.
    with tqdm(total=len(keys), desc="packing", unit="img", disable=not progress) as bar:
        for start in range(0, len(keys), PACK_CHUNK):
            decoded = decode_faces(source, keys[start : start + PACK_CHUNK], workers=workers)
            failures.update(decoded.failures)
            for key, face in zip(decoded.keys, decoded.faces, strict=True):
                encoded[key] = encode_face(face, image_format, quality)
            bar.update(len(decoded.keys) + len(decoded.failures))
    packed_images: list[bytes] = []
    is_same: list[bool] = []
    skipped = []
    for key_a, key_b, same in zip(pair_list.keys_a, pair_list.keys_b, pair_list.is_same, strict=True):
        if key_a in encoded and key_b in encoded:
            packed_images += [encoded[key_a], encoded[key_b]]
            is_same.append(bool(same))
            continue
        reason = "; ".join(
            f"{key}: {failures.get(key, 'not decoded')}"
            for key in (key_a, key_b)
            if key not in encoded
        )
        skipped.append({"a": key_a, "b": key_b, "same": bool(same), "reason": reason})
    if not is_same:
        first = skipped[0]["reason"] if skipped else "the pairs file lists no pair"
        raise ValueError(f"pairs file {pairs}: no pair could be packed (first problem: {first})")
    path = write_bin(out, packed_images, is_same)
    return PackResult(path, len(is_same), len(packed_images), skipped)
