"""The planner: scanned rows -> what goes where. Pure and deterministic (a rerun after a crash
must produce the same shards): dedupe, filters, hold-out identities, labels, shard packing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.config import PrepConfig
from data_prep.errors import PrepInputError

REASON_DUPLICATE = "duplicate within identity"
REASON_CONFLICT = "label conflict (same image under several identities)"
REASON_SMALL_FACE = "face smaller than min_face_size"
REASON_OVER_CAP = "over max_images for identity"
REASON_FEW_IMAGES = "identity below min_images"

SPLITS = ("train", "val")

PLAN_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("class", pa.int64()),
        ("identity", pa.string()),
        ("source", pa.string()),
        ("offset", pa.int64()),
        ("sha1", pa.binary(20)),
        ("landmarks", pa.list_(pa.float64(), 10)),
    ]
)
REJECT_SCHEMA = pa.schema(
    [("source", pa.string()), ("identity", pa.string()), ("reason", pa.string())]
)


@dataclass(frozen=True)
class ShardSpec:
    name: str  # train-000000
    split: str
    start: int  # row range in Plan.samples
    stop: int
    identities: int


@dataclass
class Plan:
    samples: pa.Table  # PLAN_SCHEMA, in shard order, each identity contiguous
    shards: list[ShardSpec]
    rejects: pa.Table  # REJECT_SCHEMA
    classes: dict[str, list[str]] = field(default_factory=dict)  # split -> identity per class

    def shard_rows(self, spec: ShardSpec) -> pa.Table:
        return self.samples.slice(spec.start, spec.stop - spec.start)


def make_plan(scan: pa.Table, config: PrepConfig) -> Plan:
    """Columnar (pyarrow + numpy), so the driver plans millions of images without a Python
    object per image (1 M images: about 8 s)."""
    failed = scan.filter(pc.is_valid(scan.column("reason")))
    # Driver memory: the usable rows, sorted by (identity, source), are planned from three
    # narrow columns; sources and landmarks are taken from the scan once, for the kept rows.
    usable_rows = pc.indices_nonzero(pc.is_null(scan.column("reason")))
    order = pc.sort_indices(
        scan.select(["identity", "source"]).take(usable_rows),
        sort_keys=[("identity", "ascending"), ("source", "ascending")],
    )
    scan_rows = pc.take(usable_rows, order).to_numpy()  # usable row -> scan row
    del usable_rows, order
    usable = scan.select(["identity", "sha1", "face_size"]).take(scan_rows).combine_chunks()
    encoded = pc.dictionary_encode(usable.column("identity")).combine_chunks()
    names = encoded.dictionary.to_pylist()  # sorted, as the rows are
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)

    dropped = _reject_masks(usable, codes, len(names), config)
    keep = ~np.logical_or.reduce(list(dropped.values())) if dropped else np.ones(len(codes), bool)
    rejects = [failed.select(["source", "identity", "reason"])]
    for reason, mask in dropped.items():
        chosen = scan.select(["source", "identity"]).take(scan_rows[mask])
        rejects.append(
            chosen.append_column("reason", pa.array([reason] * chosen.num_rows, pa.string()))
        )

    images_of = np.bincount(codes[keep], minlength=len(names))
    kept_names = [names[code] for code in np.flatnonzero(images_of > 0)]
    split_of = _assign_splits(kept_names, config)
    classes = {split: [name for name in kept_names if split_of[name] == split] for split in SPLITS}
    layout = _layout(names, images_of, classes, config)
    return Plan(
        samples=_samples(scan, scan_rows, codes, keep, layout),
        shards=layout.shards,
        rejects=pa.concat_tables([table.cast(REJECT_SCHEMA) for table in rejects]),
        classes=classes,
    )


def _reject_masks(
    usable: pa.Table, codes: np.ndarray, identities: int, config: PrepConfig
) -> dict[str, np.ndarray]:
    """reason -> rows it removes, applied in this order (each row gets one reason)."""
    count = len(codes)
    rows = np.arange(count)
    sha1 = usable.column("sha1")
    is_conflict, is_first = _same_bytes(sha1, codes)
    is_duplicate = ~is_conflict & ~is_first
    face_size = usable.column("face_size").to_numpy(zero_copy_only=False).astype(np.float64)
    is_small = (
        ~is_conflict & ~is_duplicate & (np.nan_to_num(face_size, nan=np.inf) < config.min_face_size)
    )
    keep = ~(is_conflict | is_duplicate | is_small)

    is_over_cap = np.zeros(count, dtype=bool)
    if config.max_images is not None:
        # Keep the images with the smallest content hashes: deterministic, blind to file names.
        candidates = rows[keep]
        order = candidates[np.lexsort((*_hash_sort_keys(sha1, candidates), codes[candidates]))]
        is_over_cap[order[_rank_in_group(codes[order]) >= config.max_images]] = True
    keep &= ~is_over_cap
    images_of = np.bincount(codes[keep], minlength=identities)
    is_few = keep & (images_of[codes] < config.min_images)
    masks = {
        REASON_CONFLICT: is_conflict,
        REASON_DUPLICATE: is_duplicate,
        REASON_SMALL_FACE: is_small,
        REASON_OVER_CAP: is_over_cap,
        REASON_FEW_IMAGES: is_few,
    }
    return {reason: mask for reason, mask in masks.items() if mask.any()}


def _same_bytes(
    sha1: pa.Array | pa.ChunkedArray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(is_conflict, is_first) per row: the same bytes under several identities (every copy is
    a label conflict), and the first row (in row order, i.e. by path) of each identity's copies.

    One sort of fixed-width integer keys (hash words, identity code, row) instead of hash
    tables over the digests: about a third of the driver memory at millions of rows.
    """
    count = len(codes)
    is_conflict = np.zeros(count, dtype=bool)
    is_first = np.zeros(count, dtype=bool)
    if count == 0:
        return is_conflict, is_first
    low, middle, high = _hash_sort_keys(sha1, np.arange(count))
    order = np.lexsort((codes, low, middle, high))  # stable: equal keys keep row order
    low, middle, high = low[order], middle[order], high[order]
    same_hash = np.r_[
        False, (low[1:] == low[:-1]) & (middle[1:] == middle[:-1]) & (high[1:] == high[:-1])
    ]
    del low, middle, high
    sorted_codes = codes[order]
    same_code = np.r_[False, sorted_codes[1:] == sorted_codes[:-1]]
    is_first[order[~(same_hash & same_code)]] = True
    group = np.cumsum(~same_hash) - 1  # one group per distinct digest
    group_conflicts = np.zeros(int(group[-1]) + 1, dtype=bool)
    group_conflicts[group[same_hash & ~same_code]] = True
    is_conflict[order] = group_conflicts[group]
    return is_conflict, is_first


