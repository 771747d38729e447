"""One prep job: list -> process (Ray tasks) -> plan -> write shards (Ray tasks) -> manifests.

Process tasks read, hash and align every face once and keep the result in chunk files; the
planner streams their narrow columns from a local scratch copy; shard tasks copy faces into
tars. Nothing here holds a table of all images: driver memory follows identities, not images.

Resumable: chunk files and finished shards are kept under OUT/.work until the job ends, and
the plan is a pure function of them, so a rerun after a crash redoes only unfinished work.
dataset.json is written last; a rerun that finds it (with the same config) does nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from facetrain.data_prep.align import get_template
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.errors import PrepInputError
from facetrain.data_prep.executor import TaskRunner
from facetrain.data_prep.landmarks import REASON_BAD_ROW
from facetrain.data_prep.plan import REJECT_SCHEMA, SPLITS, ChunkFiles, Plan, make_plan
from facetrain.data_prep.process import chunk_folder, chunk_name, process_chunk, read_plan_input
from facetrain.data_prep.shard_format import (
    DATASET_FILE,
    FORMAT,
    DatasetManifest,
    parse_dataset_json,
)
from facetrain.data_prep.shards import MANIFEST_SCHEMA, is_done, read_part, write_shard
from facetrain.data_prep.sources import Chunk, iter_chunks, open_source
from facetrain.data_prep.storage import OutputStore, is_url
from tqdm import tqdm


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
    phase_seconds: dict[str, float] = field(default_factory=dict)  # process, plan, shards, ...
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
        if self.phase_seconds:
            lines.append(
                "  time: " + ", ".join(f"{name} {s:.1f}s" for name, s in self.phase_seconds.items())
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
    if store.exists(DATASET_FILE):
        return _finished_summary(store, fingerprint)
    source = open_source(config)
    if not config.dry_run:
        _claim_work_dir(store, fingerprint, chunk_folder(config))
    started = time.perf_counter()
    phases = _PhaseClock()
    with (
        TaskRunner(config) as runner,
        tempfile.TemporaryDirectory(prefix="facetrain-prep-") as scratch,
    ):
        with phases("process"):
            chunks = _process(runner, source, config, store, Path(scratch) / "chunks")
        with phases("plan"):
            plan = make_plan(chunks, config, Path(scratch) / "plan", _bad_landmark_rows(source))
        if config.dry_run:
            return PrepSummary(config.out, dry_run=True, plan_text=describe_plan(plan, config))
        pending = [spec for spec in plan.shards if not is_done(store, spec.name)]
        with phases("shards"):
            _write_shards(runner, plan, pending, config)
        with phases("manifests"):
            summary = _assemble(store, plan, config, fingerprint)
    summary.shards_written, summary.shards_skipped = len(pending), len(plan.shards) - len(pending)
    summary.seconds = time.perf_counter() - started
    summary.phase_seconds = phases.seconds
    return summary


class _PhaseClock:
    """`with clock("name"):` adds the block's wall time to `clock.seconds["name"]`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


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
    meta = parse_dataset_json(store.read_bytes(DATASET_FILE), f"{store.location}/{DATASET_FILE}")
    if meta.fingerprint != fingerprint or meta.counts is None:
        raise PrepInputError(
            f"{store.location}: holds a finished prep made with a different config; "
            "choose another --out or delete it"
        )
    return PrepSummary(
        out=store.location,
        accepted=meta.counts.accepted,
        rejected_by_reason=meta.counts.rejected_by_reason,
        num_classes=meta.num_classes,
        splits={
            s: {"images": v.images, "identities": v.identities, "shards": len(v.shards)}
            for s, v in meta.splits.items()
        },
        already_complete=True,
    )


def _claim_work_dir(store: OutputStore, fingerprint: str, chunks: str) -> None:
    """Create OUT/.work, or resume one made by the same config and facetrain version; drop
    temp files of dead runs."""
    marker, version = ".work/fingerprint", f"facetrain {_version()}"
    if store.exists(marker):
        found = store.read_bytes(marker).decode().splitlines() or [""]
        if found[0].strip() != fingerprint:
            raise PrepInputError(
                f"{store.location}: holds an unfinished prep made with a different config; "
                "rerun with the same config to resume, or choose another --out"
            )
        made_by = found[1] if len(found) > 1 else "an older facetrain"
        if made_by != version:
            # Another version may cut the same identities into other shards or lay chunk files
            # out otherwise, so its finished pieces are not this run's to keep. They are only
            # recomputable work (there is no dataset.json yet): start afresh.
            print(
                f"facetrain prep: warning: {store.location}: the unfinished prep there was made "
                f"by {made_by}; starting afresh with {version}",
                file=sys.stderr,
            )
            store.delete_dir(".work")
            store.delete_dir("shards")
    for folder in ("shards", chunks, ".work/done"):
        store.make_dirs(folder)
    store.write_bytes(marker, f"{fingerprint}\n{version}\n".encode())
    for folder in ("", "shards", ".work", chunks, ".work/done"):
        store.remove_temporaries(folder)


def _process_task(index: int, chunk: Chunk, config: PrepConfig) -> tuple[int, pa.Table]:
    return index, process_chunk(index, chunk, config)


