"""Shard task: copy each planned sample's aligned face from the chunk files into one tar.

The pixel work happened in the process tasks; here each sample is three tar members
(`jpg`, `cls`, `json`: shard_format.SAMPLE_KEYS) taken from the chunk files (only the batches that hold them are read).

Atomic: the tar is written under a temporary name and moved when complete; then a part file
with its manifest rows and stats is moved into `.work/done/` (see storage.py). A shard counts
as done only when both exist, so a kill -9 at any point leaves it to be redone, never half-used.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.faces import aligned_size
from facetrain.data_prep.plan import ROW_BITS
from facetrain.data_prep.process import BATCH_ROWS, CHUNK_SCHEMA, chunk_name
from facetrain.data_prep.shard_format import (
    IMAGE_KEY,
    LABEL_KEY,
    PROVENANCE_KEY,
    SHARDS_DIR,
)
from facetrain.data_prep.storage import OutputStore
from facetrain.data_prep.tar_writer import ShardTarWriter

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
        # The five source points the face was aligned from (x1 y1 .. x5 y5; null for faces
        # kept as they were) and, with --detect, the main face's detector score. A plain list:
        # Parquet reads nulls of a fixed-size list back as empty lists and then fails.
        ("landmarks", pa.list_(pa.float64())),
        ("detector_score", pa.float64()),
    ]
)


WRITE_SAMPLES = 256  # samples per write to the tar
# What a shard task reads of each chunk row (process.CHUNK_SCHEMA's columns).
_FACE_COLUMNS = ["source", "sha1", "landmarks", "detector_score", "jpg", "json"]


def part_name(shard: str) -> str:
    return f".work/done/{shard}.parquet"


def tar_name(shard: str) -> str:
    return f"{SHARDS_DIR}/{shard}.tar"


def is_done(store: OutputStore, shard: str) -> bool:
    return store.exists(part_name(shard)) and store.exists(tar_name(shard))


def read_part(store: OutputStore, shard: str) -> tuple[pa.Table, dict]:
    """(manifest rows, stats) of a finished shard."""
    table = store.read_parquet(part_name(shard))
    stats = json.loads(table.schema.metadata[b"facetrain.shard"])
    return table.cast(MANIFEST_SCHEMA), stats


def write_shard(name: str, rows: pa.Table, config: PrepConfig) -> dict:
    """Write shard `name` from its plan rows (plan.SHARD_ROWS_SCHEMA); return its stats."""
    store = OutputStore(config.out)
    faces = _read_faces(store, config, rows.column("row_id").to_numpy())
    keys, classes = rows.column("key").to_pylist(), rows.column("class").to_pylist()
    with store.atomic_output(tar_name(name)) as handle:
        writer = ShardTarWriter(handle)
        jpgs, provenances = faces.column("jpg").to_pylist(), faces.column("json").to_pylist()
        for start in range(0, len(keys), WRITE_SAMPLES):
            batch = range(start, min(len(keys), start + WRITE_SAMPLES))
            missing = [keys[n] for n in batch if jpgs[n] is None]
            if missing:
                raise RuntimeError(f"shard {name}: sample {missing[0]} has no processed face")
            writer.write_samples(
                (
                    keys[n],
                    {
                        IMAGE_KEY: jpgs[n],
                        LABEL_KEY: b"%d" % classes[n],
                        PROVENANCE_KEY: provenances[n],
                    },
                )
                for n in batch
            )
        writer.close()
    width, height = aligned_size(config)
    count = rows.num_rows
    manifest = pa.table(
        {
            "key": rows.column("key"),
            "split": rows.column("split"),
            "shard": pa.array([name] * count, pa.string()),
            "class": rows.column("class"),
            "identity": rows.column("identity"),
            "source": faces.column("source"),
            "sha1": pa.array([digest.hex() for digest in faces.column("sha1").to_pylist()]),
            "width": pa.array(np.full(count, width, np.int32)),
            "height": pa.array(np.full(count, height, np.int32)),
            "bytes": pa.compute.binary_length(faces.column("jpg")).cast(pa.int64()),
            "landmarks": faces.column("landmarks").cast(MANIFEST_SCHEMA.field("landmarks").type),
            "detector_score": faces.column("detector_score"),
        },
        schema=MANIFEST_SCHEMA,
    )
    stats = {
        "name": f"{name}.tar",
        "split": name.rsplit("-", 1)[0],
        "samples": count,
        "identities": len(set(rows.column("identity").to_pylist())),
        "bytes": writer.bytes,
        "sha256": writer.sha256,
    }
    schema = MANIFEST_SCHEMA.with_metadata({"facetrain.shard": json.dumps(stats)})
    store.write_parquet(part_name(name), manifest.cast(schema))
    return stats


def _open_chunk(store: OutputStore, name: str) -> pa.NativeFile:
    """Locally a memory map: batches are zero-copy, so only the faces taken are read (a shard
    holds a few rows of most 64-row batches); elsewhere a random-access file."""
    if store.is_local:
        return pa.memory_map(store.path(name))
    return store.fs.open_input_file(store.path(name))


def _read_faces(store: OutputStore, config: PrepConfig, row_ids: np.ndarray) -> pa.Table:
    """_FACE_COLUMNS of each row id, in the given order, from the chunk files."""
    chunks, rows = row_ids >> ROW_BITS, row_ids & ((1 << ROW_BITS) - 1)
    parts, order = [], []
    for chunk in np.unique(chunks):
        wanted = np.flatnonzero(chunks == chunk)
        batches = np.unique(rows[wanted] // BATCH_ROWS)
        with _open_chunk(store, chunk_name(config, int(chunk))) as handle:
            reader = ipc.open_file(handle)
            read = pa.Table.from_batches(
                [reader.get_batch(int(b)).select(_FACE_COLUMNS) for b in batches]
            )
        # Row r sits in batch r // BATCH_ROWS at r % BATCH_ROWS; the batches read are sorted.
        place = np.searchsorted(batches, rows[wanted] // BATCH_ROWS) * BATCH_ROWS
        parts.append(read.take(pa.array(place + rows[wanted] % BATCH_ROWS)))
        order.append(wanted)
    if not parts:
        return pa.schema([CHUNK_SCHEMA.field(name) for name in _FACE_COLUMNS]).empty_table()
    table = pa.concat_tables(parts)
    return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))
