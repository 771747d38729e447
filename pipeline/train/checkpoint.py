"""Atomic, world-size-independent checkpoints.

Layout of `<checkpoint.dir>/step-00001000/`:

    meta.json             step, world size, every file with its size; written last
    config.yaml           the resolved TrainConfig (enough to rebuild the backbone)
    backbone.pt           backbone state_dict (parameters + BatchNorm statistics)
    state.pt              everything replicated: backbone optimizer state keyed by parameter
                          name (full tensors, any ZeRO stage), loss-module scalars (A-Softmax
                          iteration), trainer counters, tracking state
    shards/classes-<first>-<end>.pt   one per writing rank: classifier/centre rows and their
                          optimizer state for classes first..end-1, self-describing, so a run
                          on any number of ranks picks out the rows it owns
    ranks/rank-00000.pt   RNG states; restored only when the world size matches

`RankState` is the only code that knows this layout: `RankState.capture(trainer)` collects
one rank's part and `save` writes it; `resume` finds the newest checkpoint and
`RankState.apply` puts it back into a trainer built for any world size. In the class files
a tensor is named `<term>.<tensor>` (e.g. `asoftmax.weight`) and its optimizer state
`<term>.<tensor>@<state key>` (e.g. `asoftmax.weight@momentum_buffer`).

Safety: every file holds only tensors and plain data (numbers, strings, lists, dicts; RNG
states as tensors and lists), the config is text, and every load is
`torch.load(weights_only=True)`. A file that needs more than that (an older facetrain
checkpoint, or one planted to run code when unpickled) is refused with an
`UnsafeCheckpointError` naming it; `facetrain checkpoint convert OLD NEW` rewrites an old
checkpoint from a trusted source (`convert_checkpoint`).

Atomicity: every rank writes into `.tmp-step-…`; once all have finished, rank 0 writes
`meta.json`, fsyncs and renames the folder to `step-…` in one `os.replace`, then points
`latest` at it. A folder without a valid `meta.json` (or with a missing or short file) is
never loaded, so a run killed at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import yaml
from facetrain.losses import reshard
from facetrain.pipeline.train.engine import (
    OPTIMIZER_STATE_KEYS,
    backbone_optimizer_state,
    load_backbone_optimizer_state,
    load_backbone_weights,
    materialise_optimizer_state,
)
from torch import nn

if TYPE_CHECKING:
    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.train.trainer import Trainer

log = logging.getLogger("facetrain.train")

META = "meta.json"
LATEST = "latest"
# meta.json "format": 2 = plain data loadable with weights_only=True (1, unmarked: pickles).
FORMAT = 2
CONVERT_HINT = (
    "if you trust where it came from, convert it with "
    "`facetrain checkpoint convert OLD NEW` (it unpickles OLD once, so only for a trusted source)"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that does not load as plain data (old format, or tampered)."""


