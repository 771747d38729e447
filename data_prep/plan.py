"""The planner: scanned rows -> what goes where. Pure and deterministic (a rerun after a crash
must produce the same shards): dedupe, filters, hold-out identities, labels, shard packing.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

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
    rejects: list[dict] = []

    def reject(rows, reason: str) -> None:
        rejects.extend(
            {"source": r["source"], "identity": r["identity"], "reason": reason} for r in rows
        )

    failed = scan.filter(pc.is_valid(scan.column("reason")))
    rejects.extend(failed.select(["source", "identity", "reason"]).to_pylist())

    usable = scan.filter(pc.is_null(scan.column("reason")))
    usable = usable.sort_by([("identity", "ascending"), ("source", "ascending")])
    rows = usable.select(
        ["identity", "source", "offset", "sha1", "landmarks", "face_size"]
    ).to_pylist()

    identities_of_hash: dict[bytes, set[str]] = defaultdict(set)
    for row in rows:
        identities_of_hash[row["sha1"]].add(row["identity"])
    conflicts = {digest for digest, owners in identities_of_hash.items() if len(owners) > 1}
    del identities_of_hash

    by_identity: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple[str, bytes]] = set()
    for row in rows:
        if row["sha1"] in conflicts:
            reject([row], REASON_CONFLICT)
        elif (row["identity"], row["sha1"]) in seen:
            reject([row], REASON_DUPLICATE)
        elif row["face_size"] is not None and row["face_size"] < config.min_face_size:
            reject([row], REASON_SMALL_FACE)
        else:
            seen.add((row["identity"], row["sha1"]))
            by_identity[row["identity"]].append(row)
    del rows, seen

    kept: dict[str, list[dict]] = {}
    for identity in sorted(by_identity):
        images = by_identity[identity]
        if config.max_images is not None and len(images) > config.max_images:
            # A content-hash order: deterministic, and unrelated to file naming habits.
            by_hash = sorted(images, key=lambda row: row["sha1"])
            chosen = {id(row) for row in by_hash[: config.max_images]}
            reject([row for row in images if id(row) not in chosen], REASON_OVER_CAP)
            images = [row for row in images if id(row) in chosen]
        if len(images) < config.min_images:
            reject(images, REASON_FEW_IMAGES)
            continue
        kept[identity] = images

    split_of = _assign_splits(sorted(kept), config)
    classes = {split: sorted(i for i in kept if split_of[i] == split) for split in SPLITS}

    plan_rows: list[dict] = []
    shards: list[ShardSpec] = []
    for split in SPLITS:
        class_of = {identity: index for index, identity in enumerate(classes[split])}
        order = list(classes[split])
        random.Random(f"{config.seed}:{split}").shuffle(order)
        for shard_index, group in enumerate(_pack(order, kept, config.shard_size)):
            name = f"{split}-{shard_index:06d}"
            start = len(plan_rows)
            for identity in group:
                for position, row in enumerate(kept[identity]):
                    plan_rows.append(
                        {
                            "key": f"{split}_{class_of[identity]:06d}_{position:04d}",
                            "split": split,
                            "shard": name,
                            "class": class_of[identity],
                            "identity": identity,
                            "source": row["source"],
                            "offset": row["offset"],
                            "sha1": row["sha1"],
                            "landmarks": row["landmarks"],
                        }
                    )
            shards.append(ShardSpec(name, split, start, len(plan_rows), len(group)))
    return Plan(
        samples=pa.Table.from_pylist(plan_rows, schema=PLAN_SCHEMA),
        shards=shards,
        rejects=pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA),
        classes=classes,
    )


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


def _pack(order: list[str], kept: dict[str, list[dict]], shard_size: int) -> list[list[str]]:
    """Whole identities into shards of about `shard_size` samples (a big identity fills one)."""
    groups: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for identity in order:
        count = len(kept[identity])
        if current and filled + count > shard_size:
            groups.append(current)
            current, filled = [], 0
        current.append(identity)
        filled += count
    if current:
        groups.append(current)
    return groups
