"""The training loop of one rank.

`run_rank` is the whole loop: read the shard index, build the trainer, resume from
`checkpoint.dir` if a checkpoint is there, stream batches, step, and let the hooks do the
rest (checkpoints, progress, MLflow). It runs on an already-initialised process group
(`facetrain train`'s local ranks, torchrun, Ray Train's TorchTrainer) or in a single process
without one, and returns the run summary on rank 0, None elsewhere.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.data.loader import build_loader
from facetrain.pipeline.data.shards import (
    DatasetIndex,
    read_class_names,
    read_dataset_index,
)
from facetrain.pipeline.data.transforms import normalize_batch
from facetrain.pipeline.train import checkpoint, signals
from facetrain.pipeline.train.bad_samples import METRIC, BadSamples
from facetrain.pipeline.train.collectives import world_group
from facetrain.pipeline.train.hooks import CheckpointHook, Hook, ProgressHook
from facetrain.pipeline.train.offline_triplets import OfflineTriplets
from facetrain.pipeline.train.rendezvous import gather_rank_hosts
from facetrain.pipeline.train.trainer import Trainer
from facetrain.pipeline.train.validation import ValidationHook


def run_rank(
    cfg: TrainConfig, extra_hooks: Sequence[Hook] = (), progress: bool = True
) -> dict | None:
    """Train on an already-initialised process group (or a single process without one)."""
    from facetrain.pipeline.train.tracking import MlflowHook

    index = read_dataset_index(cfg.data.shards, cfg.data.split)
    group = world_group()
    rank_hosts = gather_rank_hosts(group)
    trainer = Trainer(cfg, index.num_classes, group)
    class_names = read_class_names(cfg.data.shards, cfg.data.split)
    checkpoints = CheckpointHook(cfg, data_fingerprint(cfg, index, class_names))
    if not checkpoints.restore(trainer) and cfg.train.init_from:
        parent = checkpoint.init_from(trainer, cfg.train.init_from, class_names)
        if parent["parent_run"]:
            trainer.extra_state["parent_run"] = parent["parent_run"]
    hooks: list[Hook] = []
    # Validation first: a checkpoint of an evaluated step holds its verdict (best so far,
    # patience), and the MLflow hook finds the figures in the step's metrics.
    if cfg.eval is not None:
        hooks.append(ValidationHook(cfg, progress=progress))
    hooks.append(checkpoints)
    if trainer.rank == 0:
        hooks.append(ProgressHook(cfg.train.steps, enabled=progress))
        if cfg.mlflow.enabled:
            hooks.append(MlflowHook(cfg, index.manifest, trainer.world_size, rank_hosts))
    hooks += list(extra_hooks)

    # Offline triplet selection (a triplet term with selection: offline) replaces the loader.
    offline = OfflineTriplets.from_config(cfg, index, trainer)
    if offline is not None:
        hooks.insert(0, offline)  # ahead of MLflow: it adds each round's figures to a step
        loader = offline.batches()
    else:
        loader = build_loader(
            index,
            cfg.data,
            cfg.sampler,
            trainer.rank,
            trainer.world_size,
            cfg.train.seed,
            start_step=trainer.step,
        )
    bad_samples = BadSamples(trainer, cfg.data.max_bad_samples)
    batches = None
    try:
        with signals.recording():
            for hook in hooks:
                hook.on_start(trainer)
            batches = iter(loader)
            while trainer.step < cfg.train.steps:
                batch = next(batches)
                if batch["step"] != trainer.step:  # the loader's resume arithmetic must match ours
                    raise RuntimeError(
                        f"loader produced step {batch['step']}, trainer is at step {trainer.step}"
                    )
                out = trainer.train_step(normalize_batch(batch["images"]), batch["labels"])
                fresh_here = bad_samples.new_here(batch.get("bad_samples", ()))
                fresh_total, stop_signal = _agree_after_step(
                    trainer, len(fresh_here), signals.requested_stop()
                )
                bad_samples.add(trainer, fresh_here, fresh_total)
                out.stats[METRIC] = float(bad_samples.count)
                for hook in hooks:
                    hook.after_step(trainer, out)
                if stop_signal:
                    for hook in hooks:
                        hook.on_stop(trainer, stop_signal)
                    raise signals.TrainingStopped(stop_signal, trainer.step)
                if any(hook.stop_requested for hook in hooks):
                    break  # early stop (eval.patience)
    finally:
        _shut_down_workers(batches)
    summary = {
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "world_size": trainer.world_size,
        "rank_hosts": rank_hosts,
    }
    for hook in hooks:
        hook.on_end(trainer, summary)
    return summary if trainer.rank == 0 else None


def data_fingerprint(
    cfg: TrainConfig, index: DatasetIndex, class_names: list[str] | None = None
) -> dict:
    """The fingerprint of the run's data (see checkpoint.check_dataset), with where it is and
    the identity of each class (what `train.init_from` maps rows by)."""
    if class_names is None:
        class_names = read_class_names(cfg.data.shards, cfg.data.split)
    return {
        **index.fingerprint(class_names),
        "shards": cfg.data.shards,
        "class_names": class_names,
    }


def _agree_after_step(trainer: Trainer, fresh_bad: int, stop_signal: int) -> tuple[int, int]:
    """(fresh bad samples summed over ranks, the stop signal any rank received or 0): one
    small all-reduce per step, so every rank takes the same decision at the same step."""
    values = [fresh_bad, int(stop_signal == signal.SIGTERM), int(stop_signal == signal.SIGINT)]
    if trainer.group is not None and dist.get_world_size(trainer.group) > 1:
        # On the training device: under NCCL alone a CPU tensor cannot be all-reduced.
        tensor = torch.tensor(values, dtype=torch.int64, device=trainer.device)
        dist.all_reduce(tensor, group=trainer.group)
        values = tensor.tolist()
    signum = signal.SIGTERM if values[1] else signal.SIGINT if values[2] else 0
    return int(values[0]), int(signum)


def _shut_down_workers(batches) -> None:
    """Stop the loader's worker processes now, also when the rank failed: left to garbage
    collection they can outlive the rank, blocked on a full queue with a shard open."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-worker iterator
    if shutdown is not None:
        shutdown()