def safe_load(path: Path, mmap: bool = False) -> dict:
    """`torch.load(weights_only=True)`: tensors and plain data only, no code is ever run."""
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise UnsafeCheckpointError(
            f"checkpoint file {path}: not plain tensors and data, so it is not loaded "
            f"(an old-format or tampered checkpoint: {reason}); {CONVERT_HINT}"
        ) from err


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_json_atomic(path: Path, payload: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: str | Path,
    step: int,
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    config: dict,
    backbone_state: dict | None,
    replicated: dict | None,
    shard: dict | None,
    rank_local: dict,
    keep: int = 2,
    dataset: dict | None = None,
) -> Path:
    """Write one checkpoint; a collective call (every rank, same step). Rank 0 passes the
    backbone and replicated state, every rank its class shard (None if no sharded terms)."""
    root = Path(root)
    final = root / step_dir_name(step)
    staging = root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "ranks").mkdir(parents=True)
        (staging / "shards").mkdir()
    barrier()
    written = [staging / "ranks" / f"rank-{rank:05d}.pt"]
    torch.save(rank_local, written[0])
    if shard is not None:
        first = shard["class_start"]
        end = first + shard["num_local_classes"]
        written.append(staging / "shards" / f"classes-{first:09d}-{end:09d}.pt")
        torch.save(shard, written[-1])
    if rank == 0:
        torch.save(backbone_state, staging / "backbone.pt")
        torch.save(replicated, staging / "state.pt")
        (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        written += [staging / "backbone.pt", staging / "state.pt", staging / "config.yaml"]
        if dataset is not None:
            written.append(_write_dataset_fingerprint(staging, dataset))
    for path in written:
        _fsync_file(path)
    barrier()
    if rank == 0:
        files = {
            str(path.relative_to(staging)): path.stat().st_size
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        _write_json_atomic(
            staging / META,
            {"step": step, "world_size": world_size, "format": FORMAT, "files": files},
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _write_json_atomic(root / LATEST, {"checkpoint": final.name})
        _prune(root, keep)
    barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    complete = sorted(path for path in root.glob("step-*") if is_complete(path))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def read_meta(checkpoint: Path) -> dict | None:
    try:
        return json.loads((checkpoint / META).read_text())
    except (OSError, ValueError):
        return None


def is_complete(checkpoint: Path) -> bool:
    """True when meta.json exists and every file it lists is there with its full size."""
    meta = read_meta(checkpoint)
    if meta is None:
        return False
    for name, size in meta.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint to load from `path`: a step folder itself, or the newest complete one
    under a checkpoint.dir (None when there is none yet)."""
    path = Path(path)
    if (path / META).exists():
        if not is_complete(path):
            raise ValueError(f"checkpoint {path}: incomplete (files missing or truncated)")
        return path
    if not path.is_dir():
        return None
    try:
        latest = path / json.loads((path / LATEST).read_text())["checkpoint"]
        if is_complete(latest):
            return latest
    except (OSError, ValueError, KeyError):
        pass
    for candidate in sorted(path.glob("step-*"), reverse=True):
        if is_complete(candidate):
            return candidate
    return None


def load_config_dict(checkpoint: Path) -> dict:
    return yaml.safe_load((checkpoint / "config.yaml").read_text())


def check_format(checkpoint: Path) -> None:
    """Refuse a checkpoint written before the plain-data format, before opening its files."""
    meta = read_meta(checkpoint) or {}
    if meta.get("format", 1) < FORMAT:
        raise UnsafeCheckpointError(
            f"checkpoint {checkpoint}: written in the old pickle format "
            f"(meta.json has no \"format\": {FORMAT}), which could run code when loaded; "
            f"{CONVERT_HINT}"
        )


def load_replicated(checkpoint: Path) -> tuple[dict, dict]:
    """(backbone state_dict, replicated state) on CPU."""
    return safe_load(checkpoint / "backbone.pt"), safe_load(checkpoint / "state.pt")


def load_shards(checkpoint: Path) -> list[dict]:
    """Every saved class shard, memory-mapped: only the rows a rank copies are read."""
    return [
        safe_load(path, mmap=True)
        for path in sorted((checkpoint / "shards").glob("classes-*.pt"))
    ]


def load_rank_local(checkpoint: Path, rank: int) -> dict | None:
    path = checkpoint / "ranks" / f"rank-{rank:05d}.pt"
    return safe_load(path) if path.exists() else None


def load_backbone(path: str | Path) -> nn.Module:
    """The trained backbone of a checkpoint (a `checkpoint.dir` or one step folder), on CPU
    in eval mode, rebuilt from the config saved with it."""
    from facetrain.pipeline.config import ModelConfig
    from facetrain.pipeline.models import backbone_from_config

    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(
            f"checkpoint {path}: no complete checkpoint (expected step-*/meta.json)"
        )
    # Only the model section: a checkpoint stays loadable when other config sections change.
    check_format(checkpoint)
    model_cfg = ModelConfig.model_validate(load_config_dict(checkpoint)["model"])
    model = backbone_from_config(model_cfg)
    state = safe_load(checkpoint / "backbone.pt")
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------- one rank's state
@dataclass
class RankState:
    """What one rank contributes to a checkpoint, in the file layout above.

    backbone    backbone state_dict (rank 0 writes it)
    replicated  the same on every rank: counters, backbone optimizer state by parameter
                name, loss scalars (A-Softmax iteration), hooks' extra state
    shard       this rank's class rows and their optimizer state (None without such terms)
    rank_local  RNG states, restored only on the same world size
    """

    backbone: dict
    replicated: dict
    shard: dict | None
    rank_local: dict

    @classmethod
    def capture(cls, trainer: Trainer) -> RankState:
        """A collective call under ZeRO 1/2 (the owner ranks assemble each optimizer tensor)."""
        cfg = trainer.cfg
        objective = trainer.objective
        named = dict(trainer.backbone.named_parameters())
        optimizer_state = backbone_optimizer_state(trainer.engine, named, cfg.train.optimizer)
        terms = objective.sharded_terms()
        sharded = {
            f"terms.{term}.{t}" for term, loss in terms.items() for t in loss.class_tensor_names
        }
        objective_state = {
            k: v.cpu() for k, v in objective.state_dict().items() if k not in sharded
        }
        shard = None
        if terms:
            first = next(iter(terms.values()))
            tensors = {}
            for term, loss in terms.items():
                for name, rows in loss.shard_state()["tensors"].items():
                    tensors[f"{term}.{name}"] = rows
            head_step = None
            if trainer.head_optimizer is not None:
                for prefix, param in _head_params_by_prefix(trainer):
                    state = trainer.head_optimizer.state.get(param, {})
                    for key in OPTIMIZER_STATE_KEYS[cfg.train.optimizer]:
                        if key in state:
                            tensors[f"{prefix}@{key}"] = state[key].detach().cpu().clone()
                    if "step" in state:
                        head_step = float(state["step"])
            shard = {
                "num_classes": first.num_classes,
                "class_start": first.class_start,
                "num_local_classes": first.num_local_classes,
                "tensors": tensors,
                "head_optimizer_step": head_step,
            }
        rank_local = {
            "torch": torch.get_rng_state(),
            "numpy": numpy_rng_to_plain(np.random.get_state()),
            "python": python_rng_to_plain(random.getstate()),
            "sampling": {
                term: state
                for term, loss in terms.items()
                if (state := loss.rng_state()) is not None
            },
        }
        if torch.cuda.is_available() and trainer.device.type == "cuda":
            rank_local["cuda"] = torch.cuda.get_rng_state(trainer.device)
        replicated = {
            "step": trainer.step,
            "skipped_steps": trainer.skipped_steps,
            "nonfinite_in_row": trainer.nonfinite_in_row,
            "backbone_optimizer": optimizer_state,
            "objective": objective_state,
            "extra": dict(trainer.extra_state),
        }
        if trainer.loss_scale is not None:
            replicated["loss_scale"] = trainer.loss_scale.state_dict()
        backbone = {
            k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
            for k, v in trainer.backbone.state_dict().items()
        }
        return cls(backbone, replicated, shard, rank_local)

    @staticmethod
    def apply(
        trainer: Trainer,
        backbone: dict,
        replicated: dict,
        shards: list[dict],
        rank_local: dict | None,
    ) -> None:
        """Restore a trainer from a checkpoint written by any world size (RNG only if the
        world size matches: `rank_local` is None otherwise)."""
        cfg = trainer.cfg
        if cfg.train.zero_stage > 0:
            materialise_optimizer_state(trainer.engine, (2, 3, 112, 112), torch.float32)
        load_backbone_weights(trainer.engine, backbone)
        named = dict(trainer.backbone.named_parameters())
        load_backbone_optimizer_state(trainer.engine, named, replicated["backbone_optimizer"])
        trainer.objective.load_state_dict(replicated["objective"], strict=False)
        trainer.step = int(replicated["step"])
        trainer.skipped_steps = int(replicated["skipped_steps"])
        trainer.nonfinite_in_row = int(replicated["nonfinite_in_row"])
        trainer.extra_state = dict(replicated.get("extra", {}))
        if trainer.loss_scale is not None and "loss_scale" in replicated:
            trainer.loss_scale.load_state_dict(replicated["loss_scale"])

        terms = trainer.objective.sharded_terms()
        if terms:
            first = next(iter(terms.values()))
            rows = reshard(shards, first.class_start, first.num_local_classes)
            for term, loss in terms.items():
                loss.load_class_rows(
                    {
                        name: rows[f"{term}.{name}"].to(trainer.device)
                        for name in loss.class_tensor_names
                        if f"{term}.{name}" in rows
                    }
                )
            if trainer.head_optimizer is not None:
                step = shards[0].get("head_optimizer_step") if shards else None
                for prefix, param in _head_params_by_prefix(trainer):
                    for key in OPTIMIZER_STATE_KEYS[cfg.train.optimizer]:
                        if f"{prefix}@{key}" in rows:
                            trainer.head_optimizer.state[param][key] = rows[f"{prefix}@{key}"].to(
                                param.device, param.dtype
                            )
                    if step is not None:
                        trainer.head_optimizer.state[param]["step"] = torch.tensor(step)
        if rank_local is not None:
            torch.set_rng_state(rank_local["torch"])
            np.random.set_state(numpy_rng_from_plain(rank_local["numpy"]))
            random.setstate(python_rng_from_plain(rank_local["python"]))
            for term, state in rank_local.get("sampling", {}).items():
                if term in terms:
                    terms[term].load_rng_state(state)
            if "cuda" in rank_local and trainer.device.type == "cuda":
                torch.cuda.set_rng_state(rank_local["cuda"], trainer.device)


def numpy_rng_to_plain(state: tuple) -> dict:
    """np.random.get_state() without its ndarray (not loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached_gaussian = state
    return {
        "bit_generator": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def numpy_rng_from_plain(state: dict) -> tuple:
    return (
        state["bit_generator"],
        state["keys"].numpy().astype(np.uint32),
        state["pos"],
        state["has_gauss"],
        state["cached_gaussian"],
    )


def python_rng_to_plain(state: tuple) -> list:
    version, internal, gauss_next = state
    return [int(version), [int(word) for word in internal], gauss_next]


def python_rng_from_plain(state: list) -> tuple:
    version, internal, gauss_next = state
    return (version, tuple(internal), gauss_next)


def _head_params_by_prefix(trainer: Trainer) -> list[tuple[str, nn.Parameter]]:
    """(file name prefix, parameter) of each trainable class tensor, e.g. "asoftmax.weight"."""
    names = {id(p): n for n, p in trainer.objective.named_parameters() if p.requires_grad}
    return [(names[id(p)].removeprefix("terms."), p) for p in trainer.head_params]


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save(trainer: Trainer, cfg: TrainConfig, dataset: dict | None = None) -> Path:
    """Write a checkpoint of `trainer` at its current step into cfg.checkpoint.dir; a
    collective call (every rank, same step)."""
    state = RankState.capture(trainer)
    return save_checkpoint(
        cfg.checkpoint.dir,
        trainer.step,
        trainer.rank,
        trainer.world_size,
        _barrier,
        config=cfg.model_dump(mode="json"),
        backbone_state=state.backbone if trainer.rank == 0 else None,
        replicated=state.replicated if trainer.rank == 0 else None,
        shard=state.shard,
        rank_local=state.rank_local,
        keep=cfg.checkpoint.keep,
        dataset=dataset,
    )


def resume(trainer: Trainer, cfg: TrainConfig, dataset: dict | None = None) -> Path | None:
    """Load the newest checkpoint of cfg.checkpoint.dir that loads completely into
    `trainer`, if any (written by any world size); returns it, or None when there is none
    yet. `dataset`: this run's data fingerprint; another one is a DatasetMismatchError."""
    chosen = choose_checkpoint(cfg.checkpoint.dir, trainer.rank, trainer.world_size, trainer)
    if chosen is None:
        return None
    found, (meta, backbone, replicated, shards, rank_local) = chosen
    check_dataset(found, dataset, cfg.data.shards)
    same_world = meta["world_size"] == trainer.world_size
    RankState.apply(trainer, backbone, replicated, shards, rank_local if same_world else None)
    if trainer.rank == 0:
        note = (
            ""
            if same_world
            else f" (written by {meta['world_size']} ranks, resharded to {trainer.world_size})"
        )
        log.warning("resuming from %s at step %d%s", found, trainer.step, note)
    return found


# ---------------------------------------------------------------------- old format -> safe
def _plain(value: object) -> object:
    """numpy values (which weights_only=True refuses) as tensors and python numbers."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def convert_checkpoint(old: str | Path, new: str | Path) -> Path:
    """Rewrite an old-format checkpoint (`old`: a checkpoint.dir or one step folder) as a
    plain-data one under the checkpoint.dir `new`; returns the new step folder.

    This unpickles `old`, i.e. runs whatever code its files carry: call it only for files
    from a source the user trusts. Every rewritten file is read back with weights_only=True,
    so a result that is not plain data is never written as if it were.
    """
    source = find_checkpoint(old)
    if source is None:
        raise FileNotFoundError(f"checkpoint {old}: no complete checkpoint (expected step-*/meta.json)")
    meta = read_meta(source)
    root = Path(new)
    final = root / source.name
    if final.exists():
        raise FileExistsError(f"checkpoint {final}: already exists; pass an empty NEW folder")
    staging = root / f".tmp-{source.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name == META:
            continue
        target = staging / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix != ".pt":
            shutil.copyfile(path, target)
            continue
        payload = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user
        if path.parent.name == "ranks" and isinstance(payload, dict):
            if isinstance(payload.get("numpy"), tuple):
                payload["numpy"] = numpy_rng_to_plain(payload["numpy"])
            if isinstance(payload.get("python"), tuple):
                payload["python"] = python_rng_to_plain(payload["python"])
        torch.save(_plain(payload), target)
        safe_load(target)
    files = {
        str(path.relative_to(staging)): path.stat().st_size
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    _write_json_atomic(
        staging / META,
        {"step": meta["step"], "world_size": meta["world_size"], "format": FORMAT, "files": files},
    )
    os.replace(staging, final)
    _write_json_atomic(root / LATEST, {"checkpoint": final.name})
    return final


# ------------------------------------------------------- the data a checkpoint belongs to
DATASET_FINGERPRINT = "dataset.json"


class DatasetMismatchError(ValueError):
    """A checkpoint written for other data than the run's data.shards."""


def _write_dataset_fingerprint(staging: Path, dataset: dict) -> Path:
    path = staging / DATASET_FINGERPRINT
    path.write_text(json.dumps(dataset, indent=1))
    return path


def read_dataset_fingerprint(checkpoint: Path) -> dict | None:
    """The fingerprint a checkpoint was written with (None for checkpoints from before)."""
    try:
        return json.loads((checkpoint / DATASET_FINGERPRINT).read_text())
    except FileNotFoundError:
        return None


def check_dataset(checkpoint: Path, dataset: dict | None, shards: str) -> None:
    """Raise DatasetMismatchError when `checkpoint` was written for other data."""
    saved = read_dataset_fingerprint(checkpoint)
    if dataset is None or saved is None:
        return
    keys = ("dataset_sha256", "num_classes", "classes_sha256")
    differs = [key for key in keys if saved.get(key) != dataset.get(key)]
    if not differs:
        return
    details = ", ".join(f"{key} {saved.get(key)} -> {dataset.get(key)}" for key in differs)
    raise DatasetMismatchError(
        f"checkpoint {checkpoint} belongs to data.shards {saved.get('shards')!r}, not to "
        f"{shards!r} ({details}); resuming would mix two datasets. Start a new run in another "
        f"checkpoint.dir (--set checkpoint.dir=NEW) with --set train.init_from={checkpoint} "
        "to start from its weights, or point data.shards back at the original data"
    )


# ------------------------------------------------------------- which checkpoint to resume
def _candidates(root: Path) -> list[Path]:
    """Every step folder of a checkpoint.dir, newest first (or the one step folder given)."""
    if (root / META).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(root.glob("step-*"), reverse=True)


class _Unloadable(Exception):
    """Why a checkpoint cannot be resumed from (one line)."""


def _load_completely(checkpoint: Path, rank: int) -> tuple:
    """Everything a rank needs from `checkpoint`; _Unloadable names what failed."""
    meta = read_meta(checkpoint)
    if meta is None:
        raise _Unloadable(f"no readable {META}")
    if not is_complete(checkpoint):
        raise _Unloadable("files missing or truncated")
    # Through the loaders above, so a change of their serialisation applies here too.
    step = "backbone.pt or state.pt"
    try:
        backbone, replicated = load_replicated(checkpoint)
        step = "shards/"
        shards = load_shards(checkpoint)
        step = f"ranks/rank-{rank:05d}.pt"
        rank_local = load_rank_local(checkpoint, rank)
    except Exception as err:  # torch.load raises unpickling, zip and runtime errors alike
        detail = str(err).splitlines()[0] if str(err) else ""
        raise _Unloadable(f"{step} does not load: {type(err).__name__}: {detail}") from None
    return meta, backbone, replicated, shards, rank_local


def choose_checkpoint(
    root: str | Path, rank: int = 0, world_size: int = 1, trainer: Trainer | None = None
) -> tuple[Path, tuple] | None:
    """The newest checkpoint under `root` that loads completely on every rank, with what was
    loaded (a collective call on a group: ranks agree on each candidate). Each one skipped is
    logged in one line with its reason; when none loads it is an error naming them all."""
    from facetrain.pipeline.train.collectives import all_ranks_true

    skipped: list[str] = []
    unsafe = False  # any refused as not plain data: the error says how to convert
    candidates = _candidates(Path(root))
    for candidate in candidates:
        try:
            loaded = _load_completely(candidate, rank)
            reason = ""
        except _Unloadable as err:
            loaded = None
            reason = str(err)
            unsafe = unsafe or isinstance(err.__context__, UnsafeCheckpointError) or (
                "UnsafeCheckpointError" in reason
            )
        everywhere = (
            all_ranks_true(loaded is not None, trainer.device, trainer.group)
            if trainer is not None
            else loaded is not None
        )
        if everywhere:
            if skipped and rank == 0:
                log.warning("resuming from %s; skipped %s", candidate.name, "; ".join(skipped))
            return candidate, loaded
        skipped.append(f"{candidate} ({reason or 'fails to load on another rank'})")
    if skipped:
        # Never a silent fresh start: an unsafe (old-format or tampered) set is refused.
        error = UnsafeCheckpointError if unsafe else ValueError
        raise error(
            f"checkpoint.dir {root}: no checkpoint loads completely: " + "; ".join(skipped)
        )
    return None


# ------------------------------------------------- a new run from another run's weights
def init_from(trainer: Trainer, path: str | Path, class_names: list[str] | None) -> dict:
    """Start `trainer` (a new run, step 0) from the weights of the checkpoint at `path`
    (a collective call on a group). The backbone is always taken; classifier and centre rows
    are carried over by identity name where both datasets hold the identity, and keep their
    fresh initialisation elsewhere; optimizer state, counters and RNG stay fresh.
    Returns {"checkpoint", "parent_run" (its MLflow run id or None), "carried", "classes"}."""
    chosen = choose_checkpoint(path, trainer.rank, trainer.world_size, trainer)
    if chosen is None:
        raise FileNotFoundError(f"train.init_from {path}: no checkpoint there (expected step-*/)")
    found, (_, backbone, replicated, shards, _) = chosen
    load_backbone_weights(trainer.engine, backbone)
    carried = 0
    terms = trainer.objective.sharded_terms()
    if terms and shards:
        old_names = (read_dataset_fingerprint(found) or {}).get("class_names")
        if old_names is None or class_names is None:
            raise ValueError(
                f"train.init_from {found}: classes cannot be matched by identity name ("
                + (
                    "the checkpoint records none"
                    if old_names is None
                    else "data.shards has no identities.parquet"
                )
                + "); the classifier rows would belong to other people"
            )
        carried = _carry_rows_by_name(terms, shards, old_names, class_names, trainer.device)
    if trainer.rank == 0:
        log.warning(
            "starting a new run from %s: backbone, and class rows of %d identities held by both datasets",
            found,
            carried,
        )
    return {
        "checkpoint": str(found),
        "parent_run": replicated.get("extra", {}).get("mlflow_run_id"),
        "carried": carried,
    }


def _carry_rows_by_name(
    terms: dict, shards: list[dict], old_names: list[str], new_names: list[str], device
) -> int:
    """Copy old class rows into this rank's rows where the identity name matches; the count
    of identities carried (this rank's classes only)."""
    old_index = {name: position for position, name in enumerate(old_names)}
    first = next(iter(terms.values()))
    start, count = first.class_start, first.num_local_classes
    pairs = [
        (local, old_index[name])
        for local, name in enumerate(new_names[start : start + count])
        if name in old_index
    ]
    if not pairs:
        return 0
    local_rows = torch.tensor([p[0] for p in pairs])
    old_rows_index = torch.tensor([p[1] for p in pairs])
    # The old rows of every class at once (memory of the old classifier, once).
    old_rows = reshard(shards, 0, len(old_names))
    for term, loss in terms.items():
        current = loss.shard_state()["tensors"]
        for name, rows in current.items():
            key = f"{term}.{name}"
            if key not in old_rows:
                continue  # the old run had no such term: fresh rows
            if old_rows[key].shape[1:] != rows.shape[1:]:
                raise ValueError(
                    f"train.init_from: {key} rows are {tuple(old_rows[key].shape[1:])} there, "
                    f"{tuple(rows.shape[1:])} here (another model.embedding_size?)"
                )
            rows[local_rows] = old_rows[key][old_rows_index].to(rows.dtype)
        loss.load_class_rows({name: rows.to(device) for name, rows in current.items()})
    return len(pairs)