@dataclass
class _Layout:
    """Per identity code: split index, class index, place in the shard order, shard index."""

    split: np.ndarray
    cls: np.ndarray
    place: np.ndarray
    shard: np.ndarray
    shard_names: list[str]
    shards: list[ShardSpec]


def _layout(
    names: list[str], images_of: np.ndarray, classes: dict[str, list[str]], config: PrepConfig
) -> _Layout:
    code_of = {name: code for code, name in enumerate(names)}
    unset = np.full(len(names), -1, dtype=np.int64)
    layout = _Layout(unset.copy(), unset.copy(), unset.copy(), unset.copy(), [], [])
    start = place = 0
    for split_index, split in enumerate(SPLITS):
        for index, name in enumerate(classes[split]):
            layout.cls[code_of[name]] = index
            layout.split[code_of[name]] = split_index
        order = list(classes[split])
        random.Random(f"{config.seed}:{split}").shuffle(order)
        sizes = {name: int(images_of[code_of[name]]) for name in order}
        for shard_index, group in enumerate(_pack(order, sizes, config.shard_size)):
            for name in group:
                layout.place[code_of[name]] = place
                layout.shard[code_of[name]] = len(layout.shard_names)
                place += 1
            samples = sum(sizes[name] for name in group)
            shard_name = f"{split}-{shard_index:06d}"
            layout.shards.append(ShardSpec(shard_name, split, start, start + samples, len(group)))
            layout.shard_names.append(shard_name)
            start += samples
    return layout


