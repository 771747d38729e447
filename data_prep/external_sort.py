"""Sorting more rows than memory holds: sorted runs on disk (Arrow IPC files), read back as one
merged stream, and a sorted outer join of two key-ordered streams.

Memory is bounded by `run_rows` while writing and by `read_rows` per run while merging, never by
the number of rows. Arrow orders strings by UTF-8 bytes, which is Python's str order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

# 200k rows sort in ~50 MB; merging 20 M rows then reads 100 runs of 256-row batches.
RUN_ROWS = 200_000
READ_ROWS = 256


class RunWriter:
    """Buffers tables and writes each `run_rows` rows as one run sorted by `keys`."""

    def __init__(self, directory: Path, keys: list[str], run_rows: int = RUN_ROWS) -> None:
        self.directory = Path(directory)
        self.keys = keys
        self.run_rows = run_rows
        self.runs: list[Path] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:  # fill the current run to exactly run_rows rows
            part = table.slice(start, self.run_rows - self._pending_rows)
            self._pending.append(part)
            self._pending_rows += part.num_rows
            start += part.num_rows
            if self._pending_rows >= self.run_rows:
                self._flush()

    def finish(self) -> list[Path]:
        """The run files, in the order written (earlier runs hold earlier rows)."""
        if self._pending_rows:
            self._flush()
        return self.runs

    def _flush(self) -> None:
        # sort_by is stable: rows with equal keys keep their input order within the run.
        table = pa.concat_tables(self._pending).sort_by([(k, "ascending") for k in self.keys])
        self._pending, self._pending_rows = [], 0
        path = self.directory / f"run-{len(self.runs):05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=READ_ROWS):
                writer.write_batch(batch)
        self.runs.append(path)
        del table
        pa.default_memory_pool().release_unused()  # else the allocator keeps each run's pages


def iter_run(path: Path, columns: list[str]) -> Iterator[tuple[Any, ...]]:
    """One run's rows as tuples of `columns`, one stored batch in memory at a time."""
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            yield from zip(*(batch.column(name).to_pylist() for name in columns), strict=True)


def merge_runs(runs: list[Path], columns: list[str], num_keys: int) -> Iterator[tuple[Any, ...]]:
    """All runs' rows in key order; `columns` start with the `num_keys` sort keys. Ties come
    from the earlier run first (heapq.merge is stable), so input order is kept across runs."""
    streams = [iter_run(path, columns) for path in runs]
    return heapq.merge(*streams, key=lambda row: row[:num_keys])


def outer_join(
    left: Iterator[tuple[Any, Any]], right: Iterator[tuple[Any, Any]]
) -> Iterator[tuple[Any, Any, Any]]:
    """(key, left value or None, right value or None) for every key of two streams of
    (key, value) pairs that are sorted by unique keys."""
    missing = object()
    left_item, right_item = next(left, missing), next(right, missing)
    while left_item is not missing or right_item is not missing:
        if right_item is missing or (left_item is not missing and left_item[0] < right_item[0]):
            yield left_item[0], left_item[1], None
            left_item = next(left, missing)
        elif left_item is missing or right_item[0] < left_item[0]:
            yield right_item[0], None, right_item[1]
            right_item = next(right, missing)
        else:
            yield left_item[0], left_item[1], right_item[1]
            left_item, right_item = next(left, missing), next(right, missing)