def _process(
    runner: TaskRunner, source, config: PrepConfig, store: OutputStore, scratch: Path
) -> ChunkFiles:
    chunks = ChunkFiles(scratch)
    bar = tqdm(desc="process", unit="img", disable=not config.progress, dynamic_ncols=True)

    def to_process():
        for index, chunk in enumerate(iter_chunks(source, config)):
            if not config.dry_run and store.exists(chunk_name(config, index)):
                table = read_plan_input(store, config, index)  # done by an earlier, interrupted run
                chunks.add(index, table)
                bar.update(table.num_rows)
            else:
                yield index, chunk, config

    for index, table in runner.map(_process_task, to_process()):
        chunks.add(index, table)
        bar.update(table.num_rows)
    bar.close()
    if not len(chunks):
        raise PrepInputError(f"source {config.source}: lists no images")
    return chunks


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
        [{"source": where, "identity": "", "reason": REASON_BAD_ROW} for where, _ in bad_rows],
        schema=REJECT_SCHEMA,
    )


def _write_shards(runner: TaskRunner, plan: Plan, pending, config: PrepConfig) -> None:
    bar = tqdm(
        total=sum(spec.samples for spec in pending), desc="shards", unit="img",
        disable=not config.progress, dynamic_ncols=True,
    )  # fmt: skip
    samples = {f"{spec.name}.tar": spec.samples for spec in pending}
    work = ((spec.name, plan.shard_rows(spec), config) for spec in pending)
    for stats in runner.map(write_shard, work):
        bar.update(samples[stats["name"]])
    bar.close()


def _assemble(store: OutputStore, plan: Plan, config: PrepConfig, fingerprint: str) -> PrepSummary:
    """manifest/identities/rejects Parquet files and dataset.json, streamed part by part."""
    shard_stats: dict[str, list[dict]] = {split: [] for split in SPLITS}
    with (
        store.atomic_output("manifest.parquet") as stream,
        pq.ParquetWriter(stream, MANIFEST_SCHEMA) as writer,
    ):
        for spec in plan.shards:
            manifest, stats = read_part(store, spec.name)
            writer.write_table(manifest)
            shard_stats[spec.split].append(
                {key: stats[key] for key in ("name", "samples", "identities", "bytes", "sha256")}
            )
    store.write_parquet("identities.parquet", plan.identities_table())
    with store.atomic_output("rejects.parquet") as stream, open(plan.rejects_file, "rb") as local:
        shutil.copyfileobj(local, stream)

    splits = {
        split: {
            "num_classes": len(plan.class_codes[split]),
            "identities": len(plan.class_codes[split]),
            "images": sum(stats["samples"] for stats in shard_stats[split]),
            "shards": shard_stats[split],
        }
        for split in SPLITS
    }
    template = get_template("arcface" if config.align == "none" else config.align)
    rejected = sum(plan.rejected_by_reason.values())
    # Validated on the way out: what prep writes is what the pipeline's reader accepts.
    meta = {
        "format": FORMAT,
        "facetrain_version": _version(),
        "num_classes": len(plan.class_codes["train"]),
        "image_size": list(template.size),
        "align": config.align,
        "splits": splits,
        "counts": {
            "accepted": plan.accepted,
            "rejected": rejected,
            "rejected_by_reason": plan.rejected_by_reason,
        },
        "files": {
            "manifest": "manifest.parquet",
            "identities": "identities.parquet",
            "rejects": "rejects.parquet",
        },
        "config": config.model_dump(mode="json"),
        "fingerprint": fingerprint,
    }
    manifest = DatasetManifest.model_validate(meta)
    store.write_bytes(DATASET_FILE, (manifest.to_json(indent=2) + "\n").encode())
    store.delete_dir(".work")
    return PrepSummary(
        out=store.location,
        accepted=plan.accepted,
        rejected_by_reason=plan.rejected_by_reason,
        num_classes=meta["num_classes"],
        splits={
            s: {"images": v["images"], "identities": v["identities"], "shards": len(v["shards"])}
            for s, v in splits.items()
        },
    )


def describe_plan(plan: Plan, config: PrepConfig, max_lines: int = 40) -> str:
    """The --dry-run report: counts per identity and the shard plan (long lists elided)."""
    lines = [f"dry run: {config.source} -> {config.out} (nothing written)"]
    for split in SPLITS:
        classes = len(plan.class_codes[split])
        lines.append(
            f"{split}: {classes} identities, "
            f"{sum(spec.samples for spec in plan.shards if spec.split == split)} images"
        )
        for index, (name, count) in enumerate(plan.class_counts(split, limit=max_lines)):
            lines.append(f"  class {index:>6}  {count:>6}  {name}")
        if classes > max_lines:
            lines.append(f"  ... {classes - max_lines} more identities")
    lines.append(f"shard plan: {len(plan.shards)} shards (target {config.shard_size} samples)")
    for spec in plan.shards[:max_lines]:
        lines.append(
            f"  {spec.name}.tar  {spec.samples:>6} samples  {spec.stop - spec.first:>5} identities"
        )
    if len(plan.shards) > max_lines:
        lines.append(f"  ... {len(plan.shards) - max_lines} more shards")
    lines.append(f"rejected before decoding: {sum(plan.rejected_by_reason.values())}")
    for reason, count in sorted(plan.rejected_by_reason.items(), key=lambda item: -item[1]):
        lines.append(f"  {count:>8}  {reason}")
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facetrain")
    except PackageNotFoundError:
        return "unknown"
