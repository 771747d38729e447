"""Shard task: decode -> align -> encode each planned image and write one WebDataset tar.

Atomic: the tar is written under a temporary name and moved when complete; then a part file
with its manifest rows, rejects and stats is moved into `.work/done/` (see storage.py). A shard counts as
done only when both exist, so a kill -9 at any point leaves it to be redone, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import webdataset as wds
from PIL import Image

from data_prep.align import alignment_matrix, get_template, transform_scale, warp_affine
from data_prep.config import PrepConfig
from data_prep.images import ImageError, decode_rgb, encode_jpeg, open_image, read_file
from data_prep.recordio import IndexedRecordFile, RecordIOError
from data_prep.storage import OutputStore

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("class", pa.int64()),
        ("identity", pa.string()),
        ("source", pa.string()),
        ("sha1", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
    ]
)
PART_REJECT_SCHEMA = pa.schema(
    [("source", pa.string()), ("identity", pa.string()), ("reason", pa.string())]
)


class _HashingWriter:
    """A file wrapper that hashes and counts what passes through (sha256 without a re-read)."""

    def __init__(self, handle) -> None:
        self.handle, self.sha256, self.bytes = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def part_name(shard: str) -> str:
    return f".work/done/{shard}.parquet"


def tar_name(shard: str) -> str:
    return f"shards/{shard}.tar"


def is_done(store: OutputStore, shard: str) -> bool:
    return store.exists(part_name(shard)) and store.exists(tar_name(shard))


def read_part(store: OutputStore, shard: str) -> tuple[pa.Table, pa.Table, dict]:
    """(manifest rows, rejects, stats) of a finished shard."""
    table = store.read_parquet(part_name(shard))
    stats = json.loads(table.schema.metadata[b"facetrain.shard"])
    manifest = table.filter(pa.compute.is_null(table.column("reason"))).select(
        MANIFEST_SCHEMA.names
    )
    rejects = table.filter(pa.compute.is_valid(table.column("reason"))).select(
        PART_REJECT_SCHEMA.names
    )
    return manifest.cast(MANIFEST_SCHEMA), rejects.cast(PART_REJECT_SCHEMA), stats


def write_shard(name: str, rows: pa.Table, config: PrepConfig, source_kind: str) -> dict:
    """Write shard `name` from its plan rows; return its stats (also kept in the part file)."""
    store = OutputStore(config.out)
    part_rows: list[dict] = []
    identities: set[str] = set()
    with ExitStack() as stack:
        records = (
            stack.enter_context(IndexedRecordFile(config.source, {}))
            if source_kind == "rec"
            else None
        )
        handle = stack.enter_context(store.atomic_output(tar_name(name)))
        hashing = _HashingWriter(handle)
        # An int mtime: a float one costs a pax header per member (and bytes per sample).
        writer = wds.TarWriter(hashing, user="facetrain", group="facetrain", mtime=0)
        # Plain ustar headers (keys are short ASCII): a third of the cost of pax headers.
        writer.tarstream.format = tarfile.USTAR_FORMAT
        for row in rows.to_pylist():
            described = {key: row[key] for key in ("key", "split", "class", "identity", "source")}
            described["shard"] = name
            try:
                data = _read_source(row, config, records)
                jpg, size, matrix = process_image(data, row["landmarks"], config, row["source"])
            except ImageError as err:
                part_rows.append({**described, "reason": err.reason})
                continue
            writer.write(_sample(row, jpg, matrix, config))
            identities.add(row["identity"])
            part_rows.append(
                {
                    **described,
                    "sha1": row["sha1"].hex(),
                    "width": size[0],
                    "height": size[1],
                    "bytes": len(jpg),
                    "reason": None,
                }
            )
        writer.close()
    stats = {
        "name": f"{name}.tar",
        "split": name.rsplit("-", 1)[0],
        "samples": sum(1 for row in part_rows if row["reason"] is None),
        "identities": len(identities),
        "bytes": hashing.bytes,
        "sha256": hashing.sha256.hexdigest(),
    }
    _write_part(store, name, part_rows, stats)
    return stats


def _sample(row: dict, jpg: bytes, matrix: np.ndarray | None, config: PrepConfig) -> dict:
    """One WebDataset sample: __key__, jpg, cls (class index as text), json (provenance)."""
    points = row["landmarks"]
    provenance = {
        "identity": row["identity"],
        "class": row["class"],
        "source": row["source"],
        "landmarks": np.reshape(points, (5, 2)).tolist() if points else None,
        "transform": matrix.tolist() if matrix is not None else None,
        "template": config.align if matrix is not None else None,
    }
    return {
        "__key__": row["key"],
        "jpg": jpg,
        "cls": str(row["class"]).encode(),
        "json": json.dumps(provenance, sort_keys=True).encode(),
    }


def _write_part(store: OutputStore, name: str, part_rows: list[dict], stats: dict) -> None:
    schema = pa.schema(list(MANIFEST_SCHEMA) + [pa.field("reason", pa.string())]).with_metadata(
        {"facetrain.shard": json.dumps(stats)}
    )
    table = pa.Table.from_pylist(
        [{field: row.get(field) for field in schema.names} for row in part_rows], schema=schema
    )
    store.write_parquet(part_name(name), table)


def _read_source(row: dict, config: PrepConfig, records: IndexedRecordFile | None) -> bytes:
    if records is None:
        return read_file(Path(config.source) / row["source"])
    try:
        return records.read_at(row["offset"]).payload
    except RecordIOError as err:
        raise ImageError(row["source"], "corrupt record", str(err)) from err


def process_image(
    data: bytes, landmarks: list[float] | None, config: PrepConfig, name: str
) -> tuple[bytes, tuple[int, int], np.ndarray | None]:
    """(JPEG bytes, size, source->output transform or None) of one face."""
    if config.align == "none" or landmarks is None:
        return _keep_aligned(data, config, name), _aligned_size(config), None
    template = get_template(config.align)
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = alignment_matrix(points, config.align)
    header = open_image(data, name, config.max_image_pixels)
    width = header.size[0]
    scale = transform_scale(matrix)  # output pixels per source pixel
    # Decoding at 1/2..1/8 is lossless for the crop as long as the face keeps >= output size.
    max_reduction = int(min(8, 2 ** math.floor(math.log2(1 / scale)))) if scale < 0.5 else 1
    if config.image_library == "opencv":
        from data_prep import opencv_ops

        pixels, reduction = opencv_ops.decode_bgr(data, header, name, max_reduction)
    else:
        draft = (math.ceil(width * scale), math.ceil(header.size[1] * scale))
        image = decode_rgb(header, name, draft_size=draft if max_reduction > 1 else None)
        reduction = 2 ** round(math.log2(width / image.size[0]))
    if reduction > 1:
        # Pixel j of the reduced image covers source pixels [r*j, r*j + r - 1].
        warp = alignment_matrix((points - (reduction - 1) / 2) / reduction, config.align)
    else:
        warp = matrix
    if config.image_library == "opencv":
        face = opencv_ops.warp_bgr(pixels, warp, template.size)
        return opencv_ops.encode_jpeg_bgr(face, config.jpeg_quality), template.size, matrix
    face = warp_affine(image, warp, template.size)
    return encode_jpeg(face, config.jpeg_quality), template.size, matrix


def _aligned_size(config: PrepConfig) -> tuple[int, int]:
    return get_template("arcface" if config.align == "none" else config.align).size


def _keep_aligned(data: bytes, config: PrepConfig, name: str) -> bytes:
    """Pre-aligned faces: the original JPEG bytes when they already fit, else re-encoded."""
    size = _aligned_size(config)
    header = open_image(data, name, config.max_image_pixels)
    is_jpeg = header.format == "JPEG"
    image = decode_rgb(header, name)  # a full decode even to pass through: catches truncation
    if is_jpeg and image.size == size and not config.reencode:
        return data
    if image.height == size[1] and image.width > size[0]:
        # An arcface 112x112 crop holds the sphereface 96x112 one: the template is 8 px left.
        margin = (image.width - size[0]) // 2
        image = image.crop((margin, 0, margin + size[0], size[1]))
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return encode_jpeg(image, config.jpeg_quality)
