"""Training through an `mlflow server` on PostgreSQL with proxied artifacts, then reading the
params, metrics, tags and model back through the same server."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from facetrain.pipeline.ports import free_port

from tests.dist import run_ranks
from tests.mlflow_server import MlflowServer, postgres_available
from tests.pipeline.shards import write_shards
from tests.pipeline.test_trainer_safety import make_config


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@pytest.fixture
def postgres(tmp_path):
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    # PostgreSQL refuses to run as root: run it as the `postgres` user the package creates,
    # in a folder that user can reach (pytest's tmp_path is private to root).
    holder = Path(tempfile.mkdtemp(prefix="facetrain-pg-"))
    os.chmod(holder, 0o755)
    data = holder / "pgdata"
    data.mkdir()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run([*as_postgres, pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        [*as_postgres, pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
         "-o", f"-p {port} -k {data} -h 127.0.0.1", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        subprocess.run([*as_postgres, pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"], check=True, capture_output=True)  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_postgres, pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(holder, ignore_errors=True)


def train(rank, world_size, shards, root, uri):
    from facetrain.pipeline.train.loop import run_rank

    return run_rank(make_config(shards, root, tracking_uri=uri, registered_model="pg-face"), progress=False)


@pytest.mark.slow
def test_training_tracks_into_postgres_through_the_server(tmp_path, postgres, monkeypatch):
    import mlflow
    from facetrain.pipeline.eval import load_model
    from facetrain.pipeline.train.checkpoint import load_backbone

    server = MlflowServer(tmp_path / "server", backend_uri=postgres).start()
    try:
        shards = write_shards(tmp_path / "data", [2, 3, 4] * 4, num_shards=2)
        started = time.time()
        summary = run_ranks(train, 1, shards, tmp_path / "run", server.uri)[0]
        assert not summary.get("mlflow_failed") and not summary.get("tracking_lost")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        run = mlflow.get_run(summary["mlflow_run_id"])
        assert run.data.params["model.backbone"] == "tiny"
        assert run.data.tags["world_size"] == "1" and run.info.start_time >= started * 1000 - 5000
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2]
        faces = torch.rand(2, 3, 112, 112) * 2 - 1
        expected = load_backbone(tmp_path / "run" / "ckpt")(faces)
        torch.testing.assert_close(load_model("models:/pg-face/1").module(faces), expected)
        # The artifacts went through the server into --artifacts-destination.
        assert list((tmp_path / "server" / "artifacts").rglob("weights.safetensors"))
    finally:
        server.stop()
