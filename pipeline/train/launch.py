"""Launching ranks on this machine: `train_local(cfg, nproc)` spawns N ranks (gloo on CPU,
nccl on GPUs) that each run `loop.run_rank` and returns rank 0's summary.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.ports import free_port
from facetrain.pipeline.train.loop import run_rank


class TrainingFailed(RuntimeError):
    """A rank of a local launch failed; the message is that rank's error."""


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


def train_local(cfg: TrainConfig, nproc: int = 1) -> dict:
    """Train with `nproc` ranks on this machine; returns rank 0's summary (steps, checkpoint,
    mlflow_run_id, ...). Raises TrainingFailed with the failing rank's error."""
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
