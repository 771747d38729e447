"""The training loop of one rank.

`run_rank` is the whole loop: read the shard index, build the trainer, resume from
`checkpoint.dir` if a checkpoint is there, stream batches, step, and let the hooks do the
rest (checkpoints, progress, MLflow). It runs on an already-initialised process group
(`facetrain train`'s local ranks, torchrun, Ray Train's TorchTrainer) or in a single process
without one, and returns the run summary on rank 0, None elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.data.loader import build_loader
from facetrain.pipeline.data.shards import read_dataset_index
from facetrain.pipeline.data.transforms import normalize_batch
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
    checkpoints = CheckpointHook(cfg)
    checkpoints.restore(trainer)
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
        for hook in hooks:
            hook.after_step(trainer, out)
        if any(hook.stop_requested for hook in hooks):
            break
    summary = {
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "world_size": trainer.world_size,
        "rank_hosts": rank_hosts,
    }
    for hook in hooks:
        hook.on_end(trainer, summary)
    return summary if trainer.rank == 0 else None
