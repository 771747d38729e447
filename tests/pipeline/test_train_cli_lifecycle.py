"""`facetrain train --nproc 2` as a cluster runs it: SIGTERM ends it at a checkpoint with
exit 143, and neither a stopped nor a failed run leaves a process behind."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline.shards import write_shards


def write_config(tmp_path, shards, steps, **data):
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"shards": str(shards), "batch": {"p": 3, "k": 2}, "workers": 1, **data},
                "model": {"backbone": "tiny", "embedding_size": 8},
                "loss": [{"type": "softmax"}, {"type": "center"}],
                "train": {"steps": steps, "lr": 0.05},
                "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 10_000},
                "mlflow": {"enabled": False},
            }
        )
    )
    return config


def start(tmp_path, config):
    """The CLI in its own session: every process it starts shares its process group id."""
    stderr = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 (closed by the caller's wait)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "facetrain"), "train", "--config", str(config)]
        + ["--nproc", "2"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd=tmp_path,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(pgid: int) -> None:
    time.sleep(10)
    alive = group_alive(pgid)
    if alive:
        os.killpg(pgid, signal.SIGKILL)
    assert not alive, "a process of the run is still alive 10 s after it ended"


@pytest.mark.slow
def test_sigterm_stops_at_a_checkpoint_with_143_and_leaves_nothing(tmp_path):
    shards = write_shards(tmp_path / "data", [3, 4, 5, 2] * 8, num_shards=4)
    process = start(tmp_path, write_config(tmp_path, shards, steps=100_000))
    deadline = time.monotonic() + 600
    while (
        max(map(int, re.findall(r"(\d+)/100000", (tmp_path / "stderr.txt").read_text())), default=0)
        < 3
    ):
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143, (tmp_path / "stderr.txt").read_text()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "stopped by SIGTERM at step" in stderr
    checkpoints = sorted((tmp_path / "ckpt").glob("step-*"))
    assert len(checkpoints) == 1 and int(checkpoints[0].name.split("-")[1]) >= 3
    assert_nothing_left(process.pid)


@pytest.mark.slow
def test_a_failed_rank_leaves_no_process_behind(tmp_path):
    # A broken image with max_bad_samples 0 makes a rank fail mid-run.
    shards = write_shards(
        tmp_path / "data", [3, 4, 5, 2] * 8, num_shards=4, bad_images=frozenset({(5, 1), (9, 0)})
    )
    config = write_config(tmp_path, shards, steps=100_000, max_bad_samples=0)
    process = start(tmp_path, config)
    assert process.wait(timeout=400) == 1, (tmp_path / "stderr.txt").read_text()
    assert "data.max_bad_samples=0" in (tmp_path / "stderr.txt").read_text()
    assert_nothing_left(process.pid)
