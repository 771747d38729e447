"""The planner: processed chunks -> what goes where, in memory that does not grow with images.

Pure and deterministic (a rerun after a crash must produce the same shards). The chunks are
read as a stream, twice, and never held together:

1. per identity: duplicates, small faces, the cap (`filters.identity_rejects`); every usable
   row's hash goes to an on-disk hash bucket;
2. per hash bucket: label conflicts (`filters.conflicting_rows`);
3. per identity, in memory: final counts, min_images, hold-out, classes, shard packing;
4. the chunks again: each row's final verdict; kept row ids go to an on-disk array in
   identity order, rejects to a Parquet file.

The driver holds a few numbers per identity (names, counts, class, shard), the row ids of
label conflicts, and one chunk at a time. Each identity's usable rows must be contiguous in
the chunk stream (image folders are listed by identity; insightface .rec files are written
by label); a stream that breaks this is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.errors import PrepInputError
from facetrain.data_prep.filters import (
    IDENTITY_REASONS,
    KEEP,
    REASON_CONFLICT,
    REASON_FEW_IMAGES,
    conflicting_rows,
    hash_words,
    identity_rejects,
)
from facetrain.data_prep.shard_format import CLASS_DIGITS, POSITION_DIGITS

SPLITS = ("train", "val")
ROWS_PER_BUCKET = 1 << 18  # conflict detection sorts one bucket at a time (about 25 MiB)
ROW_BITS = 32  # row id = chunk index << 32 | row in chunk

# What the planner reads of each processed chunk (process.py writes it, in row order).
PLAN_INPUT_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("source", pa.string()),
        ("sha1", pa.binary(20)),
        ("face_size", pa.float64()),
        ("reason", pa.string()),  # scan-stage reject (null: usable)
        ("error", pa.string()),  # decode/align/encode failure of a face chosen to be kept
    ]
)
REJECT_SCHEMA = pa.schema(
    [("source", pa.string()), ("identity", pa.string()), ("reason", pa.string())]
)
SHARD_ROWS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("class", pa.int64()),
        ("identity", pa.string()),
        ("row_id", pa.int64()),
    ]
)
_BUCKET_ROW = np.dtype(
    [("low", "<u4"), ("middle", "<u8"), ("high", "<u8"), ("code", "<i8"), ("row_id", "<i8"),
     ("counted", "?")]
)  # fmt: skip


class ChunkTables(Protocol):
    """The processed chunks, in order: `read(i)` gives chunk i's PLAN_INPUT_SCHEMA rows."""

    total_rows: int

    def __len__(self) -> int: ...

    def read(self, index: int) -> pa.Table: ...


