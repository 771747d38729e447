"""Training across hosts without Ray: `facetrain train --nnodes 2` on two real test hosts
(network namespaces, tests/multihost.py), and one rank per process under torchrun.

The reference is the same run with both ranks on one host (`--nproc 2`): the global batches
are the same, so the weights must be too. Neither GLOO_SOCKET_IFNAME nor NCCL_SOCKET_IFNAME
is set: inside the test hosts the host name resolves to 127.0.0.1, so without choosing the
interface on purpose the rendezvous would hang.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from facetrain.pipeline.train.rendezvous import (
    Rendezvous,
    rank_from_environment,
    socket_interface_env,
)

from tests.multihost import TwoHosts
from tests.pipeline.shards import write_shards

FACETRAIN = str(Path(sys.executable).with_name("facetrain"))
STEPS = 6


def write_config(tmp_path: Path, shards: Path, name: str, tracking: str | None) -> Path:
    config = {
        "data": {"shards": str(shards), "batch": {"p": 3, "k": 2}, "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 16},
        "loss": [
            {"type": "asoftmax", "margin": 2},
            {"type": "center", "weight": 0.01},
            {"type": "triplet", "weight": 0.5},
        ],
        "train": {"steps": STEPS, "lr": 0.05, "seed": 2, "device": "cpu", "log_every": 1},
        "checkpoint": {"dir": str(tmp_path / name / "ckpt"), "every": 100},
        "mlflow": (
            {"tracking_uri": tracking, "experiment": "multinode", "log_model": False}
            if tracking
            else {"enabled": False}
        ),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multinode-shards")
    write_shards(root, [5] * 10 + [3] * 6, num_shards=2)
    return root


@pytest.fixture(scope="module")
def single_host_weights(shards, tmp_path_factory) -> dict[str, torch.Tensor]:
    from facetrain.pipeline.train.checkpoint import load_backbone

    tmp_path = tmp_path_factory.mktemp("single-host")
    config = write_config(tmp_path, shards, "local", None)
    done = subprocess.run(
        [FACETRAIN, "train", "--config", str(config), "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return load_backbone(tmp_path / "local" / "ckpt").state_dict()


def assert_same_weights(path: Path, reference: dict[str, torch.Tensor]) -> None:
    from facetrain.pipeline.train.checkpoint import load_backbone

    weights = load_backbone(path).state_dict()
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_two_hosts_train_as_one(shards, single_host_weights, tmp_path):
    import mlflow

    why = TwoHosts.unavailable()
    if why:
        pytest.skip(why)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = write_config(tmp_path, shards, "two-hosts", tracking)
    with TwoHosts() as hosts:
        master = hosts.addresses[0]
        nodes = [
            hosts.popen(
                node,
                [
                    FACETRAIN,
                    "train",
                    "--config",
                    str(config),
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(node),
                    "--master-addr",
                    master,
                    "--master-port",
                    "29517",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for node in (0, 1)
        ]
        outputs = []
        for node in nodes:
            try:
                outputs.append(node.communicate(timeout=600))
            finally:
                node.kill()
        for node, (_, err) in zip(nodes, outputs, strict=True):
            assert node.returncode == 0, err[-3000:]
        addresses = hosts.addresses
    assert "node 0 reports the run" in outputs[1][0]
    run_id = next(
        line.split()[-1] for line in outputs[0][0].splitlines() if line.startswith("MLflow run:")
    )
    run = mlflow.MlflowClient(tracking).get_run(run_id)
    assert json.loads(run.data.tags["facetrain.rank_hosts"]) == list(addresses)
    assert run.data.tags["world_size"] == "2"
    assert_same_weights(tmp_path / "two-hosts" / "ckpt", single_host_weights)


def test_torchrun_ranks_take_their_numbers_from_the_environment(
    shards, single_host_weights, tmp_path
):
    config = write_config(tmp_path, shards, "torchrun", None)
    port = _free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            FACETRAIN,
            "train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks on hosts: 127.0.0.1, 127.0.0.1" in done.stdout
    assert_same_weights(tmp_path / "torchrun" / "ckpt", single_host_weights)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the pure parts
def test_rendezvous_numbers_ranks_like_torchrun():
    rendezvous = Rendezvous("10.0.0.1", 29500, nnodes=3, node_rank=2, nproc_per_node=4)
    assert rendezvous.world_size == 12
    assert [rendezvous.global_rank(r) for r in range(4)] == [8, 9, 10, 11]
    assert rendezvous.init_method == "tcp://10.0.0.1:29500"
    with pytest.raises(ValueError, match="--node-rank 3"):
        Rendezvous("10.0.0.1", 29500, nnodes=3, node_rank=3)


def test_launcher_environment_torchrun_and_slurm():
    torchrun = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h0",
        "MASTER_PORT": "1234",
    }
    launched = rank_from_environment(torchrun)
    assert (launched.rank, launched.world_size, launched.local_rank) == (3, 4, 1)
    assert (launched.master_addr, launched.master_port) == ("h0", 1234)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "h0"}
    launched = rank_from_environment(slurm)
    assert (launched.rank, launched.world_size, launched.master_port) == (5, 8, 29500)
    assert rank_from_environment({"PATH": "/bin"}) is None
    # What an engine built in this process leaves behind is not a launcher's environment.
    assert rank_from_environment({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    with pytest.raises(ValueError, match="RANK=4"):
        rank_from_environment({"RANK": "4", "WORLD_SIZE": "2", "MASTER_ADDR": "h0"})


def test_socket_interface_is_the_one_that_reaches_the_master():
    chosen = socket_interface_env("127.0.0.1", {})
    assert chosen == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    # The user's choice stands.
    assert socket_interface_env("127.0.0.1", {"NCCL_SOCKET_IFNAME": "eth9"}) == {}
