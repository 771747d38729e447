"""Landmark lists: the whitespace `relpath x1 y1 .. x5 y5` format and CSV/Parquet manifests.

Points are left eye, right eye, nose tip, left mouth corner, right mouth corner, in the pixel
coordinates of the image file. A manifest row may give a face box (`left, top, width, height`)
instead: its five points are then the template's, placed in that box (a box-only crop).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from facetrain.data_prep.align import ARCFACE_112

POINT_COLUMNS = [f"{axis}{i}" for i in range(1, 6) for axis in ("x", "y")]
BOX_COLUMNS = ["left", "top", "width", "height"]
REASON_BAD_ROW = "bad landmark row"
TEXT_COLUMNS = ["path", "identity", *POINT_COLUMNS, *BOX_COLUMNS]
# What pyarrow's CSV reader reads as null in a number column (its default null_values).
NULL_SPELLINGS = frozenset(pacsv.ConvertOptions().null_values)
BLOCK_ROWS = 16384

TABLE_SCHEMA = pa.schema(
    [("path", pa.string()), ("identity", pa.string()), ("landmarks", pa.list_(pa.float64(), 10))]
)


@dataclass
class LandmarkTable:
    """Rows that parsed (path, identity, 10 floats) and the ones that did not (`file:line`,
    what is wrong with it)."""

    table: pa.Table
    bad_rows: list[tuple[str, str]] = field(default_factory=list)


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """relpath -> (5, 2) float64 points, from any supported landmark file."""
    table = read_landmark_table(path).table
    paths = table.column("path").to_pylist()
    points = np.asarray(table.column("landmarks").to_pylist(), dtype=np.float64).reshape(-1, 5, 2)
    return dict(zip(paths, points, strict=True))


def read_landmark_table(path: str | Path) -> LandmarkTable:
    """The whole list in memory (small lists: evaluation, tests); prep streams it instead."""
    blocks = list(iter_landmark_blocks(path))
    tables = [block.table for block in blocks] or [TABLE_SCHEMA.empty_table()]
    return LandmarkTable(
        pa.concat_tables(tables), [row for block in blocks for row in block.bad_rows]
    )


def iter_landmark_blocks(path: str | Path, block_rows: int = BLOCK_ROWS) -> Iterator[LandmarkTable]:
    """The list `block_rows` rows at a time, in file order: each block's parsed rows and bad
    rows. The format is checked before the first block (ValueError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file {path}: not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=block_rows)
        return _from_batches(parquet.schema_arrow.names, batches, str(path))
    if suffix == ".csv":
        # Every column read as text: types inferred from a first block would fail on a later one.
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in TEXT_COLUMNS}
            ),
        )
        return _from_batches(reader.schema.names, _rebatched(reader, block_rows), str(path))
    return _read_whitespace(path, block_rows)


def identity_of(relpath: str) -> str:
    """ROOT/<identity>/<image>: the first folder of the relative path."""
    parts = relpath.replace("\\", "/").split("/")
    return parts[0] if len(parts) > 1 else ""


def box_to_landmarks(left: float, top: float, width: float, height: float) -> np.ndarray:
    """The arcface template's five points placed in a face box (for box-only manifests)."""
    unit = ARCFACE_112 / 112.0
    return np.stack([left + unit[:, 0] * width, top + unit[:, 1] * height], axis=1)


def _read_whitespace(path: Path, block_rows: int) -> Iterator[LandmarkTable]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        numbered = enumerate(lines, start=1)
        while block := list(itertools.islice(numbered, block_rows)):
            yield _whitespace_block(block, path)


def _whitespace_block(block: list[tuple[int, str]], path: Path) -> LandmarkTable:
    paths: list[str] = []
    points: list[list[float]] = []
    bad_rows: list[tuple[str, str]] = []
    for line_number, line in block:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.rsplit(maxsplit=10)
        try:
            if len(fields) != 11:
                raise ValueError(f"expected a path and 10 numbers, got {len(fields)} fields")
            values = [float(v) for v in fields[1:]]
            if not all(math.isfinite(v) for v in values):
                raise ValueError("non-finite coordinate")
        except ValueError as err:
            bad_rows.append((f"{path}:{line_number}", str(err)))
            continue
        paths.append(fields[0])
        points.append(values)
    return LandmarkTable(_table(paths, [identity_of(p) for p in paths], points), bad_rows)


def _rebatched(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """CSV batches come by bytes; cut them to at most `rows` rows."""
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _from_batches(
    columns: list[str], batches: Iterable[pa.RecordBatch], name: str
) -> Iterator[LandmarkTable]:
    present = set(columns)
    if "path" not in present:
        raise ValueError(f"landmark file {name}: expected a 'path' column, got {sorted(present)}")
    has_points = set(POINT_COLUMNS) <= present
    has_box = set(BOX_COLUMNS) <= present
    if not (has_points or has_box):
        raise ValueError(f"landmark file {name}: expected columns {POINT_COLUMNS} or {BOX_COLUMNS}")
    return _parsed_blocks(batches, name, has_points, has_box)


def _parsed_blocks(
    batches: Iterable[pa.RecordBatch], name: str, has_points: bool, has_box: bool
) -> Iterator[LandmarkTable]:
    row_number = 1  # the header line
    for batch in batches:
        paths, identities, points = [], [], []
        bad_rows: list[tuple[str, str]] = []
        for row in batch.to_pylist():
            row_number += 1
            relpath = row["path"]
            try:
                if not relpath:
                    raise ValueError("empty path")
                if has_points and not any(_is_null(row.get(c)) for c in POINT_COLUMNS):
                    values = [float(row[c]) for c in POINT_COLUMNS]
                elif has_box and not any(_is_null(row.get(c)) for c in BOX_COLUMNS):
                    box = [float(row[c]) for c in BOX_COLUMNS]
                    if box[2] <= 0 or box[3] <= 0:
                        raise ValueError(f"box of size {box[2]}x{box[3]}")
                    values = box_to_landmarks(*box).ravel().tolist()
                else:
                    raise ValueError("missing coordinates")
                if not all(math.isfinite(v) for v in values):
                    raise ValueError("non-finite coordinate")
            except (TypeError, ValueError) as err:
                bad_rows.append((f"{name}:{row_number}", str(err)))
                continue
            paths.append(str(relpath))
            identity = row.get("identity")
            identities.append(
                str(identity) if identity not in (None, "") else identity_of(str(relpath))
            )
            points.append(values)
        yield LandmarkTable(_table(paths, identities, points), bad_rows)


def _is_null(value: object) -> bool:
    """An empty coordinate cell (or one spelled as a CSV null, as pyarrow reads numbers)."""
    return value is None or (isinstance(value, str) and value in NULL_SPELLINGS)


def _table(paths: list[str], identities: list[str], points: list[list[float]]) -> pa.Table:
    return pa.table(
        {"path": paths, "identity": identities, "landmarks": points}, schema=TABLE_SCHEMA
    )
