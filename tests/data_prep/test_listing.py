"""Listing an image folder with a landmark list, streamed through sorted runs on disk, equals a
plain in-memory listing (dicts, sets, sorted) of the same folder and rows."""

from __future__ import annotations

import gc
import random
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from facetrain.data_prep import external_sort
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.external_sort import RunWriter, merge_runs, outer_join
from facetrain.data_prep.landmarks import POINT_COLUMNS
from facetrain.data_prep.sources import (
    FolderEntry,
    Source,
    iter_chunks,
    open_source,
    sort_landmark_list,
)

ON_DISK = {
    "ann": ["0.jpg", "1.jpg", "2.jpg", "3.jpg", ".DS_Store"],
    "bob": ["b0.jpg", "b1.jpg"],
    "dan": ["d1.jpg", "d0.jpg"],  # no landmark rows at all
    "Zed": ["z.jpg"],  # upper case sorts before lower case (str order)
    "émile": ["e.jpg"],
    ".cache": ["x.jpg"],  # hidden folder: never listed
}
# (path, identity or None, points): file order; carl is only in the list.
ROWS = [
    ("bob/b1.jpg", None, [1.5 * i for i in range(10)]),
    ("ann/1.jpg", None, [float(i) for i in range(10)]),
    ("carl/c0.jpg", None, [2.0 + i for i in range(10)]),
    ("ann/1.jpg", None, [9.0 - i for i in range(10)]),  # listed twice: both rows, in file order
    ("ann/0.jpg", None, [0.25 * i for i in range(10)]),
    ("ann/2.jpg", "bob", [3.0 * i for i in range(10)]),  # covers ann/2.jpg, listed under bob
    ("émile/e.jpg", None, [0.5 + i for i in range(10)]),
    ("carl/c1.jpg", None, [7.0 + i for i in range(10)]),
    ("Zed/z2.jpg", None, [4.0 + i for i in range(10)]),  # a row whose file is missing
]


def _make_folder(root: Path) -> Path:
    for identity, names in ON_DISK.items():
        (root / identity).mkdir(parents=True)
        for name in names:
            (root / identity / name).write_bytes(b"")
    return root


def _reference(root: Path, rows: list[tuple[str, str, list[float]]], chunk_size: int) -> list:
    """The listing built plainly in memory: chunks of (identity, relpath, points or None)."""
    by_identity = defaultdict(list)
    for relpath, identity, points in rows:
        by_identity[identity].append((relpath, tuple(points)))
    covered = {relpath for relpath, _, _ in rows}
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    chunks, chunk = [], []
    for identity in sorted(folders | set(by_identity)):
        entries = list(by_identity[identity])
        if identity in folders:
            for file in (root / identity).iterdir():
                relpath = f"{identity}/{file.name}"
                if not file.name.startswith(".") and relpath not in covered:
                    entries.append((relpath, None))
        if chunk and len(chunk) + len(entries) > chunk_size:  # the identity starts a new chunk
            chunks.append(chunk)
            chunk = []
        chunk += [(identity, relpath, points) for relpath, points in sorted(entries, key=_first)]
        if len(chunk) >= chunk_size:
            chunks.append(chunk)
            chunk = []
    return [*chunks, chunk] if chunk else chunks


def _first(item: tuple) -> str:
    return item[0]


def _listed(source: Source, chunk_size: int) -> list:
    config = PrepConfig(source=str(source.path), out="/unused", images_per_scan_task=chunk_size)
    return [
        [(e.identity, e.relpath, e.landmarks) for e in chunk.entries]
        for chunk in iter_chunks(source, config)
    ]


def _write_list(path: Path, fmt: str) -> Path:
    """ROWS plus two bad rows, as a whitespace list, a CSV or a Parquet manifest."""
    if fmt == "txt":
        lines = [f"{relpath} {' '.join(map(repr, points))}" for relpath, _, points in ROWS]
        lines.insert(3, "ann/3.jpg 1 2 3")  # too few numbers: a bad row, its file stays listed
        lines.insert(6, "bob/b0.jpg 1 2 3 4 5 6 7 8 9 inf")
        path.write_text("\n".join(lines) + "\n")
        return path
    records = [
        {"path": relpath, "identity": identity, **dict(zip(POINT_COLUMNS, points, strict=True))}
        for relpath, identity, points in ROWS
    ]
    records.insert(3, {"path": "ann/3.jpg", "identity": None, **dict.fromkeys(POINT_COLUMNS)})
    records.insert(6, {"path": "bob/b0.jpg", **dict.fromkeys(POINT_COLUMNS, float("inf"))})
    table = pa.Table.from_pylist(records)
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=4)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    return path


