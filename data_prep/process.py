"""Process task: one listed chunk -> one chunk file of scanned rows and their aligned faces.

Each image is read, hashed, parsed and (unless the planner is sure to drop it) decoded,
aligned and encoded in one visit, so the shard tasks later only copy bytes. The chunk file
(Arrow IPC, CHUNK_SCHEMA, rows sorted by identity then path, in batches of BATCH_ROWS rows
so a shard task reads just the batches it needs) lands atomically under `chunk_folder(config)`;
the task returns only the narrow PLAN_INPUT_SCHEMA columns the planner reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import groupby

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.faces import process_image
from facetrain.data_prep.filters import KEEP, identity_rejects
from facetrain.data_prep.images import ImageError
from facetrain.data_prep.plan import PLAN_INPUT_SCHEMA
from facetrain.data_prep.scan import SCAN_SCHEMA, Scanned, scan_images
from facetrain.data_prep.sources import Chunk, FolderChunk
from facetrain.data_prep.storage import OutputStore

BATCH_ROWS = 64
GROUP_ROWS = 64
CHUNK_SCHEMA = pa.schema(
    list(SCAN_SCHEMA)
    + [
        pa.field("error", pa.string()),  # decode/align/encode failure
        pa.field("jpg", pa.binary()),  # the aligned face; null: not processed
        pa.field("json", pa.binary()),  # the sample's provenance record
    ]
)


# Bumped whenever listing cuts chunks at other places (v2: an identity that would overflow a
# chunk starts the next one).
CHUNK_LAYOUT = 2


def chunk_folder(config: PrepConfig) -> str:
    """Named by the chunk layout and size: a rerun with another size, or by a facetrain that
    cuts chunks otherwise, lists other chunks, and must not take these for its own (it
    processes afresh; the output is the same either way)."""
    return f".work/chunks-v{CHUNK_LAYOUT}-{config.images_per_scan_task}"


def chunk_name(config: PrepConfig, index: int) -> str:
    return f"{chunk_folder(config)}/chunk-{index:06d}.arrow"


def process_chunk(index: int, chunk: Chunk, config: PrepConfig) -> pa.Table:
    """Scan (and, unless a dry run, encode) chunk `index`; return its planner columns."""
    rows = []
    for scanned, encode in _with_local_verdicts(chunk, config):
        row = dict(scanned.row, error=None, jpg=None, json=None)
        if encode and not config.dry_run:
            try:
                jpg, _, matrix = process_image(
                    scanned.data, row["landmarks"], config, row["source"],
                    header=scanned.header, matrix=scanned.matrix,
                )  # fmt: skip
                row["jpg"], row["json"] = jpg, _provenance(row, matrix, config)
            except ImageError as err:
                row["error"] = err.reason
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)
    if not isinstance(chunk, FolderChunk):  # .rec records come in index order
        order = pc.sort_indices(
            table.append_column("ordinal", pa.array(np.arange(table.num_rows))),
            sort_keys=[("identity", "ascending"), ("ordinal", "ascending")],
        )
        table = table.take(order)
    if not config.dry_run:
        store = OutputStore(config.out)
        with (
            store.atomic_output(chunk_name(config, index)) as stream,
            ipc.new_file(stream, CHUNK_SCHEMA) as writer,
        ):
            writer.write_table(table, max_chunksize=BATCH_ROWS)
    return table.select(PLAN_INPUT_SCHEMA.names)


def read_plan_input(store: OutputStore, config: PrepConfig, index: int) -> pa.Table:
    """The planner columns of an already written chunk file (a resumed run)."""
    with store.fs.open_input_file(store.path(chunk_name(config, index))) as handle:
        options = ipc.IpcReadOptions(
            included_fields=[CHUNK_SCHEMA.get_field_index(n) for n in PLAN_INPUT_SCHEMA.names]
        )
        return ipc.open_file(handle, options=options).read_all()


def _with_local_verdicts(chunk: Chunk, config: PrepConfig) -> Iterator[tuple[Scanned, bool]]:
    """Each scanned image, and whether to encode it.

    A folder chunk holds whole identities, so the per-identity filters (duplicates, small
    faces, the cap; the planner applies the same ones) decide here which faces to skip.
    A .rec chunk may hold part of an identity: every usable record is encoded.
    """
    scanned = scan_images(chunk, config)
    if not isinstance(chunk, FolderChunk):
        for item in scanned:
            yield item, item.row["reason"] is None
        return
    # Whole identities are judged together, GROUP_ROWS rows or more at a time (one vectorised
    # call instead of one per identity; only that many images' bytes are held).
    pending: list[Scanned] = []
    for _, group in groupby(scanned, key=lambda item: item.row["identity"]):
        pending += group
        if len(pending) >= GROUP_ROWS:
            yield from _judge(pending, config)
            pending = []
    yield from _judge(pending, config)


def _judge(items: list[Scanned], config: PrepConfig) -> Iterator[tuple[Scanned, bool]]:
    usable = [item.row for item in items if item.row["reason"] is None]
    codes = pc.dictionary_encode(pa.array([row["identity"] for row in usable], pa.string()))
    verdict = iter(
        identity_rejects(
            codes.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            pa.array([row["sha1"] for row in usable], pa.binary(20)),
            np.array([row["face_size"] for row in usable], dtype=np.float64),
            config,
        )
    )
    for item in items:
        yield item, item.row["reason"] is None and next(verdict) == KEEP


def _provenance(row: dict, matrix: np.ndarray | None, config: PrepConfig) -> bytes:
    """The sample's `json` entry: where the face came from and how it was aligned."""
    points = row["landmarks"]
    record = {
        "identity": row["identity"],
        "source": row["source"],
        "landmarks": [list(points[i : i + 2]) for i in range(0, 10, 2)] if points else None,
        "transform": matrix.tolist() if matrix is not None else None,
        "template": config.align if matrix is not None else None,
        # --detect: the main face's detector score (null for points from a landmark file), for
        # quality weighting downstream (IJB-style).
        "detector_score": row["detector_score"],
    }
    return json.dumps(record, sort_keys=True).encode()
