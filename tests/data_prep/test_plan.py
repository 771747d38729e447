"""The planner on hand-made scan rows: dedupe, conflicts, filters, labels, hold-out, shards.

The rows are fed as a stream of chunks (cut at arbitrary places, an identity may span several
chunks), which must plan exactly like one chunk holding everything.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.errors import PrepInputError
from facetrain.data_prep.filters import (
    REASON_CONFLICT,
    REASON_DUPLICATE,
    REASON_FEW_IMAGES,
    REASON_OVER_CAP,
    REASON_SMALL_FACE,
)
from facetrain.data_prep.plan import PLAN_INPUT_SCHEMA, ROW_BITS
from facetrain.data_prep.plan import make_plan as plan_chunks


class TableChunks:
    """A sorted table served as chunks of the given sizes (the last takes the rest)."""

    def __init__(self, table: pa.Table, sizes: list[int]) -> None:
        bounds = [0]
        for size in sizes:
            bounds.append(min(table.num_rows, bounds[-1] + size))
        bounds.append(table.num_rows)
        self.starts = bounds[:-1]
        self.tables = [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
        self.total_rows = table.num_rows
        self.table = table

    def sources(self, row_ids) -> list[str]:
        """The source of each planner row id (chunk << 32 | row)."""
        return [
            self.table.column("source")[self.starts[r >> ROW_BITS] + (r & 0xFFFFFFFF)].as_py()
            for r in row_ids
        ]

    def __len__(self) -> int:
        return len(self.tables)

    def read(self, index: int) -> pa.Table:
        return self.tables[index]


def _scan(rows: list[tuple[str, str, str, float]]) -> pa.Table:
    """(identity, source, content, face size) -> planner rows sorted as the process tasks sort
    them (identity, then path); equal content = equal hash."""
    return pa.Table.from_pylist(
        [
            {
                "identity": identity,
                "source": source,
                "sha1": hashlib.sha1(content.encode()).digest(),
                "face_size": size,
                "reason": None,
                "error": None,
            }
            for identity, source, content, size in sorted(rows)
        ],
        schema=PLAN_INPUT_SCHEMA,
    )


@dataclass
class Planned:
    samples: pa.Table  # the plan's samples with their source
    rejects: pa.Table
    classes: dict
    shards: list


def _planned(table: pa.Table, config: PrepConfig, sizes: list[int]) -> Planned:
    chunks = TableChunks(table, sizes)
    plan = plan_chunks(chunks, config, Path(tempfile.mkdtemp(prefix="plan-test-")))
    samples = pa.concat_tables(
        [
            rows.append_column("shard", pa.array([spec.name] * rows.num_rows, pa.string()))
            for spec in plan.shards
            for rows in [plan.shard_rows(spec)]
        ]
    )
    samples = samples.append_column(
        "source", pa.array(chunks.sources(samples.column("row_id").to_pylist()), pa.string())
    ).drop_columns(["row_id"])
    return Planned(samples, plan.rejects(), plan.classes, plan.shards)


def make_plan(table: pa.Table, config: PrepConfig) -> Planned:
    """The plan of `table` as one chunk; the same rows cut into many small chunks (so that
    identities span chunks, as .rec identities may) must plan identically."""
    planned = _planned(table, config, [])
    streamed = _planned(table, config, [3, 1, 2] * table.num_rows)
    assert streamed.samples.equals(planned.samples)
    assert streamed.rejects.equals(planned.rejects)
    assert streamed.classes == planned.classes and streamed.shards == planned.shards
    return planned


def _config(**changes) -> PrepConfig:
    return PrepConfig(source="s", out="o", **changes)


def test_dedupe_conflicts_and_filters():
    scan = _scan(
        [
            ("ann", "ann/1", "a1", 80),
            ("ann", "ann/2", "a1", 80),
            ("ann", "ann/3", "a3", 80),
            ("bob", "bob/1", "shared", 80),
            ("cat", "cat/1", "shared", 80),
            ("bob", "bob/2", "b2", 80),
            ("bob", "bob/3", "b3", 80),
            ("bob", "bob/4", "b4", 10),
            ("dan", "dan/1", "d1", 80),
        ]
    )
    plan = make_plan(scan, _config(min_images=2, min_face_size=20))
    reasons = dict(
        zip(
            plan.rejects.column("source").to_pylist(),
            plan.rejects.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert reasons == {
        "ann/2": REASON_DUPLICATE,
        "bob/1": REASON_CONFLICT,
        "cat/1": REASON_CONFLICT,
        "bob/4": REASON_SMALL_FACE,
        "dan/1": REASON_FEW_IMAGES,
    }
    assert plan.classes == {"train": ["ann", "bob"], "val": []}
    assert sorted(plan.samples.column("source").to_pylist()) == ["ann/1", "ann/3", "bob/2", "bob/3"]


def test_cap_is_a_deterministic_subset_by_content_hash():
    scan = _scan([("ann", f"ann/{i}", f"content{i}", 80) for i in range(10)])
    plan = make_plan(scan, _config(max_images=4))
    kept = set(plan.samples.column("source").to_pylist())
    by_hash = sorted(range(10), key=lambda i: hashlib.sha1(f"content{i}".encode()).digest())
    assert kept == {f"ann/{i}" for i in by_hash[:4]}
    assert plan.rejects.column("reason").to_pylist() == [REASON_OVER_CAP] * 6


def test_labels_hold_out_and_identity_grouped_shards():
    names = [f"id{n:02d}" for n in range(20)]
    scan = _scan(
        [
            (name, f"{name}/{i}", f"{name}-{i}", 80)
            for n, name in enumerate(names)
            for i in range(1 + n % 4)
        ]
    )
    plan = make_plan(scan, _config(val_identities=5, shard_size=6, seed=3))
    val, train = plan.classes["val"], plan.classes["train"]
    assert len(val) == 5 and sorted(val + train) == names and train == sorted(train)
    rows = plan.samples.to_pylist()
    for split, names_in_split in (("train", train), ("val", val)):
        for row in (r for r in rows if r["split"] == split):
            assert names_in_split[row["class"]] == row["identity"]
    # Each identity lies in exactly one shard, contiguously; shards respect the size target.
    seen_shard: dict[str, str] = {}
    previous = None
    for row in rows:
        if row["identity"] != previous:
            assert row["identity"] not in seen_shard, "identity split or not contiguous"
            seen_shard[row["identity"]] = row["shard"]
            previous = row["identity"]
        assert seen_shard[row["identity"]] == row["shard"]
    for spec in plan.shards:
        assert spec.samples <= 6
    # Same inputs and seed: the same plan (what resuming relies on); another seed: another order.
    assert make_plan(scan, _config(val_identities=5, shard_size=6, seed=3)).samples.equals(
        plan.samples
    )
    other = make_plan(scan, _config(val_identities=5, shard_size=6, seed=4))
    assert (
        other.samples.column("identity").to_pylist() != plan.samples.column("identity").to_pylist()
    )


def test_named_hold_out_and_impossible_hold_out():
    scan = _scan([("ann", "ann/1", "a", 80), ("bob", "bob/1", "b", 80), ("cat", "cat/1", "c", 80)])
    plan = make_plan(scan, _config(val_identities=["bob"]))
    assert plan.classes == {"train": ["ann", "cat"], "val": ["bob"]}
    with pytest.raises(PrepInputError, match="zed"):
        make_plan(scan, _config(val_identities=["zed"]))
    with pytest.raises(PrepInputError, match="none would be left"):
        make_plan(scan, _config(val_identities=3))


def test_dedupe_on_many_collisions_matches_a_plain_python_reference():
    import random

    rng = random.Random(3)
    rows = []
    for n in range(600):
        identity = rng.randrange(12)
        # Mostly an identity's own images (duplicates), sometimes a shared one (conflicts).
        content = (
            f"shared{rng.randrange(20)}"
            if rng.random() < 0.1
            else f"{identity}/{rng.randrange(40)}"
        )
        rows.append((f"id{identity}", f"p{n:04d}.jpg", content, 10.0))
    plan = make_plan(_scan(rows), PrepConfig(source="/s", out="/o"))
    owners: dict[str, set[str]] = {}
    for identity, _, content, _ in rows:
        owners.setdefault(content, set()).add(identity)
    expected, seen = {}, set()
    for identity, source, content, _ in sorted(rows):
        if len(owners[content]) > 1:
            expected[source] = REASON_CONFLICT
        elif (identity, content) in seen:
            expected[source] = REASON_DUPLICATE
        seen.add((identity, content))
    rejected = dict(
        zip(
            plan.rejects.column("source").to_pylist(),
            plan.rejects.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert rejected == expected
    reasons = set(expected.values())
    assert reasons == {REASON_CONFLICT, REASON_DUPLICATE}  # the data exercises both
    assert set(plan.samples.column("source").to_pylist()) == {r[1] for r in rows} - set(expected)


def test_a_stream_that_returns_to_an_earlier_identity_is_refused():
    # What a .rec written out of label order looks like to the planner.
    table = _scan([("ann", "a1", "x1", 80), ("bob", "b1", "x2", 80)])
    later = _scan([("ann", "a2", "x3", 80)])
    chunks = TableChunks(pa.concat_tables([table, later]), [2])
    with pytest.raises(PrepInputError, match="chunk 1: identities are not grouped"):
        plan_chunks(chunks, _config(), Path(tempfile.mkdtemp(prefix="plan-test-")))


def test_shards_are_about_equally_full():
    # 114 images, 2 to 5 per identity, at 50 a shard: filled greedily, shards of 47, 46
    # and 21; packed, three of 37 to 39 (the shard tasks run in parallel).
    sizes = [2 + n % 4 for n in range(33)]
    scan = _scan(
        [
            (f"id{n:02d}", f"id{n:02d}/{i}", f"{n}-{i}", 80)
            for n, size in enumerate(sizes)
            for i in range(size)
        ]
    )
    plan = make_plan(scan, _config(shard_size=50))
    filled = [spec.samples for spec in plan.shards]
    assert sum(filled) == sum(sizes) == 114
    assert len(filled) == 3 and max(filled) <= 50
    assert max(filled) - min(filled) <= max(sizes)


def test_an_identity_larger_than_a_shard_gets_its_own():
    sizes = {"big": 12, "a": 2, "b": 3, "c": 1}
    scan = _scan(
        [
            (name, f"{name}/{i}", f"{name}-{i}", 80)
            for name, size in sizes.items()
            for i in range(size)
        ]
    )
    plan = make_plan(scan, _config(shard_size=5))
    by_shard: dict[str, set[str]] = {}
    for row in plan.samples.to_pylist():
        by_shard.setdefault(row["shard"], set()).add(row["identity"])
    assert {"big"} in by_shard.values()
    assert all(spec.samples <= 5 for spec in plan.shards if spec.stop - spec.first > 1)
    assert sum(spec.samples for spec in plan.shards) == 18