@pytest.mark.parametrize("fmt", ["txt", "csv", "parquet"])
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_streamed_listing_equals_an_in_memory_listing(tmp_path, monkeypatch, fmt, chunk_size):
    monkeypatch.setattr(external_sort, "READ_ROWS", 2)  # several stored batches per run
    root = _make_folder(tmp_path / "faces")
    landmark_file = _write_list(tmp_path / f"list.{fmt}", fmt)
    runs = sort_landmark_list(landmark_file, run_rows=3, block_rows=2)
    assert len(runs.by_identity) == 3 and len(runs.by_folder) == 3  # 9 rows: a 3-way merge
    named = fmt != "txt"  # a whitespace list has no identity column: the folder names it
    rows = [(p, (named and identity) or p.split("/")[0], points) for p, identity, points in ROWS]
    expected = _reference(root, rows, chunk_size)
    assert _listed(Source("folder", root, landmarks=runs), chunk_size) == expected
    assert runs.num_rows == len(ROWS)
    assert [where for where, _ in runs.bad_rows] == [
        f"{landmark_file}:{4 + (fmt != 'txt')}",
        f"{landmark_file}:{7 + (fmt != 'txt')}",
    ]
    # Cross-checks the reference itself on what this data set is for.
    entries = [entry for chunk in expected for entry in chunk]
    ann_2 = [e[0] for e in entries if e[1] == "ann/2.jpg"]
    assert ann_2 == (["bob"] if named else ["ann"])  # listed once, under the row's identity
    assert ("ann", "ann/3.jpg", None) in entries and ("bob", "bob/b0.jpg", None) in entries
    assert [e[2][0] for e in entries if e[1] == "ann/1.jpg"] == [0.0, 9.0]
    assert [e[0] for e in entries][:3] == ["Zed", "Zed", "ann"]


def test_open_source_lists_through_runs_and_drops_them_with_the_source(tmp_path):
    root = _make_folder(tmp_path / "faces")
    config = PrepConfig(
        source=str(root),
        out=str(tmp_path / "o"),
        landmarks=str(_write_list(tmp_path / "list.txt", "txt")),
        images_per_scan_task=3,
    )
    source = open_source(config)
    rows = [(p, p.split("/")[0], points) for p, _, points in ROWS]
    rows[5] = ("ann/2.jpg", "ann", ROWS[5][2])  # a whitespace list has no identity column
    assert _listed(source, 3) == _reference(root, rows, 3)
    scratch = Path(source.landmarks.scratch.name)
    assert scratch.is_dir()
    del source
    gc.collect()
    assert not scratch.exists()


def test_merged_runs_are_sorted_and_keep_input_order_for_equal_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(external_sort, "READ_ROWS", 3)
    rng = random.Random(0)
    rows = [(rng.choice("abcd"), rng.choice(["x", "y", "zz"]), n) for n in range(200)]
    writer = RunWriter(tmp_path, ["key", "sub"], run_rows=17)
    for start in range(0, len(rows), 23):
        part = rows[start : start + 23]
        columns = {
            "key": [row[0] for row in part],
            "sub": [row[1] for row in part],
            "n": [row[2] for row in part],
        }
        writer.add(pa.table(columns))
    runs = writer.finish()
    assert len(runs) == 12
    merged = list(merge_runs(runs, ["key", "sub", "n"], 2))
    assert merged == sorted(rows, key=lambda row: row[:2])  # sorted() is stable too


def test_outer_join_of_sorted_streams():
    left = iter([("a", 1), ("c", 3), ("d", 4)])
    right = iter([("b", "B"), ("c", "C"), ("e", "E")])
    assert list(outer_join(left, right)) == [
        ("a", 1, None),
        ("b", None, "B"),
        ("c", 3, "C"),
        ("d", 4, None),
        ("e", None, "E"),
    ]


def test_entries_are_folder_entries(tmp_path):
    root = _make_folder(tmp_path / "faces")
    runs = sort_landmark_list(_write_list(tmp_path / "list.txt", "txt"))
    config = PrepConfig(source=str(root), out="/unused")
    entries = [e for chunk in iter_chunks(Source("folder", root, landmarks=runs), config)
               for e in chunk.entries]  # fmt: skip
    assert all(isinstance(e, FolderEntry) for e in entries)
    assert {type(e.landmarks) for e in entries} == {tuple, type(None)}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("missing.txt", None),
        ("no_path.csv", "file,x1\na.jpg,1\n"),
        ("no_points.csv", "path,x1,y1\na/b.jpg,1,2\n"),
        ("broken.parquet", "not parquet"),
    ],
)
def test_bad_landmark_files_are_input_errors_naming_the_file(tmp_path, name, content):
    from facetrain.data_prep.errors import PrepInputError

    root = _make_folder(tmp_path / "faces")
    landmark_file = tmp_path / name
    if content is not None:
        landmark_file.write_text(content)
    config = PrepConfig(source=str(root), out=str(tmp_path / "o"), landmarks=str(landmark_file))
    with pytest.raises(PrepInputError, match=name):
        open_source(config)
