"""`facetrain submit` against a real Ray head on 127.0.0.1 with token auth enabled.

One head for the module (~10-20 s to start): a prep job ships this checkout, runs
`python -m facetrain.jobs.ray.prep` on the cluster, and must write the same shards as an inline local
run; a failing job's exit code comes back; a missing or wrong token gets one line; no
process of the head listens on or talks to a non-loopback address; all of it stops by pid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from facetrain.jobs.cli import main
from PIL import Image

from tests.jobs.ray_head import start_head, stop_head

pytestmark = pytest.mark.slow

IDENTITIES = {"alice": 3, "bob": 4, "carol": 2, "dave": 3}


@pytest.fixture(scope="module")
def head():
    head = start_head()
    try:
        yield head
    finally:
        left = stop_head(head)
        assert not left, f"Ray head processes still alive after SIGKILL: {sorted(left)}"


@pytest.fixture
def token_env(head, monkeypatch, tmp_path):
    """The client side: the head's token in RAY_AUTH_TOKEN, nothing else of Ray's."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)


def make_faces(root: Path) -> Path:
    """Pre-aligned 112x112 'faces': distinct random textures per image, ROOT/<identity>/<n>.jpg."""
    rng = np.random.default_rng(7)
    for identity, count in IDENTITIES.items():
        (root / identity).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / identity / f"{index:04d}.jpg", quality=90)
    return root


def _samples(out: Path) -> dict[str, tuple[str, bytes]]:
    """key -> (class text, jpg bytes) over every shard of a prep output."""
    samples = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                cls, jpg = samples.get(key, ("", b""))
                samples[key] = (
                    data.decode() if ext == "cls" else cls,
                    data if ext == "jpg" else jpg,
                )
    return samples


@pytest.fixture(scope="module")
def prepped(head, tmp_path_factory):
    """A prep job submitted to the head: (source, output dir, exit code, stdout, stderr)."""
    import contextlib
    import io
    import os

    root = tmp_path_factory.mktemp("prep")
    source = make_faces(root / "faces")
    out = root / "shards-cluster"
    args = [str(source), "--out", str(out), "--align", "none", "--shard-size", "4"]
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        os.environ.pop(name, None)
    os.environ.update(HOME=str(root / "client-home"), RAY_AUTH_TOKEN=head.token)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["submit", "prep", *args, "--address", head.address])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return source, out, code, stdout.getvalue(), stderr.getvalue()


def test_prep_job_on_the_cluster_matches_an_inline_run(head, prepped, token_env, tmp_path, capsys):
    source, out_cluster, code, stdout, stderr = prepped
    assert code == 0, stderr + stdout
    job_id = stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "python -m facetrain.jobs.ray.prep" in stderr

    # The independent reference: the same prep in this process, without Ray.
    out_inline = tmp_path / "shards-inline"
    inline_args = [str(source), "--out", str(out_inline), "--align", "none", "--shard-size", "4"]
    assert main(["prep", *inline_args, "--set", "executor=inline", "--no-progress"]) == 0
    capsys.readouterr()

    cluster_samples, inline_samples = _samples(out_cluster), _samples(out_inline)
    assert len(cluster_samples) == sum(IDENTITIES.values())
    assert cluster_samples == inline_samples
    dataset = json.loads((out_cluster / "dataset.json").read_text())
    assert dataset["config"]["ray_address"] == "auto"
    identities = pq.read_table(out_cluster / "identities.parquet").to_pydict()
    assert dict(zip(identities["identity"], identities["count"], strict=True)) == IDENTITIES

    assert main(["submit", "status", job_id, "--address", head.address]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["submit", "logs", job_id, "--address", head.address]) == 0
    assert str(out_cluster) in capsys.readouterr().out
    assert head.non_loopback_sockets() == []


def test_train_job_runs_two_ray_train_workers_on_the_prepped_shards(
    head, prepped, token_env, tmp_path, capsys
):
    import yaml

    _, shards, code, _, _ = prepped
    assert code == 0
    config = {
        "data": {"shards": str(shards), "batch": {"p": 2, "k": 2}, "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 8},
        "loss": [{"type": "softmax"}],
        "train": {"steps": 3, "lr": 0.01, "device": "cpu", "precision": "fp32", "log_every": 1},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 3},
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "log_model": False,
            "registered_model": None,
            "experiment": "cluster-test",
        },
    }
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config))
    code = main(
        ["submit", "train", "--config", str(config_file), "--nproc", "2", "--address", head.address]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out[-4000:]
    # The job runs the arguments as typed.
    assert f"python -m facetrain.jobs.ray.train --config {config_file} --nproc 2" in captured.err
    assert "2 Ray Train worker(s), CPU (gloo)" in captured.out
    assert "facetrain.jobs.ray.train: 3 steps on 2 workers" in captured.out
    run_ids = [
        line.split(": ", 1)[1]
        for line in captured.out.splitlines()
        if line.startswith("MLflow run: ")
    ]
    assert len(run_ids) == 1, captured.out[-3000:]

    import mlflow

    run = mlflow.MlflowClient(tracking_uri=config["mlflow"]["tracking_uri"]).get_run(run_ids[0])
    assert run.data.tags["world_size"] == "2"
    assert json.loads(run.data.tags["facetrain.rank_hosts"]) == ["127.0.0.1", "127.0.0.1"]
    assert list((tmp_path / "ckpt").iterdir()), "no checkpoint written"
    assert head.non_loopback_sockets() == []


def test_failed_job_returns_its_exit_code_without_waiting_too(head, token_env, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    code = main(
        ["submit", "prep", str(missing), "--out", str(tmp_path / "o"), "--address", head.address]
    )
    captured = capsys.readouterr()
    assert code == 2, captured.err  # prep's own "unusable source" code, through the job
    assert "no-such-folder" in captured.out  # prep's message, followed from the job's logs

    code = main(
        [
            "submit",
            "prep",
            str(missing),
            "--out",
            str(tmp_path / "o"),
            "--no-wait",
            "--address",
            head.address,
        ]
    )
    job_id = capsys.readouterr().out.strip()
    assert code == 0 and job_id.startswith("raysubmit_")
    assert main(["submit", "logs", job_id, "--follow", "--address", head.address]) == 0
    capsys.readouterr()
    assert main(["submit", "status", job_id, "--address", head.address]) == 2
    assert capsys.readouterr().out.strip() == "FAILED"


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_missing_or_wrong_token_is_one_line(head, token_env, monkeypatch, token):
    if token is None:
        monkeypatch.delenv("RAY_AUTH_TOKEN")
    else:
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    # A fresh process, as a user runs it: an earlier in-process `ray.init` (prep tests) leaves
    # Ray's C++ side in token mode with its own cached token, which its SDK would then send.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from facetrain.jobs.cli import main; raise SystemExit(main())",
            "submit",
            "status",
            "raysubmit_x",
            "--address",
            head.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, err = done.returncode, done.stderr
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    if token is None:
        assert "HTTP 401" in err and "sent no token" in err
    else:
        assert "HTTP 403" in err and "from RAY_AUTH_TOKEN" in err


def test_head_listens_on_loopback_only(head):
    assert head.pids()
    assert head.non_loopback_sockets() == []
