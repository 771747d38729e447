"""Listing a source as a stream of scan chunks: an image folder (with or without a landmark
list) or an insightface .rec/.idx pair.

The driver holds identity names (and, with --landmarks, the landmark table), never images;
each chunk carries at most `images_per_scan_task` entries to a scan task.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.config import PrepConfig
from data_prep.errors import PrepInputError
from data_prep.landmarks import LandmarkTable, read_landmark_table
from data_prep.recordio import IndexedRecordFile, RecordIOError, index_path_for, read_index


@dataclass(frozen=True)
class FolderEntry:
    identity: str
    relpath: str
    landmarks: tuple[float, ...] | None  # 10 numbers, or None when the list has no row


@dataclass(frozen=True)
class FolderChunk:
    root: str
    entries: tuple[FolderEntry, ...]


@dataclass(frozen=True)
class RecChunk:
    rec_path: str
    entries: tuple[tuple[int, int], ...]  # (record index, byte offset)


Chunk = FolderChunk | RecChunk


@dataclass
class Source:
    """A checked source: what kind, plus what the driver had to read to list it."""

    kind: str  # "folder" or "rec"
    path: Path
    landmarks: LandmarkTable | None = None
    image_index_range: tuple[int, int] | None = None  # rec: [first, stop) image records


def open_source(config: PrepConfig) -> Source:
    """Check that the source can be used at all (else PrepInputError, exit 2)."""
    path = Path(config.source)
    if not path.exists():
        raise PrepInputError(f"source {path}: does not exist")
    if config.detect:
        _check_detection(path, config)
    if path.is_file() and path.suffix == ".rec":
        return _open_rec(path)
    if not path.is_dir():
        raise PrepInputError(f"source {path}: expected an image-folder root or a .rec file")
    landmarks = None
    if config.landmarks is not None:
        try:
            landmarks = read_landmark_table(config.landmarks)
        except (FileNotFoundError, ValueError) as err:
            raise PrepInputError(str(err)) from err
    elif config.align != "none" and not config.detect:
        raise PrepInputError(
            f"source {path}: an image folder needs --landmarks FILE (or --detect) to align "
            f"(--align {config.align}); use --align none for faces that are already aligned"
        )
    has_identity = any(
        entry.is_dir() and not entry.name.startswith(".") for entry in os.scandir(path)
    )
    if not has_identity and (landmarks is None or landmarks.table.num_rows == 0):
        raise PrepInputError(f"source {path}: is empty (expected ROOT/<identity>/<image> folders)")
    return Source("folder", path, landmarks=landmarks)


def _check_detection(path: Path, config: PrepConfig) -> None:
    """--detect is for unaligned image folders, and needs its extra installed (exit 2 else)."""
    from data_prep.detect import require_detector

    if path.suffix == ".rec":
        raise PrepInputError(
            f"source {path}: --detect is for image folders; .rec faces are aligned"
        )
    if config.align == "none":
        raise PrepInputError(
            "--detect needs an alignment template (arcface or sphereface), not none"
        )
    require_detector()


def _open_rec(path: Path) -> Source:
    index_path = index_path_for(path)
    if not index_path.is_file():
        raise PrepInputError(f"source {path}: its index {index_path.name} is missing")
    first_index, last_index, header_offset = None, None, None
    try:
        for index, offset in read_index(index_path):  # streamed: .idx files run to millions
            first_index = index if first_index is None else min(first_index, index)
            last_index = index if last_index is None else max(last_index, index)
            if index == 0:
                header_offset = offset
    except RecordIOError as err:
        raise PrepInputError(str(err)) from err
    if first_index is None:
        raise PrepInputError(f"source {path}: {index_path.name} lists no records")
    header = None
    if header_offset is not None:
        try:
            with IndexedRecordFile(path, {0: header_offset}) as records:
                header = records.read(0)
        except RecordIOError as err:
            raise PrepInputError(f"source {path}: unreadable header record ({err})") from err
    if header is not None and header.flag > 0:
        # insightface: record 0 labels (first identity record, end); images are 1 .. first - 1.
        image_range = (1, int(header.labels[0]))
    else:
        image_range = (first_index, last_index + 1)
    if image_range[1] <= image_range[0]:
        raise PrepInputError(f"source {path}: header record lists no images")
    return Source("rec", path, image_index_range=image_range)


def iter_chunks(source: Source, config: PrepConfig) -> Iterator[Chunk]:
    if source.kind == "rec":
        yield from _rec_chunks(source, config.images_per_scan_task)
    else:
        yield from _folder_chunks(source, config.images_per_scan_task)


def _rec_chunks(source: Source, chunk_size: int) -> Iterator[RecChunk]:
    first, stop = source.image_index_range
    batch: list[tuple[int, int]] = []
    for index, offset in read_index(index_path_for(source.path)):
        if first <= index < stop:
            batch.append((index, offset))
            if len(batch) >= chunk_size:
                yield RecChunk(str(source.path), tuple(batch))
                batch = []
    if batch:
        yield RecChunk(str(source.path), tuple(batch))


def _folder_chunks(source: Source, chunk_size: int) -> Iterator[FolderChunk]:
    root = source.path
    table = source.landmarks.table if source.landmarks is not None else None
    # Row numbers per identity and per top folder (compact numpy), entries built one identity
    # at a time: no Python object per landmark row is alive beyond the current chunk.
    rows_of_identity = _rows_by_value(table.column("identity")) if table is not None else {}
    rows_of_folder = (
        _rows_by_value(pc.list_element(pc.split_pattern(table.column("path"), "/"), 0))
        if table is not None
        else {}
    )
    folder_identities = {
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    }
    batch: list[FolderEntry] = []
    for identity in sorted(folder_identities | set(rows_of_identity)):
        entries = []
        if identity in rows_of_identity:
            listed = table.take(pa.array(rows_of_identity[identity])).to_pylist()
            entries = [
                FolderEntry(identity, row["path"], tuple(row["landmarks"])) for row in listed
            ]
        if identity in folder_identities:
            covered = set()
            if identity in rows_of_folder:
                covered = set(
                    table.column("path").take(pa.array(rows_of_folder[identity])).to_pylist()
                )
            for name in sorted(os.listdir(root / identity)):
                relpath = f"{identity}/{name}"
                if not name.startswith(".") and relpath not in covered:
                    entries.append(FolderEntry(identity, relpath, None))
        batch.extend(sorted(entries, key=lambda entry: entry.relpath))
        if len(batch) >= chunk_size:
            yield FolderChunk(str(root), tuple(batch))
            batch = []
    if batch:
        yield FolderChunk(str(root), tuple(batch))


def _rows_by_value(column: pa.ChunkedArray | pa.Array) -> dict[str, np.ndarray]:
    """value -> the row numbers holding it (int64 arrays)."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    return {
        value: order[bounds[code] : bounds[code + 1]]
        for code, value in enumerate(encoded.dictionary.to_pylist())
    }
