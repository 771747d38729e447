"""Where the tasks run: plain Ray tasks (embedded local Ray, or a cluster), or inline.

Plain `ray.remote` tasks over whole shards, not Ray Data `map_batches`: measured at about
half a multiprocessing.Pool's rate for this decode -> warp -> encode work, where plain tasks
match the Pool (benchmarks/prep_throughput.py). At most `2 x CPUs` tasks are in flight, so
the driver's memory stays bounded whatever the number of shards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from facetrain.data_prep.config import PrepConfig


class TaskRunner:
    """`with TaskRunner(config) as runner: for result in runner.map(fn, args_iter): ...`"""

    def __init__(self, config: PrepConfig) -> None:
        self.config = config
        self._ray = None
        self._started_ray = False
        self._remote: dict[Callable, Any] = {}

    def __enter__(self) -> TaskRunner:
        if self.config.executor == "ray":
            import ray

            self._ray = ray
            if not ray.is_initialized():
                options: dict[str, Any] = {
                    "include_dashboard": False,
                    "logging_level": "ERROR",
                    "log_to_driver": True,
                }
                if self.config.ray_address:
                    options["address"] = self.config.ray_address
                else:
                    options["num_cpus"] = self.config.workers or os.cpu_count() or 1
                    # Ray renices its workers to 15 by default, so on a busy machine a prep
                    # would get a fraction of the CPU a multiprocessing.Pool gets.
                    options["_system_config"] = {"worker_niceness": 0}
                ray.init(**options)
                self._started_ray = True
        return self

    def __exit__(self, *exc) -> None:
        if self._started_ray:
            self._ray.shutdown()

    @property
    def parallelism(self) -> int:
        if self._ray is None:
            return 1
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable, args_iter: Iterable[tuple]) -> Iterator[Any]:
        """fn(*args) for each args, results in completion order (inline: in order)."""
        if self._ray is None:
            for args in args_iter:
                yield fn(*args)
            return
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1)(fn)
        max_in_flight = 2 * self.parallelism
        pending: list = []
        for args in args_iter:
            pending.append(remote.remote(*args))
            if len(pending) >= max_in_flight:
                done, pending = self._ray.wait(pending, num_returns=1)
                yield self._ray.get(done[0])
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            yield self._ray.get(done[0])
