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

Atomicity: every rank writes into `.tmp-step-…`; once all have finished, rank 0 writes
`meta.json`, fsyncs and renames the folder to `step-…` in one `os.replace`, then points
`latest` at it. A folder without a valid `meta.json` (or with a missing or short file) is
never loaded, so a run killed at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

META = "meta.json"
LATEST = "latest"


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
    for path in written:
        _fsync_file(path)
    barrier()
    if rank == 0:
        files = {
            str(path.relative_to(staging)): path.stat().st_size
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        _write_json_atomic(staging / META, {"step": step, "world_size": world_size, "files": files})
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


def load_replicated(checkpoint: Path) -> tuple[dict, dict]:
    """(backbone state_dict, replicated state) on CPU."""
    backbone = torch.load(checkpoint / "backbone.pt", map_location="cpu", weights_only=False)
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    return backbone, state


def load_shards(checkpoint: Path) -> list[dict]:
    """Every saved class shard, memory-mapped: only the rows a rank copies are read."""
    return [
        torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        for path in sorted((checkpoint / "shards").glob("classes-*.pt"))
    ]


def load_rank_local(checkpoint: Path, rank: int) -> dict | None:
    path = checkpoint / "ranks" / f"rank-{rank:05d}.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def load_backbone(path: str | Path) -> nn.Module:
    """The trained backbone of a checkpoint (a `checkpoint.dir` or one step folder), on CPU
    in eval mode, rebuilt from the config saved with it."""
    from facetrain.pipeline.config import ModelConfig
    from facetrain.pipeline.models import build_backbone

    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(
            f"checkpoint {path}: no complete checkpoint (expected step-*/meta.json)"
        )
    # Only the model section: a checkpoint stays loadable when other config sections change.
    model_cfg = ModelConfig.model_validate(load_config_dict(checkpoint)["model"])
    model = build_backbone(model_cfg.backbone, model_cfg.embedding_size, dropout=model_cfg.dropout)
    state = torch.load(checkpoint / "backbone.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state)
    return model.eval()