def _samples(
    scan: pa.Table, scan_rows: np.ndarray, codes: np.ndarray, keep: np.ndarray, layout: _Layout
) -> pa.Table:
    """The kept rows in shard order; an identity's rows stay together, in path order."""
    kept_rows = np.flatnonzero(keep)
    kept_rows = kept_rows[np.argsort(layout.place[codes[kept_rows]], kind="stable")]
    row_codes = codes[kept_rows]
    position = _rank_in_group(row_codes)
    # Arrow string kernels, not a Python string per sample (driver memory at millions).
    split_names = _decode(layout.split[row_codes], list(SPLITS))
    shard_names = _decode(layout.shard[row_codes], layout.shard_names)
    class_index = pa.array(layout.cls[row_codes], pa.int64())
    keys = pc.binary_join_element_wise(
        split_names,
        pc.utf8_lpad(pc.cast(class_index, pa.string()), 6, "0"),
        pc.utf8_lpad(pc.cast(pa.array(position, pa.int64()), pa.string()), 4, "0"),
        "_",
    )
    taken = scan.select(["identity", "source", "offset", "sha1", "landmarks"]).take(
        pa.array(scan_rows[kept_rows], pa.int64())
    )
    return pa.table(
        {
            "key": keys,
            "split": split_names,
            "shard": shard_names,
            "class": class_index,
            "identity": taken.column("identity"),
            "source": taken.column("source"),
            "offset": taken.column("offset"),
            "sha1": taken.column("sha1"),
            "landmarks": taken.column("landmarks"),
        },
        schema=PLAN_SCHEMA,
    )


def _decode(codes: np.ndarray, names: list[str]) -> pa.Array:
    """names[code] per row as a plain string array (code -1: the empty string)."""
    indices = np.where(codes < 0, len(names), codes).astype(np.int32)
    return pa.DictionaryArray.from_arrays(indices, pa.array([*names, ""], pa.string())).cast(
        pa.string()
    )


def _rank_in_group(sorted_codes: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal codes (the input is grouped by code)."""
    if len(sorted_codes) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_codes)])
    return np.arange(len(sorted_codes)) - np.repeat(starts, lengths)


def _hash_sort_keys(sha1: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Big-endian words of each 20-byte digest, least significant first (for np.lexsort)."""
    array = sha1.combine_chunks() if isinstance(sha1, pa.ChunkedArray) else sha1
    digests = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    digests = digests[array.offset * 20 :][: len(array) * 20].reshape(-1, 20)[rows]
    high = digests[:, :8].copy().view(">u8").ravel()
    middle = digests[:, 8:16].copy().view(">u8").ravel()
    low = digests[:, 16:].copy().view(">u4").ravel()
    return low, middle, high


def _assign_splits(identities: list[str], config: PrepConfig) -> dict[str, str]:
    held_out = config.val_identities
    if isinstance(held_out, int):
        if held_out >= len(identities) and held_out > 0:
            raise PrepInputError(
                f"val_identities={held_out}: only {len(identities)} identities pass the filters, "
                "none would be left to train on"
            )
        chosen = set(random.Random(f"{config.seed}:val").sample(identities, held_out))
    else:
        chosen = set(held_out)
        missing = sorted(chosen - set(identities))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise PrepInputError(
                f"val_identities: {len(missing)} name(s) not among the identities that pass the filters: {shown}"
            )
    return {identity: "val" if identity in chosen else "train" for identity in identities}


def _pack(order: list[str], sizes: dict[str, int], shard_size: int) -> list[list[str]]:
    """Whole identities into shards of about `shard_size` samples (a big identity fills one)."""
    groups: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for identity in order:
        count = sizes[identity]
        if current and filled + count > shard_size:
            groups.append(current)
            current, filled = [], 0
        current.append(identity)
        filled += count
    if current:
        groups.append(current)
    return groups