class ChunkFiles:
    """ChunkTables kept as Arrow IPC files in a local folder (memory-mapped when read)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.count = 0
        self.total_rows = 0

    def __len__(self) -> int:
        return self.count

    def path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.arrow"

    def add(self, index: int, table: pa.Table) -> None:
        with ipc.new_file(self.path(index), table.schema) as writer:
            writer.write_table(table)
        self.count = max(self.count, index + 1)
        self.total_rows += table.num_rows

    def read(self, index: int) -> pa.Table:
        return ipc.open_file(pa.memory_map(str(self.path(index)))).read_all()


@dataclass(frozen=True)
class ShardSpec:
    name: str  # train-000000
    split: str
    samples: int
    first: int  # its identities: Plan.shard_order[split][first:stop]
    stop: int


@dataclass
class Plan:
    """Identity-level arrays (a few numbers per identity); the per-image lists are on disk."""

    workdir: Path  # kept row ids and rejects live here
    names: pa.StringArray  # identity code -> name (codes follow name order)
    counts: np.ndarray  # identity code -> images kept (0: identity dropped)
    class_of: np.ndarray  # identity code -> class index in its split, -1: dropped
    offsets: np.ndarray  # identity code -> first of its kept row ids in kept_file
    class_codes: dict[str, np.ndarray]  # split -> identity codes in class order
    shard_order: dict[str, np.ndarray]  # split -> identity codes in the order shards hold them
    shards: list[ShardSpec]
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def kept_file(self) -> Path:
        return self.workdir / "kept-rows.int64"

    @property
    def rejects_file(self) -> Path:
        return self.workdir / "rejects.parquet"

    @property
    def accepted(self) -> int:
        return int(self.offsets[-1])

    @property
    def classes(self) -> dict[str, list[str]]:
        """split -> identity name of each class (a Python list per name: small plans only)."""
        return {
            split: self.names.take(codes).to_pylist() for split, codes in self.class_codes.items()
        }

    def class_counts(self, split: str, limit: int | None = None) -> list[tuple[str, int]]:
        """(identity, images) of the first `limit` classes of `split`, in class order."""
        codes = self.class_codes[split][:limit]
        return list(
            zip(self.names.take(codes).to_pylist(), self.counts[codes].tolist(), strict=True)
        )

    def shard_rows(self, spec: ShardSpec) -> pa.Table:
        """The shard's samples in write order: each identity contiguous, in path order."""
        codes = self.shard_order[spec.split][spec.first : spec.stop]
        lengths = self.counts[codes]
        total = int(lengths.sum())
        position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        row_ids = self._kept_rows(self.offsets[codes], lengths)
        class_index = pa.array(np.repeat(self.class_of[codes], lengths))
        # shard_format.sample_key, for a whole shard at once.
        keys = pc.binary_join_element_wise(
            pa.array([spec.split] * total, pa.string()),
            pc.utf8_lpad(pc.cast(class_index, pa.string()), CLASS_DIGITS, "0"),
            pc.utf8_lpad(pc.cast(pa.array(position), pa.string()), POSITION_DIGITS, "0"),
            "_",
        )
        return pa.table(
            {
                "key": keys,
                "split": pa.array([spec.split] * total, pa.string()),
                "class": class_index,
                "identity": self.names.take(np.repeat(codes, lengths)),
                "row_id": row_ids,
            },
            schema=SHARD_ROWS_SCHEMA,
        )

    def _kept_rows(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The kept row ids [start, start + length) of each identity, concatenated.

        One pread per identity (not a memory map, whose touched pages would count against
        the driver's resident memory as the file grows)."""
        with open(self.kept_file, "rb") as handle:
            parts = [
                os.pread(handle.fileno(), 8 * length, 8 * start)
                for start, length in zip(starts.tolist(), lengths.tolist(), strict=True)
            ]
        return np.frombuffer(b"".join(parts), dtype=np.int64)

    def rejects(self) -> pa.Table:
        return pq.read_table(self.rejects_file)

    def identities_table(self) -> pa.Table:
        """identities.parquet: (split, class, identity, count) for every class of every split."""
        tables = [
            pa.table(
                {
                    "split": pa.array([split] * len(codes), pa.string()),
                    "class": pa.array(np.arange(len(codes), dtype=np.int64)),
                    "identity": self.names.take(codes),
                    "count": pa.array(self.counts[codes]),
                }
            )
            for split, codes in self.class_codes.items()
        ]
        return pa.concat_tables(tables)


def make_plan(
    chunks: ChunkTables, config: PrepConfig, workdir: Path, extra_rejects: pa.Table | None = None
) -> Plan:
    """Plan the chunks into shards; `extra_rejects` (REJECT_SCHEMA) joins rejects.parquet."""
    workdir.mkdir(parents=True, exist_ok=True)
    names, counts, buckets = _count_identities(chunks, config, workdir)
    conflicted_ids = _label_conflicts(buckets, counts)
    # Identity level: who stays, which split, which class, which shard.
    is_kept = counts >= max(1, config.min_images)
    counts = np.where(is_kept, counts, 0)
    class_codes = _assign_splits(names, np.flatnonzero(is_kept), config)
    class_of = np.full(len(names), -1, dtype=np.int64)
    for codes in class_codes.values():
        class_of[codes] = np.arange(len(codes))
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    reasons = _write_verdicts(chunks, config, workdir, is_kept, conflicted_ids, extra_rejects)
    if (workdir / "kept-rows.int64").stat().st_size != 8 * int(offsets[-1]):
        raise AssertionError("planner: the two passes over the chunks disagree")
    shard_order, shards = _pack_shards(counts, class_codes, config)
    return Plan(
        workdir=workdir,
        names=names,
        counts=counts,
        class_of=class_of,
        offsets=offsets,
        class_codes=class_codes,
        shard_order=shard_order,
        shards=shards,
        rejected_by_reason=reasons,
    )


def _count_identities(
    chunks: ChunkTables, config: PrepConfig, workdir: Path
) -> tuple[pa.StringArray, np.ndarray, list[Path]]:
    """Pass 1: (identity names, images each keeps after the per-identity rules, hash buckets
    holding every usable row's hash)."""
    num_buckets = 1 << max(0, int(np.ceil(np.log2(max(chunks.total_rows, 1) / ROWS_PER_BUCKET))))
    buckets = [workdir / f"hash-bucket-{index:05d}.bin" for index in range(num_buckets)]
    for path in buckets:
        path.write_bytes(b"")
    name_parts: list[pa.Array] = []
    count_parts: list[np.ndarray] = []
    base = 0
    for batch in _identity_batches(chunks):
        codes, local_names = _codes(batch, base)
        base += len(local_names)
        name_parts.append(local_names)
        _, counted = _identity_verdict(batch, codes, config)
        count_parts.append(np.bincount(codes[counted] - codes[0], minlength=len(local_names)))
        _append_to_buckets(buckets, batch, codes, counted)
    names = pa.concat_arrays(name_parts) if name_parts else pa.array([], pa.string())
    counts = np.concatenate(count_parts).astype(np.int64) if count_parts else np.zeros(0, np.int64)
    return names, counts, buckets


def _label_conflicts(buckets: list[Path], counts: np.ndarray) -> np.ndarray:
    """Pass 2, one hash bucket at a time: the sorted row ids of label conflicts; `counts`
    loses each conflicted image it had counted."""
    conflicted: list[np.ndarray] = []
    for path in buckets:
        rows = np.fromfile(path, dtype=_BUCKET_ROW)
        path.unlink()
        is_conflict = conflicting_rows((rows["low"], rows["middle"], rows["high"]), rows["code"])
        conflicted.append(rows["row_id"][is_conflict])
        np.subtract.at(counts, rows["code"][is_conflict & rows["counted"]], 1)
    return np.sort(np.concatenate(conflicted)) if conflicted else np.zeros(0, np.int64)


def _write_verdicts(
    chunks: ChunkTables,
    config: PrepConfig,
    workdir: Path,
    is_kept: np.ndarray,
    conflicted_ids: np.ndarray,
    extra_rejects: pa.Table | None,
) -> dict[str, int]:
    """Pass 3: each row's verdict; kept row ids (identity order) to kept-rows.int64, rejects
    to rejects.parquet. Returns the reject count per reason."""
    reasons: Counter[str] = Counter()
    with (
        open(workdir / "kept-rows.int64", "wb") as kept_out,
        pq.ParquetWriter(workdir / "rejects.parquet", REJECT_SCHEMA) as rejects_out,
    ):

        def reject(table: pa.Table) -> None:
            if table.num_rows:
                table = table.cast(REJECT_SCHEMA)
                reasons.update(table.column("reason").to_pylist())
                rejects_out.write_table(table)

        if extra_rejects is not None:
            reject(extra_rejects)
        base = 0
        for batch in _identity_batches(chunks, on_failed=reject):
            codes, local_names = _codes(batch, base)
            base += len(local_names)
            verdict, _ = _identity_verdict(batch, codes, config)
            row_ids = batch.column("row_id").to_numpy()
            reason = _row_reasons(
                verdict,
                batch.column("error").to_numpy(zero_copy_only=False),
                is_kept[codes],
                np.isin(row_ids, conflicted_ids),
            )
            keep = _is_none(reason)
            row_ids[keep].astype(np.int64).tofile(kept_out)
            rejected = np.flatnonzero(~keep)
            reject(
                pa.table(
                    {
                        "source": batch.column("source").take(rejected),
                        "identity": batch.column("identity").take(rejected),
                        "reason": pa.array(reason[rejected].tolist(), pa.string()),
                    }
                )
            )
    return dict(sorted(reasons.items()))


def _row_reasons(
    verdict: np.ndarray, error: np.ndarray, identity_kept: np.ndarray, is_conflict: np.ndarray
) -> np.ndarray:
    """Each row's reject reason (None: kept). One reason a row, the first that applies:
    label conflict, the per-identity rules, a decode failure, too few images left."""
    reason = np.full(len(verdict), None, dtype=object)
    reason[~identity_kept] = REASON_FEW_IMAGES
    failed = (verdict == KEEP) & ~_is_none(error)
    reason[failed] = error[failed]
    for value, text in IDENTITY_REASONS.items():
        reason[verdict == value] = text
    reason[is_conflict] = REASON_CONFLICT
    return reason


def _is_none(values: np.ndarray) -> np.ndarray:
    """Elementwise `is None` of an object array."""
    return np.frompyfunc(lambda value: value is None, 1, 1)(values).astype(bool)


def _identity_batches(chunks: ChunkTables, on_failed=None) -> Iterator[pa.Table]:
    """Usable rows of the chunk stream with a `row_id`, cut so no identity spans two batches.

    `on_failed(table)` receives each chunk's scan-stage rejects (source, identity, reason).
    """
    carry: pa.Table | None = None
    for index in range(len(chunks)):
        table = chunks.read(index)
        if on_failed is not None:
            failed = table.filter(pc.is_valid(table.column("reason")))
            on_failed(failed.select(REJECT_SCHEMA.names))
        row_ids = (np.int64(index) << ROW_BITS) + np.arange(table.num_rows, dtype=np.int64)
        table = table.append_column("row_id", pa.array(row_ids))
        usable = table.filter(pc.is_null(table.column("reason")))
        if usable.num_rows == 0:
            continue
        if carry is not None:
            usable = pa.concat_tables([carry, usable])
        identity = usable.column("identity")
        if (
            usable.num_rows > 1
            and pc.any(pc.less(identity.slice(1), identity.slice(0, usable.num_rows - 1))).as_py()
        ):
            raise PrepInputError(
                f"chunk {index}: identities are not grouped (an identity's images must be "
                "contiguous: a .rec file must be written in label order, as insightface does)"
            )
        last = identity[-1]
        cut = pc.index(identity, last).as_py()  # the last identity may go on in the next chunk
        if cut > 0:
            yield usable.slice(0, cut)
        carry = usable.slice(cut)
    if carry is not None and carry.num_rows:
        yield carry


def _codes(batch: pa.Table, base: int) -> tuple[np.ndarray, pa.Array]:
    """Identity codes of a batch's rows (base + rank of the name: rows are sorted by name)."""
    encoded = pc.dictionary_encode(batch.column("identity")).combine_chunks()
    local = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return base + local, encoded.dictionary


def _identity_verdict(
    batch: pa.Table, codes: np.ndarray, config: PrepConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(identity_rejects verdict, counted: kept and processed without error) per row."""
    face_size = batch.column("face_size").to_numpy()
    verdict = identity_rejects(codes, batch.column("sha1"), face_size, config)
    counted = (verdict == KEEP) & pc.is_null(batch.column("error")).to_numpy()
    return verdict, counted


def _append_to_buckets(
    buckets: list[Path], batch: pa.Table, codes: np.ndarray, counted: np.ndarray
) -> None:
    rows = np.empty(batch.num_rows, dtype=_BUCKET_ROW)
    rows["low"], rows["middle"], rows["high"] = hash_words(batch.column("sha1"))
    rows["code"], rows["row_id"], rows["counted"] = (
        codes,
        batch.column("row_id").to_numpy(),
        counted,
    )
    shift = 64 - int(np.log2(len(buckets)))
    bucket_of = (rows["high"] >> np.uint64(shift)) if len(buckets) > 1 else np.zeros(len(rows), int)
    for bucket in np.unique(bucket_of):
        with open(buckets[int(bucket)], "ab") as handle:
            rows[bucket_of == bucket].tofile(handle)


def _seeded(config: PrepConfig, purpose: str) -> np.random.Generator:
    """A generator that depends only on the seed and what it is for."""
    digest = hashlib.sha256(f"{config.seed}:{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _assign_splits(
    names: pa.StringArray, kept: np.ndarray, config: PrepConfig
) -> dict[str, np.ndarray]:
    """split -> identity codes of its classes, in name order (`kept`: codes passing filters)."""
    held_out = config.val_identities
    if isinstance(held_out, int):
        if held_out >= len(kept) and held_out > 0:
            raise PrepInputError(
                f"val_identities={held_out}: only {len(kept)} identities pass the filters, "
                "none would be left to train on"
            )
        is_val = np.zeros(len(kept), dtype=bool)
        is_val[_seeded(config, "val").choice(len(kept), size=held_out, replace=False)] = True
    else:
        wanted = pa.array(sorted(set(held_out)), pa.string())
        found = pc.index_in(wanted, value_set=names.take(kept))
        missing = wanted.filter(pc.is_null(found)).to_pylist()
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise PrepInputError(
                f"val_identities: {len(missing)} name(s) not among the identities that pass the filters: {shown}"
            )
        is_val = np.zeros(len(kept), dtype=bool)
        is_val[found.to_numpy(zero_copy_only=False).astype(np.int64)] = True
    return {"train": kept[~is_val], "val": kept[is_val]}


def _pack_shards(
    counts: np.ndarray, class_codes: dict[str, np.ndarray], config: PrepConfig
) -> tuple[dict[str, np.ndarray], list[ShardSpec]]:
    """Whole identities, shuffled with the seed, into shards of at most `shard_size` samples
    (an identity larger than that gets a shard of its own): (split -> identity codes in shard
    order, the shards)."""
    order: dict[str, np.ndarray] = {}
    shards: list[ShardSpec] = []
    for split in SPLITS:
        order[split] = _seeded(config, split).permutation(class_codes[split])
        sizes = counts[order[split]]
        bounds = _balanced_bounds(sizes, config.shard_size)
        shards += [
            ShardSpec(f"{split}-{index:06d}", split, int(sizes[a:b].sum()), a, b)
            for index, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
            if b > a
        ]
    return order, shards


def _balanced_bounds(sizes: np.ndarray, shard_size: int) -> list[int]:
    """Cut points that split `sizes` (identities in shard order) into shards of at most
    `shard_size` samples, about equally full, and about total / shard_size of them.

    Equal shards, not full ones and a remainder: the shard tasks run in parallel, so the
    largest shard sets the phase's time, and a training job's ranks read equal shares.
    Identity i goes to shard floor(n * midpoint_i / total), the shard its middle falls in;
    n grows from ceil(total / shard_size) until no shard of several identities is too big.
    """
    total = int(sizes.sum())
    if total == 0:
        return [0, len(sizes)]
    middles = np.cumsum(sizes) - sizes / 2
    fewest = -(-total // shard_size)
    for count in range(fewest, min(len(sizes), 2 * fewest + 8) + 1):
        shard_of = np.minimum((middles * count / total).astype(np.int64), count - 1)
        bounds = [0, *(np.flatnonzero(np.diff(shard_of)) + 1).tolist(), len(sizes)]
        filled = np.add.reduceat(sizes, bounds[:-1])
        if np.all((filled <= shard_size) | (np.diff(bounds) == 1)):
            return bounds
    return _greedy_bounds(sizes, shard_size)  # identities too uneven for equal shards


def _greedy_bounds(sizes: np.ndarray, shard_size: int) -> list[int]:
    """Fill each shard up to `shard_size`, then start the next."""
    bounds, filled = [0], 0
    for position, size in enumerate(sizes.tolist()):
        if position > bounds[-1] and filled + size > shard_size:
            bounds.append(position)
            filled = 0
        filled += size
    bounds.append(len(sizes))
    return bounds
