"""Listing a source as a stream of chunks: an image folder (with or without a landmark
list) or an insightface .rec/.idx pair.

The driver holds folder names and one identity's entries, never images: a landmark list is
sorted on disk once (external_sort) and merged back identity by identity. Each chunk carries
about `images_per_scan_task` entries to a process task.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.errors import PrepInputError
from facetrain.data_prep.external_sort import RUN_ROWS, RunWriter, merge_runs, outer_join
from facetrain.data_prep.landmarks import BLOCK_ROWS, iter_landmark_blocks
from facetrain.data_prep.recordio import (
    IndexedRecordFile,
    RecordIOError,
    index_path_for,
    read_index,
)


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
class LandmarkRuns:
    """A landmark list read once into sorted runs on disk: rows by (identity, path), and paths
    by (top folder, path) to know which folder files a row covers. The scratch directory goes
    when this object does (or at exit)."""

    num_rows: int
    bad_rows: list[tuple[str, str]]
    by_identity: list[Path]
    by_folder: list[Path]
    scratch: tempfile.TemporaryDirectory


@dataclass
class Source:
    """A checked source: what kind, plus what the driver had to read to list it."""

    kind: str  # "folder" or "rec"
    path: Path
    landmarks: LandmarkRuns | None = None
    image_index_range: tuple[int, int] | None = None  # rec: [first, stop) image records


def sort_landmark_list(
    path: str | Path, run_rows: int = RUN_ROWS, block_rows: int = BLOCK_ROWS
) -> LandmarkRuns:
    """Read a landmark list once, block by block, into sorted runs (memory: ~run_rows rows)."""
    scratch = tempfile.TemporaryDirectory(prefix="facetrain-listing-")
    by_identity = RunWriter(Path(scratch.name) / "identity", ["identity", "path"], run_rows)
    by_folder = RunWriter(Path(scratch.name) / "folder", ["folder", "path"], run_rows)
    by_identity.directory.mkdir()
    by_folder.directory.mkdir()
    num_rows, bad_rows = 0, []
    for block in iter_landmark_blocks(path, block_rows):
        num_rows += block.table.num_rows
        bad_rows.extend(block.bad_rows)
        by_identity.add(block.table)
        # The folder a row covers is its path's first part, whatever identity the row names.
        top_folder = pc.list_element(pc.split_pattern(block.table.column("path"), "/"), 0)
        by_folder.add(pa.table({"folder": top_folder, "path": block.table.column("path")}))
    return LandmarkRuns(num_rows, bad_rows, by_identity.finish(), by_folder.finish(), scratch)


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
            landmarks = sort_landmark_list(config.landmarks)
        except (FileNotFoundError, ValueError) as err:
            message = str(err)  # pyarrow's own errors (a broken Parquet file) do not name it
            if str(config.landmarks) not in message:
                message = f"landmark file {config.landmarks}: {message}"
            raise PrepInputError(message) from err
    elif config.align != "none" and not config.detect:
        raise PrepInputError(
            f"source {path}: an image folder needs --landmarks FILE (or --detect) to align "
            f"(--align {config.align}); use --align none for faces that are already aligned"
        )
    has_identity = any(
        entry.is_dir() and not entry.name.startswith(".") for entry in os.scandir(path)
    )
    if not has_identity and (landmarks is None or landmarks.num_rows == 0):
        raise PrepInputError(f"source {path}: is empty (expected ROOT/<identity>/<image> folders)")
    return Source("folder", path, landmarks=landmarks)


def _check_detection(path: Path, config: PrepConfig) -> None:
    """--detect is for unaligned image folders, and needs its extra installed (exit 2 else)."""
    from facetrain.data_prep.detect import require_extra

    if path.suffix == ".rec":
        raise PrepInputError(
            f"source {path}: --detect is for image folders; .rec faces are aligned"
        )
    if config.align == "none":
        raise PrepInputError(
            "--detect needs an alignment template (arcface or sphereface), not none"
        )
    require_extra()  # only the check: loading the models is the process tasks' work


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
    batch: list[FolderEntry] = []
    for identity, listed, covered in _identity_listings(source):
        entries = [FolderEntry(identity, relpath, tuple(points)) for relpath, points in listed]
        if covered is not None:  # ROOT/<identity>/ exists: its files without a landmark row
            for name in sorted(os.listdir(root / identity)):
                relpath = f"{identity}/{name}"
                if not name.startswith(".") and relpath not in covered:
                    entries.append(FolderEntry(identity, relpath, None))
        # An identity that would take the chunk past chunk_size starts the next one, so no task
        # holds much more than the others and the last tasks of a run end together (a chunk is
        # larger only when one identity is).
        if batch and len(batch) + len(entries) > chunk_size:
            yield FolderChunk(str(root), tuple(batch))
            batch = []
        batch.extend(sorted(entries, key=lambda entry: entry.relpath))
        if len(batch) >= chunk_size:
            yield FolderChunk(str(root), tuple(batch))
            batch = []
    if batch:
        yield FolderChunk(str(root), tuple(batch))


def _identity_listings(
    source: Source,
) -> Iterator[tuple[str, list[tuple[str, list[float]]], set[str] | None]]:
    """(identity, its landmark rows as (relpath, points) sorted by relpath, the relpaths the
    list covers under folder ROOT/<identity>/ or None when there is no such folder), in
    identity order. Holds one identity's rows and one folder's covered paths at a time."""
    folder_names = sorted(
        entry.name
        for entry in os.scandir(source.path)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    runs = source.landmarks
    listed = _grouped(
        merge_runs(runs.by_identity, ["identity", "path", "landmarks"], 2) if runs else iter(())
    )
    covered = _grouped(merge_runs(runs.by_folder, ["folder", "path"], 2) if runs else iter(()))
    folders = (
        (name, {relpath for (relpath,) in paths} if paths else set())
        for name, present, paths in outer_join(((n, True) for n in folder_names), covered)
        if present
    )
    for identity, rows, covered_paths in outer_join(listed, folders):
        yield identity, rows or [], covered_paths


def _grouped(rows: Iterator[tuple]) -> Iterator[tuple[str, list[tuple]]]:
    """(first column, the rest of each row) for key-sorted rows, one group at a time."""
    for key, group in itertools.groupby(rows, key=lambda row: row[0]):
        yield key, [row[1:] for row in group]
