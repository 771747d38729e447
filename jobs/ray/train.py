"""Ray entrypoint: `python -m facetrain.jobs.ray.train --config FILE [--set k=v] [--nproc N]` on a Ray cluster.

Takes the arguments of `facetrain train` and runs the same per-rank training function
(`facetrain.pipeline.train.loop.run_rank`) on N Ray Train workers through `TorchTrainer`: one
worker per GPU (NCCL) when the config asks for CUDA or the cluster has GPUs, else CPU workers joined by
gloo. Ray Train sets up the process group; run_rank finds it already initialised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RankFn = Callable[[Any], Any]


@dataclass(frozen=True)
class Scaling:
    """How many Ray Train workers and whether each holds one GPU."""

    num_workers: int
    use_gpu: bool

    @property
    def backend(self) -> str:
        return "nccl" if self.use_gpu else "gloo"


def choose_scaling(
    device: str, nproc: int | None, cluster_resources: Mapping[str, float]
) -> Scaling:
    """Workers and devices for `train.device` (auto|cpu|cuda) on a cluster with these resources.

    `--nproc` wins when given; otherwise one worker per GPU on a GPU cluster, one CPU worker
    elsewhere. `device=cuda` on a cluster without GPUs is an error, not a silent CPU run.
    """
    gpus = int(cluster_resources.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise ValueError("train.device=cuda: the Ray cluster has no GPU resources")
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if nproc is not None:
        if nproc < 1:
            raise ValueError(f"--nproc {nproc}: expected at least 1 worker")
        if use_gpu and nproc > gpus:
            # Ray would wait forever for GPUs the cluster cannot give (autoscaling aside).
            print(
                f"facetrain.jobs.ray.train: note: --nproc {nproc} GPU workers, cluster has {gpus} GPUs now; "
                "waiting for the autoscaler",
                file=sys.stderr,
            )
        return Scaling(nproc, use_gpu)
    return Scaling(gpus if use_gpu else 1, use_gpu)


def train_on_ray(
    cfg: Any, scaling: Scaling, rank_fn: RankFn | None = None, storage_path: str | None = None
) -> str | None:
    """Run `rank_fn(cfg)` (default: `loop.run_rank`) on every Ray Train worker.

    Returns what rank 0's `rank_fn` returned (run_rank's summary: steps, checkpoint,
    mlflow_run_id, ...). Raises the workers' error when training fails.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray Train keeps only metrics attached to checkpoints; rank 0's answer comes back
    # through a small actor instead, which works on any number of nodes.
    outcome = ray.remote(num_cpus=0)(_Outcome).remote()
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "config_class": f"{type(cfg).__module__}:{type(cfg).__qualname__}",
            "config": cfg.model_dump(mode="json"),
            "rank_fn": rank_fn,
            "outcome": outcome,
            "use_gpu": scaling.use_gpu,
        },
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu),
        torch_config=TorchConfig(backend=scaling.backend),
        run_config=RunConfig(name="facetrain-train", storage_path=storage_path),
    )
    trainer.fit()
    return ray.get(outcome.get.remote())


class _Outcome:
    """Holds rank 0's return value for the driver."""

    def __init__(self) -> None:
        self.value: Any = None

    def put(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import importlib
    import os

    import ray
    import ray.train

    if not loop_config["use_gpu"]:
        # DeepSpeed picks its accelerator at import; on CPU workers it must be told.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    module_name, _, class_name = loop_config["config_class"].partition(":")
    config_class = getattr(importlib.import_module(module_name), class_name)
    cfg = config_class.model_validate(loop_config["config"])
    rank_fn = loop_config["rank_fn"] or _default_rank_fn()
    returned = rank_fn(cfg)
    if ray.train.get_context().get_world_rank() == 0:
        ray.get(loop_config["outcome"].put.remote(returned))


def _default_rank_fn() -> RankFn:
    from facetrain.pipeline.train.loop import run_rank

    return run_rank


def main(argv: Sequence[str] | None = None) -> int:
    import ray
    from facetrain.jobs.cli import train as command
    from facetrain.jobs.cli.common import parse_command
    from facetrain.jobs.cli.config import ConfigError, load_config
    from facetrain.pipeline.config import TrainConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    # `facetrain train`'s own parser; the run itself differs (Ray Train workers, not local ranks).
    args = parse_command(command, "train", argv)
    # `facetrain train` defaults --nproc to 1 local rank; on a cluster, an absent --nproc
    # means one worker per GPU, so only an explicit one counts.
    given_nproc = any(arg == "--nproc" or arg.startswith("--nproc=") for arg in argv)
    try:
        if args.config is None:
            raise ConfigError(
                "--config FILE|NAME is required "
                "(`facetrain configs list` names the shipped recipes)"
            )
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as err:
        print(f"facetrain.jobs.ray.train: error: {err}", file=sys.stderr)
        return 2
    # Inside a Ray job RAY_ADDRESS names the cluster; elsewhere this starts a local Ray.
    ray.init()
    try:
        scaling = choose_scaling(
            cfg.train.device, args.nproc if given_nproc else None, ray.cluster_resources()
        )
    except ValueError as err:
        print(f"facetrain.jobs.ray.train: error: {err}", file=sys.stderr)
        return 2
    print(
        f"facetrain.jobs.ray.train: {scaling.num_workers} Ray Train worker(s), "
        f"{'one GPU each (nccl)' if scaling.use_gpu else 'CPU (gloo)'}",
        file=sys.stderr,
    )
    summary = train_on_ray(cfg, scaling) or {}
    print(f"facetrain.jobs.ray.train: {summary.get('steps')} steps on {summary.get('world_size')} workers")
    print(f"checkpoint: {summary.get('checkpoint')}")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run: {summary['mlflow_run_id']}")
    else:
        print(
            f"MLflow run: none (tracking unreachable; records kept in {summary.get('tracking_records')})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
