"""`facetrain submit train` on a Ray cluster of two real hosts (network namespaces joined by
a veth pair, tests/multihost.py): the head on one, a worker node on the other, token auth on.

Each node offers one CPU, so the two Ray Train workers land one per host. Neither
GLOO_SOCKET_IFNAME nor NCCL_SOCKET_IFNAME is set: inside the hosts the host name resolves to
127.0.0.1, and the workers' process group must find the veth interface by itself.

The node-failure test kills the worker host's training process mid-run: Ray Train's
FailureConfig starts the worker group again, run_rank resumes from the newest checkpoint in
checkpoint.dir (a folder both hosts see), and MLflow keeps one run whose loss curve goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.multihost import TwoHosts
from tests.pipeline.shards import write_shards

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = 6379, 8265


class Cluster:
    def __init__(self, hosts: TwoHosts, root: Path) -> None:
        self.hosts, self.root = hosts, root
        self.token = secrets.token_hex(16)
        self.head_ip, self.worker_ip = hosts.addresses
        self.processes: list[subprocess.Popen] = []
        # Ray's unix sockets live under its temp dir, and their paths are capped at 107 bytes.
        self.ray_dir = Path(tempfile.mkdtemp(prefix="ftr-", dir="/tmp"))

    @property
    def address(self) -> str:
        return f"http://{self.head_ip}:{DASHBOARD_PORT}"

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in self.hosts.environment().items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            HOME=str(home),
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            OMP_NUM_THREADS="1",
            TORCH_EXTENSIONS_DIR=str(Path.home() / ".cache" / "torch_extensions"),
        )
        return env

    def start(self) -> None:
        common = [
            "--block",
            "--num-cpus=1",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]
        head = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            f"--node-ip-address={self.head_ip}",
            f"--port={GCS_PORT}",
            f"--dashboard-host={self.head_ip}",
            f"--dashboard-port={DASHBOARD_PORT}",
            f"--temp-dir={self.ray_dir}",
            *common,
        ]
        worker = [
            str(VENV_BIN / "ray"),
            "start",
            f"--address={self.head_ip}:{GCS_PORT}",
            f"--node-ip-address={self.worker_ip}",
            *common,
        ]
        for host, argv, name in ((0, head, "head"), (1, worker, "worker")):
            log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - lives with the process
            self.processes.append(
                self.hosts.popen(
                    host,
                    argv,
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.root,
                )
            )
            if name == "head":
                self.wait_for_nodes(1)
        self.wait_for_nodes(2)

    def alive_nodes(self) -> int:
        code = (
            "import ray; ray.init(address='auto', logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        env = self.env() | {"RAY_ADDRESS": f"{self.head_ip}:{GCS_PORT}"}
        try:  # before the head answers, ray.init can wait a long time: count that as none
            done = subprocess.run(
                self.hosts.command(0, [sys.executable, "-c", code]),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return 0
        lines = done.stdout.strip().splitlines()
        return int(lines[-1]) if done.returncode == 0 and lines else 0

    def wait_for_nodes(self, count: int, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                break  # a `ray start` exited: its log says why
            if self.alive_nodes() >= count:
                return
            time.sleep(2)
        logs = "\n".join(p.read_text()[-2000:] for p in self.root.glob("*.log"))
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes:\n{logs}")

    def facetrain(self, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
        """`facetrain ARGS` as a user on the head host runs it (client side: the token only)."""
        env = {k: v for k, v in self.env().items() if k != "RAY_AUTH_MODE"}
        return subprocess.run(
            self.hosts.command(0, [str(VENV_BIN / "facetrain"), *args]),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def train_worker_pids(self, host: int) -> list[int]:
        """Ray Train worker processes running on `host`."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.hosts.names[host]], capture_output=True, text=True
        ).stdout.split()
        found = []
        for pid in map(int, listed):
            try:
                if "RayTrainWorker" in " ".join(psutil.Process(pid).cmdline()):
                    found.append(pid)
            except psutil.Error:
                continue
        return found

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=30)
        shutil.rmtree(self.ray_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = TwoHosts.unavailable()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("ray-two-hosts")
    with TwoHosts() as hosts:
        cluster = Cluster(hosts, root)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-two-hosts-shards")
    write_shards(root, [5] * 10 + [3] * 6, num_shards=2)
    return root


def write_config(tmp_path: Path, shards: Path, steps: int, backbone: str, every: int) -> Path:
    config = {
        "data": {"shards": str(shards), "batch": {"p": 2, "k": 2}, "workers": 0},
        "model": {"backbone": backbone, "embedding_size": 16},
        "loss": [{"type": "softmax"}, {"type": "triplet", "weight": 0.5}],
        "train": {
            "steps": steps,
            "lr": 0.01,
            "device": "cpu",
            "log_every": 1,
            "resources_timeout": 60,
            "max_failures": 2,
        },
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": every},
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "log_model": False,
            "registered_model": None,
            "experiment": "two-hosts",
        },
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mlflow_run_id(stdout: str) -> str:
    return next(
        line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("MLflow run: ")
    )


def test_one_ray_train_worker_per_host(cluster, shards, tmp_path):
    import mlflow

    config = write_config(tmp_path, shards, steps=4, backbone="tiny", every=4)
    done = cluster.facetrain(
        "submit", "train", "--address", cluster.address, "--config", str(config), "--nproc", "2"
    )
    assert done.returncode == 0, (done.stderr + done.stdout)[-5000:]
    assert "4 steps on 2 workers" in done.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(mlflow_run_id(done.stdout))
    assert run.data.tags["world_size"] == "2"
    hosts = json.loads(run.data.tags["facetrain.rank_hosts"])
    assert sorted(hosts) == sorted([cluster.head_ip, cluster.worker_ip])


def test_a_killed_worker_resumes_from_the_latest_checkpoint(cluster, shards, tmp_path):
    import mlflow

    steps, every = 40, 10
    config = write_config(tmp_path, shards, steps=steps, backbone="mobilefacenet", every=every)
    done = cluster.facetrain(
        "submit",
        "train",
        "--address",
        cluster.address,
        "--no-wait",
        "--config",
        str(config),
        "--nproc",
        "2",
        timeout_s=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = done.stdout.strip().splitlines()[-1]

    # Wait for the first checkpoint, then kill the training process on the worker host.
    first = tmp_path / "ckpt" / f"step-{every:08d}" / "meta.json"
    deadline = time.monotonic() + 600
    while not first.exists():
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    victims = cluster.train_worker_pids(1)
    assert victims, "no Ray Train worker process on the worker host"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    logs = cluster.facetrain("submit", "logs", job_id, "--follow", "--address", cluster.address)
    status = cluster.facetrain("submit", "status", job_id, "--address", cluster.address)
    assert status.stdout.strip() == "SUCCEEDED", logs.stdout[-6000:]
    assert f"{steps} steps on 2 workers" in logs.stdout
    assert "resuming from" in logs.stdout + logs.stderr  # the restarted group read the checkpoint

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("two-hosts")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # one run, continued: no second run for the restart
    logged = {metric.step for metric in client.get_metric_history(runs[0].info.run_id, "loss")}
    assert logged == set(range(steps))
