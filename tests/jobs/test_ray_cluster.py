"""`facetrain submit` against a real Ray head on 127.0.0.1 with token auth enabled.

One head for the module (~10-20 s to start): a prep job ships this checkout, runs
`python -m jobs.prep` on the cluster, and must write the same shards as an inline local
run; a failing job's exit code comes back; a missing or wrong token gets one line; no
process of the head listens on or talks to a non-loopback address; all of it stops by pid.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
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


def test_prep_job_on_the_cluster_matches_an_inline_run(head, token_env, tmp_path, capsys):
    source = make_faces(tmp_path / "faces")
    out_cluster = tmp_path / "shards-cluster"
    prep_args = [str(source), "--out", str(out_cluster), "--align", "none", "--shard-size", "4"]

    code = main(["submit", "prep", *prep_args, "--address", head.address])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    job_id = captured.out.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "python -m jobs.prep" in captured.err

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
def test_missing_or_wrong_token_is_one_line(head, token_env, monkeypatch, token, capsys):
    if token is None:
        monkeypatch.delenv("RAY_AUTH_TOKEN")
    else:
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    code = main(["submit", "status", "raysubmit_x", "--address", head.address])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    if token is None:
        assert "HTTP 401" in err and "sent no token" in err
    else:
        assert "HTTP 403" in err and "from RAY_AUTH_TOKEN" in err


def test_head_listens_on_loopback_only(head):
    assert head.pids()
    assert head.non_loopback_sockets() == []


TRAIN_DRIVER = """
import sys
import torch
import torch.distributed as dist
from jobs.train import Scaling, train_on_ray
from pipeline.config import TrainConfig

def rank_fn(cfg):
    # Each rank adds rank + 1: 1 + 2 with two workers, if they share a gloo group.
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    return f"{dist.get_backend()}:{dist.get_world_size()}:{total.item():g}:{cfg.train.steps}"

cfg = TrainConfig.model_validate({
    "data": {"shards": "/nowhere"}, "loss": [{"type": "softmax"}], "train": {"steps": 7},
})
result = train_on_ray(cfg, Scaling(num_workers=2, use_gpu=False), rank_fn=rank_fn,
                      storage_path=sys.argv[1])
print("RANK0", result)
"""


def test_torch_trainer_runs_the_rank_function_on_two_gloo_workers(head, tmp_path):
    import subprocess
    import sys

    env = dict(head.env, RAY_ADDRESS=f"127.0.0.1:{head.gcs_port}")
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_DRIVER, str(tmp_path / "ray-results")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RANK0 gloo:2:3:7" in done.stdout
    assert head.non_loopback_sockets() == []
