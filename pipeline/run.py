"""The training loop of one rank, and a local launcher for N ranks on this machine.

    from pipeline.run import run_rank, launch_local
    run_id = launch_local(cfg, nproc=2)   # spawns 2 ranks (gloo on CPU, nccl on GPUs)
    summary = run_rank(cfg)               # inside an initialised process group
                                          # (torchrun, Ray Train's TorchTrainer, ...)

`run_rank` is the whole loop: read the shard index, build the trainer, resume from
`checkpoint.dir` if a checkpoint is there, stream batches, step, and let the hooks do the
rest (checkpoints, progress, MLflow). It returns the run summary on rank 0, None elsewhere.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.config import TrainConfig
from pipeline.data.loader import build_loader
from pipeline.data.shards import read_dataset_index
from pipeline.data.transforms import normalize_batch
from pipeline.hooks import CheckpointHook, Hook, ProgressHook
from pipeline.offline_triplets import OfflineTriplets
from pipeline.trainer import Trainer

log = logging.getLogger("facetrain.train")


class TrainingFailed(RuntimeError):
    """A rank of a local launch failed; the message is that rank's error."""


def run_rank(
    cfg: TrainConfig, extra_hooks: Sequence[Hook] = (), progress: bool = True
) -> dict | None:
    """Train on an already-initialised process group (or a single process without one)."""
    from pipeline.tracking import MlflowHook

    index = read_dataset_index(cfg.data.shards, cfg.data.split)
    trainer = Trainer(cfg, index.num_classes)
    checkpoints = CheckpointHook(cfg)
    checkpoints.restore(trainer)
    hooks: list[Hook] = [checkpoints]
    if trainer.rank == 0:
        hooks.append(ProgressHook(cfg.train.steps, enabled=progress))
        if cfg.mlflow.enabled:
            hooks.append(MlflowHook(cfg, index.manifest, trainer.world_size))
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
    summary = {
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "world_size": trainer.world_size,
    }
    for hook in hooks:
        hook.on_end(trainer, summary)
    return summary if trainer.rank == 0 else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(
    rank: int, world_size: int, port: int, cfg: TrainConfig, out_dir: str, threads: int
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(threads),
    )
    torch.set_num_threads(threads)
    use_cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        "nccl" if use_cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        summary = run_rank(cfg, progress=rank == 0)
        if rank == 0:
            torch.save(summary, Path(out_dir) / "summary.pt")
    except BaseException as err:
        (Path(out_dir) / f"error-{rank}.txt").write_text(f"{type(err).__name__}: {err}")
        raise
    finally:
        dist.destroy_process_group()


def launch_local(cfg: TrainConfig, nproc: int = 1) -> str | None:
    """Train with `nproc` ranks on this machine; returns the MLflow run id (None when the
    tracking server was unreachable). Raises TrainingFailed with the failing rank's error."""
    return train_local(cfg, nproc)["mlflow_run_id"]


def train_local(cfg: TrainConfig, nproc: int = 1) -> dict:
    """`launch_local`, returning rank 0's whole summary (steps, checkpoint, mlflow_run_id...)."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: expected at least 1")
    if not torch.cuda.is_available() or cfg.train.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    threads = max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="facetrain-launch-") as out_dir:
        try:
            if nproc == 1:
                _rank_main(0, 1, free_port(), cfg, out_dir, threads)
            else:
                mp.start_processes(
                    _rank_main,
                    args=(nproc, free_port(), cfg, out_dir, threads),
                    nprocs=nproc,
                    join=True,
                    start_method="spawn",
                )
        except Exception as err:
            errors = sorted(Path(out_dir).glob("error-*.txt"))
            if errors:
                raise TrainingFailed(
                    f"rank {errors[0].stem.split('-')[1]}: {errors[0].read_text()}"
                ) from err
            raise
        return torch.load(Path(out_dir) / "summary.pt", weights_only=False)
