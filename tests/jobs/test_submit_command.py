"""What `facetrain submit X ...` would run on the cluster, and what it ships (no head needed)."""

import argparse
from pathlib import Path

import pytest
from facetrain.jobs.cli import build_parser
from facetrain.jobs.cli.submit import SUBMIT_DESTS, job_command
from facetrain.jobs.ray.runtime_env import (
    SHIP_EXCLUDES,
    build_runtime_env,
    path_on_cluster,
    project_root,
)

REPO = Path(__file__).resolve().parents[2]


def _local_namespace(command: list[str]) -> dict:
    """The namespace `facetrain <command>` parses to, without functions and submit's keys."""
    parsed = vars(build_parser().parse_args(command))
    return {
        k: v
        for k, v in parsed.items()
        if not callable(v) and k not in SUBMIT_DESTS and not k.startswith("submit_")
    }


@pytest.mark.parametrize(
    "command",
    [
        [
            "prep",
            "/data/raw",
            "--out",
            "/data/shards",
            "--align",
            "none",
            "--shard-size",
            "4",
            "--dry-run",
        ],
        [
            "prep",
            "/data/raw",
            "--out",
            "/data/s",
            "--val-identities",
            "Ann,Bob",
            "--set",
            "seed=-3",
        ],
        [
            "eval",
            "verify",
            "--embeddings",
            "/e.parquet",
            "--pairs",
            "/p.txt",
            "--json",
            "/r.json",
            "--no-mlflow",
        ],
        [
            "train",
            "--config",
            "/etc/facetrain/train.yaml",
            "--set",
            "train.steps=10",
            "--nproc",
            "4",
        ],
    ],
    ids=["prep", "prep-set", "eval-verify", "train"],
)
def test_job_runs_the_same_command_line(command, capsys):
    submitted = build_parser().parse_args(
        ["submit", *command, "--address", "http://127.0.0.1:1", "--no-wait", "--env", "A=1"]
    )
    argv = job_command(submitted, working_dir=None)
    name = command[0]
    assert argv[:3] == ["python", "-m", f"jobs.{name}"]
    assert "--address" not in " ".join(argv) and "--no-wait" not in argv and "--env" not in argv
    # Parsed on the cluster by the same parser, the job's arguments mean what the user typed.
    assert _local_namespace([name, *argv[3:]]) == _local_namespace(command)


def test_typos_fail_before_anything_is_submitted(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "prep", "/d", "--out", "/o", "--shard-sise", "4"])
    assert "--shard-sise" in capsys.readouterr().err


def test_config_inside_the_shipped_checkout_becomes_relative(tmp_path, capsys):
    args = argparse.Namespace(config=str(REPO / "k8s" / "base" / "configs" / "train.yaml"))
    assert path_on_cluster(args.config, REPO) == ("k8s/base/configs/train.yaml", True)
    outside = tmp_path / "mine.yaml"
    assert path_on_cluster(str(outside), REPO) == (str(outside), False)
    assert path_on_cluster("s3://bucket/c.yaml", REPO) == ("s3://bucket/c.yaml", False)


def test_runtime_env_ships_the_checkout_without_heavy_directories():
    assert project_root() == REPO
    env = build_runtime_env(
        "source", None, pip=["facetrain==0.1.0"], env_vars={"OMP_NUM_THREADS": "1"}
    )
    assert env["working_dir"] == str(REPO)
    for heavy in (".venv/", ".git/", "mlruns/", "outputs/"):
        assert heavy in env["excludes"]
    assert env["pip"] == ["facetrain==0.1.0"] and env["env_vars"] == {"OMP_NUM_THREADS": "1"}
    assert "working_dir" not in build_runtime_env("installed")
    with pytest.raises(ValueError, match="expected a facetrain checkout"):
        build_runtime_env("source", Path("/"))


def test_excludes_keep_the_upload_small():
    """What Ray would upload from this checkout (its gitignore-style matching) stays small."""
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO, list(SHIP_EXCLUDES))
    total = 0
    for path in REPO.rglob("*"):
        if any(part in (".venv", ".git") for part in path.relative_to(REPO).parts):
            continue
        if (
            path.is_file()
            and not excluded(path)
            and not any(excluded(p) for p in path.parents if REPO in p.parents)
        ):
            total += path.stat().st_size
    assert total < 50 * 2**20, f"{total / 2**20:.1f} MiB would be uploaded"
