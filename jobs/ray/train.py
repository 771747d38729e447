"""Ray entrypoint: `python -m facetrain.jobs.ray.train --config FILE [--set k=v] [--nproc N]` on a Ray cluster.

Takes the arguments of `facetrain train` and runs the same per-rank training function
(`facetrain.pipeline.train.loop.run_rank`) on N Ray Train workers through `TorchTrainer`: one
worker per GPU (NCCL) when the config asks for CUDA or the cluster has GPUs, else CPU workers joined by
gloo. Ray Train sets up the process group; run_rank finds it already initialised.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facetrain.pipeline.train.devices import process_group_backend

RankFn = Callable[[Any], Any]
PROG = "facetrain.jobs.ray.train"


@dataclass(frozen=True)
class Scaling:
    """How many Ray Train workers and whether each holds one GPU."""

    num_workers: int
    use_gpu: bool

    @property
    def backend(self) -> str:
        return process_group_backend("cuda" if self.use_gpu else "cpu")

    def bundle(self) -> dict[str, int]:
        return {"CPU": 1, "GPU": 1} if self.use_gpu else {"CPU": 1}


def choose_scaling(
    device: str, nproc: int | None, workers: int | None, cluster_resources: Mapping[str, float]
) -> Scaling:
    """Workers and devices for `train.device` (auto|cpu|cuda) on a cluster with these resources.

    The count is `--nproc`, else `train.workers`, else one per GPU the cluster has now (or one
    CPU worker). `device: cuda` asks for GPU workers whether or not the cluster has GPUs yet:
    an autoscaling GPU group may start at 0 and grow once asked (see `wait_for_resources`).
    `device: auto` trains on GPUs when the cluster has some now, and says so when it has none.
    """
    gpus = int(cluster_resources.get("GPU", 0))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    count = nproc if nproc is not None else workers
    if count is not None and count < 1:
        raise ValueError(f"--nproc {count}: expected at least 1 worker")
    if device == "auto" and gpus == 0:
        print(
            f"{PROG}: note: train.device auto and the cluster has no GPUs now: training on CPU "
            "workers (set train.device: cuda to wait for an autoscaling GPU group instead)",
            file=sys.stderr,
        )
    if count is None:
        count = max(gpus, 1) if use_gpu else 1
    return Scaling(count, use_gpu)


def wait_for_resources(
    scaling: Scaling,
    timeout_s: float,
    cluster_resources: Callable[[], Mapping[str, float]],
    request: Callable[[list[dict[str, int]]], None] | None = None,
    poll_s: float = 2.0,
) -> None:
    """Ask the autoscaler for the workers' bundles and wait until the cluster has them; a
    ValueError naming what is missing after `timeout_s` (train.resources_timeout)."""
    needed = {key: value * scaling.num_workers for key, value in scaling.bundle().items()}
    if request is not None:
        request([scaling.bundle()] * scaling.num_workers)
    deadline = time.monotonic() + timeout_s
    while True:
        have = cluster_resources()
        missing = {key: value for key, value in needed.items() if have.get(key, 0.0) < value}
        if not missing:
            return
        if time.monotonic() >= deadline:
            wanted = ", ".join(
                f"{value:g} {key} (has {have.get(key, 0.0):g})" for key, value in missing.items()
            )
            raise ValueError(
                f"{scaling.num_workers} Ray Train worker(s) need {wanted} and the cluster did "
                f"not provide them within train.resources_timeout={timeout_s:g}s; scale the "
                "worker group (GPU groups: maxReplicas), lower --nproc, or raise the timeout"
            )
        print(f"{PROG}: waiting for the cluster to provide {missing}", file=sys.stderr)
        time.sleep(poll_s)


def train_on_ray(
    cfg: Any,
    scaling: Scaling,
    rank_fn: RankFn | None = None,
    storage_path: str | None = None,
    max_failures: int = 0,
) -> dict | None:
    """Run `rank_fn(cfg)` (default: `loop.run_rank`) on every Ray Train worker.

    Returns what rank 0's `rank_fn` returned (run_rank's summary: steps, checkpoint,
    mlflow_run_id, ...). Raises the workers' error when training fails `max_failures` + 1
    times: after each failure Ray Train starts the worker group again and run_rank resumes
    from the newest checkpoint in checkpoint.dir, which must be storage every node sees.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

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
        torch_config=_interface_aware_torch_config(scaling.backend),
        run_config=RunConfig(
            name="facetrain-train",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()
    return ray.get(outcome.get.remote())


def _interface_aware_torch_config(backend: str):
    """Ray Train's TorchConfig, whose process group starts on the interface that reaches
    worker 0 (gloo otherwise binds to the address the host name resolves to, and on hosts
    where that is 127.0.0.1 or off the cluster network, the group hangs)."""
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    class InterfaceAwareBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config) -> None:
            import ray

            master = worker_group.execute_single(0, ray.util.get_node_ip_address)
            worker_group.execute(_choose_socket_interface, master)
            super().on_start(worker_group, backend_config)

    class InterfaceAwareTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return InterfaceAwareBackend

    return InterfaceAwareTorchConfig(backend=backend)


def _choose_socket_interface(master_addr: str) -> None:
    import os

    from facetrain.pipeline.train.rendezvous import socket_interface_env

    # For the lifetime of this worker process: its process group is the only one it starts.
    os.environ.update(socket_interface_env(master_addr, os.environ))


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
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    # Inside a Ray job RAY_ADDRESS names the cluster; elsewhere this starts a local Ray.
    ray.init()
    from ray.autoscaler.sdk import request_resources

    try:
        scaling = choose_scaling(
            cfg.train.device,
            args.nproc if given_nproc else None,
            cfg.train.workers,
            ray.cluster_resources(),
        )
        wait_for_resources(
            scaling,
            cfg.train.resources_timeout,
            ray.cluster_resources,
            lambda bundles: request_resources(bundles=bundles),
        )
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{PROG}: {scaling.num_workers} Ray Train worker(s), "
        f"{'one GPU each (nccl)' if scaling.use_gpu else 'CPU (gloo)'}",
        file=sys.stderr,
    )
    summary = train_on_ray(cfg, scaling, max_failures=cfg.train.max_failures) or {}
    print(f"{PROG}: {summary.get('steps')} steps on {summary.get('world_size')} workers")
    print(f"checkpoint: {summary.get('checkpoint')}")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run: {summary['mlflow_run_id']}")
    else:
        print(
            f"MLflow run: none (tracking unreachable; records kept in {summary.get('tracking_records')})"
        )
    if summary.get("mlflow_failed"):
        # As `facetrain train`: a run whose model or records did not reach MLflow is not a
        # success a scheduler should report green (`mlflow.required: false` downgrades it).
        print(f"{PROG}: error: {summary['mlflow_failed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
