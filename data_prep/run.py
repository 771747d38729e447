"""One prep job: list -> scan (Ray tasks) -> plan -> write shards (Ray tasks) -> manifests.

Resumable: scan results and finished shards are kept under OUT/.work until the job ends, and
the plan is a pure function of them, so a rerun after a crash redoes only unfinished shards.
dataset.json is written last; a rerun that finds it (with the same config) does nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from data_prep.align import get_template
from data_prep.config import PrepConfig
from data_prep.errors import PrepInputError
from data_prep.executor import TaskRunner
from data_prep.landmarks import REASON_BAD_ROW
from data_prep.plan import REJECT_SCHEMA, SPLITS, Plan, make_plan
from data_prep.scan import SCAN_SCHEMA, scan_chunk
from data_prep.shards import MANIFEST_SCHEMA, is_done, read_part, write_shard
from data_prep.sources import Chunk, open_source
from data_prep.storage import OutputStore, is_url

FORMAT = "facetrain-shards/1"


@dataclass
class PrepSummary:
    out: str
    accepted: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    num_classes: int = 0
    splits: dict[str, dict] = field(default_factory=dict)  # split -> images, identities, shards
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    already_complete: bool = False
    dry_run: bool = False
    plan_text: str = ""

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def render(self) -> str:
        if self.dry_run:
            return self.plan_text
        lines = []
        if self.already_complete:
            lines.append(f"{self.out}: already complete (dataset.json present); nothing to do")
        rate = (
            self.accepted / self.seconds if self.seconds > 0 and not self.already_complete else 0.0
        )
        lines.append(
            f"accepted {self.accepted} images, rejected {self.rejected}; "
            f"{self.num_classes} train classes"
            + (
                f"; {self.shards_written} shards written, {self.shards_skipped} resumed"
                if not self.already_complete
                else ""
            )
            + (f"; {self.seconds:.1f}s ({rate:.0f} images/s)" if rate else "")
        )
        for split, info in self.splits.items():
            lines.append(
                f"  {split}: {info['images']} images, {info['identities']} identities, {info['shards']} shards"
            )
        for reason, count in sorted(self.rejected_by_reason.items(), key=lambda item: -item[1]):
            lines.append(f"  rejected {count:>8}  {reason}")
        return "\n".join(lines)


def run_prep(config: PrepConfig) -> PrepSummary:
    config = _absolute_paths(config)
    store = OutputStore(config.out)
    fingerprint = _fingerprint(config)
    if store.exists("dataset.json"):
        return _finished_summary(store, fingerprint)
    source = open_source(config)
    if not config.dry_run:
        _claim_work_dir(store, fingerprint)
    started = time.perf_counter()
    with TaskRunner(config) as runner:
        scan = _scan(runner, source, config, store)
        plan = make_plan(scan, config)
        del scan
        if config.dry_run:
            return PrepSummary(config.out, dry_run=True, plan_text=describe_plan(plan, config))
        pending = [spec for spec in plan.shards if not is_done(store, spec.name)]
        skipped = len(plan.shards) - len(pending)
        _write_shards(runner, plan, pending, config, source.kind)
    summary = _assemble(store, plan, config, fingerprint)
    summary.shards_written, summary.shards_skipped = len(pending), skipped
    summary.seconds = time.perf_counter() - started
    return summary


def _absolute_paths(config: PrepConfig) -> PrepConfig:
    update = {"source": str(Path(config.source).expanduser().resolve())}
    if not is_url(config.out):
        update["out"] = str(Path(config.out).expanduser().resolve())
    if config.landmarks:
        update["landmarks"] = str(Path(config.landmarks).expanduser().resolve())
    return config.model_copy(update=update)


def _fingerprint(config: PrepConfig) -> str:
    decisive = config.output_fingerprint()
    decisive.pop("out", None)  # moving the output directory does not change it
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def _finished_summary(store: OutputStore, fingerprint: str) -> PrepSummary:
    meta = json.loads(store.read_bytes("dataset.json"))
    if meta.get("fingerprint") != fingerprint:
        raise PrepInputError(
            f"{store.location}: holds a finished prep made with a different config; "
            "choose another --out or delete it"
        )
    return PrepSummary(
        out=store.location,
        accepted=meta["counts"]["accepted"],
        rejected_by_reason=meta["counts"]["rejected_by_reason"],
        num_classes=meta["num_classes"],
        splits={
            s: {"images": v["images"], "identities": v["identities"], "shards": len(v["shards"])}
            for s, v in meta["splits"].items()
        },
        already_complete=True,
    )


def _claim_work_dir(store: OutputStore, fingerprint: str) -> None:
    """Create OUT/.work, or resume one made by the same config; drop temp files of dead runs."""
    marker = ".work/fingerprint"
    if store.exists(marker) and store.read_bytes(marker).decode().strip() != fingerprint:
        raise PrepInputError(
            f"{store.location}: holds an unfinished prep made with a different config; "
            "rerun with the same config to resume, or choose another --out"
        )
    for folder in ("shards", ".work/scan", ".work/done"):
        store.make_dirs(folder)
    store.write_bytes(marker, (fingerprint + "\n").encode())
    for folder in ("", "shards", ".work", ".work/scan", ".work/done"):
        store.remove_temporaries(folder)


def _scan_task(index: int, chunk: Chunk, config: PrepConfig) -> tuple[int, pa.Table]:
    return index, scan_chunk(chunk, config)


def _scan(runner: TaskRunner, source, config: PrepConfig, store: OutputStore) -> pa.Table:
    from data_prep.sources import iter_chunks

    tables: dict[int, pa.Table] = {}
    bar = tqdm(desc="scan", unit="img", disable=not config.progress, dynamic_ncols=True)

    def to_scan():
        for index, chunk in enumerate(iter_chunks(source, config)):
            cached = f".work/scan/chunk-{index:06d}.parquet"
            if not config.dry_run and store.exists(cached):
                tables[index] = store.read_parquet(cached, schema=SCAN_SCHEMA)
                bar.update(tables[index].num_rows)
            else:
                yield index, chunk, config

    for index, table in runner.map(_scan_task, to_scan()):
        tables[index] = table
        bar.update(table.num_rows)
        if not config.dry_run:
            store.write_parquet(f".work/scan/chunk-{index:06d}.parquet", table)
    bar.close()
    if not tables:
        raise PrepInputError(f"source {config.source}: lists no images")
    return pa.concat_tables(
        [tables[index] for index in sorted(tables)] + [_bad_landmark_rows(source)]
    )


def _bad_landmark_rows(source) -> pa.Table:
    """Landmark-file rows that did not parse, as rejects (`file:line`, reason)."""
    bad_rows = source.landmarks.bad_rows if source.landmarks is not None else []
    for where, detail in bad_rows[:5]:
        print(f"facetrain prep: warning: {where}: {detail}", file=sys.stderr)
    if len(bad_rows) > 5:
        print(
            f"facetrain prep: warning: ... {len(bad_rows) - 5} more bad landmark rows",
            file=sys.stderr,
        )
    return pa.Table.from_pylist(
        [{"identity": "", "source": where, "reason": REASON_BAD_ROW} for where, _ in bad_rows],
        schema=SCAN_SCHEMA,
    )


def _write_shards(runner: TaskRunner, plan: Plan, pending, config: PrepConfig, kind: str) -> None:
    total = sum(spec.stop - spec.start for spec in pending)
    bar = tqdm(
        total=total, desc="shards", unit="img", disable=not config.progress, dynamic_ncols=True
    )
    work = ((spec.name, plan.shard_rows(spec), config, kind) for spec in pending)
    sizes = {spec.name: spec.stop - spec.start for spec in pending}
    for stats in runner.map(write_shard, work):
        bar.update(sizes[stats["name"].removesuffix(".tar")])
    bar.close()


def _assemble(store: OutputStore, plan: Plan, config: PrepConfig, fingerprint: str) -> PrepSummary:
    manifests, rejects, shard_stats = [], [plan.rejects], {split: [] for split in SPLITS}
    for spec in plan.shards:
        manifest, shard_rejects, stats = read_part(store, spec.name)
        manifests.append(manifest)
        rejects.append(shard_rejects)
        shard_stats[spec.split].append(
            {key: stats[key] for key in ("name", "samples", "identities", "bytes", "sha256")}
        )
    manifest = pa.concat_tables(manifests) if manifests else MANIFEST_SCHEMA.empty_table()
    rejected = pa.concat_tables([table.cast(REJECT_SCHEMA) for table in rejects])
    images_of = Counter(
        zip(
            manifest.column("split").to_pylist(),
            manifest.column("identity").to_pylist(),
            strict=True,
        )
    )
    identity_rows = [
        {"split": split, "class": index, "identity": name, "count": images_of[(split, name)]}
        for split in SPLITS
        for index, name in enumerate(plan.classes[split])
    ]
    identities = pa.Table.from_pylist(
        identity_rows,
        schema=pa.schema(
            [
                ("split", pa.string()),
                ("class", pa.int64()),
                ("identity", pa.string()),
                ("count", pa.int64()),
            ]
        ),
    )
    store.write_parquet("manifest.parquet", manifest)
    store.write_parquet("identities.parquet", identities)
    store.write_parquet("rejects.parquet", rejected)

    by_reason = dict(sorted(Counter(rejected.column("reason").to_pylist()).items()))
    splits = {
        split: {
            "num_classes": len(plan.classes[split]),
            "identities": len(plan.classes[split]),
            "images": sum(stats["samples"] for stats in shard_stats[split]),
            "shards": shard_stats[split],
        }
        for split in SPLITS
    }
    template = get_template("arcface" if config.align == "none" else config.align)
    meta = {
        "format": FORMAT,
        "facetrain_version": _version(),
        "num_classes": len(plan.classes["train"]),
        "image_size": list(template.size),
        "align": config.align,
        "splits": splits,
        "counts": {
            "accepted": manifest.num_rows,
            "rejected": rejected.num_rows,
            "rejected_by_reason": by_reason,
        },
        "files": {
            "manifest": "manifest.parquet",
            "identities": "identities.parquet",
            "rejects": "rejects.parquet",
        },
        "config": config.model_dump(mode="json"),
        "fingerprint": fingerprint,
    }
    store.write_bytes("dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
    store.delete_dir(".work")
    return PrepSummary(
        out=store.location,
        accepted=manifest.num_rows,
        rejected_by_reason=by_reason,
        num_classes=meta["num_classes"],
        splits={
            s: {"images": v["images"], "identities": v["identities"], "shards": len(v["shards"])}
            for s, v in splits.items()
        },
    )


def describe_plan(plan: Plan, config: PrepConfig, max_lines: int = 40) -> str:
    """The --dry-run report: counts per identity and the shard plan (long lists elided)."""
    lines = [f"dry run: {config.source} -> {config.out} (nothing written)"]
    counts = Counter(
        zip(
            plan.samples.column("split").to_pylist(),
            plan.samples.column("identity").to_pylist(),
            strict=True,
        )
    )
    for split in SPLITS:
        names = plan.classes[split]
        lines.append(
            f"{split}: {len(names)} identities, {sum(counts[(split, n)] for n in names)} images"
        )
        for index, name in enumerate(names[:max_lines]):
            lines.append(f"  class {index:>6}  {counts[(split, name)]:>6}  {name}")
        if len(names) > max_lines:
            lines.append(f"  ... {len(names) - max_lines} more identities")
    lines.append(f"shard plan: {len(plan.shards)} shards (target {config.shard_size} samples)")
    for spec in plan.shards[:max_lines]:
        lines.append(
            f"  {spec.name}.tar  {spec.stop - spec.start:>6} samples  {spec.identities:>5} identities"
        )
    if len(plan.shards) > max_lines:
        lines.append(f"  ... {len(plan.shards) - max_lines} more shards")
    reasons = Counter(plan.rejects.column("reason").to_pylist())
    lines.append(f"rejected before decoding: {plan.rejects.num_rows}")
    for reason, count in reasons.most_common():
        lines.append(f"  {count:>8}  {reason}")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facetrain")
    except PackageNotFoundError:
        return "unknown"
