"""Launching ranks: each runs `loop.run_rank` in a process group that it starts itself.

    train_local(cfg, nproc)          N ranks on this machine
    train_nodes(cfg, rendezvous)     this node's ranks of a run on several hosts (torchrun's
                                     semantics: --nnodes, --node-rank, --master-addr)
    run_launched_rank(cfg, ...)      one rank that torchrun or Slurm started

Groups are gloo on CPU and `cpu:gloo,cuda:nccl` on GPUs (devices.py); the socket interface
is the one that reaches the master (rendezvous.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.ports import free_port
from facetrain.pipeline.train.devices import process_group_backend, training_device_type
from facetrain.pipeline.train.loop import run_rank
from facetrain.pipeline.train.rendezvous import (
    LaunchedRank,
    Rendezvous,
    environment,
    socket_interface_env,
)


class TrainingFailed(RuntimeError):
    """A rank of a local launch failed; the message is that rank's error."""


def _rank_main(
    local_rank: int, rendezvous: Rendezvous, cfg: TrainConfig, out_dir: str, threads: int
) -> None:
    rank = rendezvous.global_rank(local_rank)
    launcher_env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(rendezvous.world_size),
        "LOCAL_RANK": str(local_rank),
        "MASTER_ADDR": rendezvous.master_addr,
        "MASTER_PORT": str(rendezvous.master_port),
        "OMP_NUM_THREADS": str(threads),
    }
    torch.set_num_threads(threads)
    try:
        with environment(launcher_env):
            summary = run_launched_rank(
                cfg,
                rank,
                rendezvous.world_size,
                local_rank,
                rendezvous.init_method,
                rendezvous.master_addr,
            )
        if summary is not None:
            # Plain data (counts, paths, run ids, figures): JSON, so reading it back runs no code.
            (Path(out_dir) / "summary.json").write_text(json.dumps(summary))
    except BaseException as err:
        (Path(out_dir) / f"error-{rank}.txt").write_text(f"{type(err).__name__}: {err}")
        raise


def run_launched_rank(
    cfg: TrainConfig,
    rank: int,
    world_size: int,
    local_rank: int,
    init_method: str,
    master_addr: str,
) -> dict | None:
    """Start this rank's process group on the interface that reaches the master, train,
    and tear the group down; rank 0's summary, None on the others."""
    device_type = training_device_type(cfg.train.device, torch.cuda.is_available())
    if device_type == "cuda":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with environment(socket_interface_env(master_addr, os.environ)):
        dist.init_process_group(
            process_group_backend(device_type),
            init_method=init_method,
            rank=rank,
            world_size=world_size,
        )
        try:
            return run_rank(cfg, progress=rank == 0)
        finally:
            dist.destroy_process_group()


def run_environment_rank(cfg: TrainConfig, launched: LaunchedRank) -> dict | None:
    """The one rank that torchrun or Slurm started in this process. `env://` lets torchrun's
    agent keep its own store on MASTER_PORT; Slurm's numbers are exported the same way."""
    launcher_env = {
        "RANK": str(launched.rank),
        "WORLD_SIZE": str(launched.world_size),
        "LOCAL_RANK": str(launched.local_rank),
        "MASTER_ADDR": launched.master_addr,
        "MASTER_PORT": str(launched.master_port),
    }
    with environment(launcher_env):
        return run_launched_rank(
            cfg,
            launched.rank,
            launched.world_size,
            launched.local_rank,
            "env://",
            launched.master_addr,
        )


def train_nodes(cfg: TrainConfig, rendezvous: Rendezvous) -> dict | None:
    """Start this node's `nproc_per_node` ranks of a run on `nnodes` hosts (torchrun's
    semantics) and wait for them; rank 0's summary on the node that holds it, else None.
    Raises TrainingFailed with the failing rank's error."""
    import torch.multiprocessing as mp

    nproc = rendezvous.nproc_per_node
    threads = max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="facetrain-launch-") as out_dir:
        try:
            if nproc == 1:
                _rank_main(0, rendezvous, cfg, out_dir, threads)
            else:
                mp.start_processes(
                    _rank_main,
                    args=(rendezvous, cfg, out_dir, threads),
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
        summary = Path(out_dir) / "summary.json"
        return json.loads(summary.read_text()) if summary.exists() else None


def train_local(cfg: TrainConfig, nproc: int = 1) -> dict:
    """Train with `nproc` ranks on this machine; returns rank 0's summary (steps, checkpoint,
    mlflow_run_id, ...). Raises TrainingFailed with the failing rank's error."""
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: expected at least 1")
    summary = train_nodes(cfg, Rendezvous("127.0.0.1", free_port(), nproc_per_node=nproc))
    assert summary is not None  # one node holds every rank, rank 0 among them
    return summary
