"""What `facetrain submit X ...` would run on the cluster, and what it ships (no head needed)."""

import shlex
from pathlib import Path

import pytest
from facetrain.jobs.cli import build_parser, parse_args
from facetrain.jobs.cli.submit import config_on_cluster, job_command
from facetrain.jobs.ray.runtime_env import (
    SHIP_EXCLUDES,
    build_runtime_env,
    path_on_cluster,
    project_root,
)

REPO = Path(__file__).resolve().parents[2]
HEAD = "http://127.0.0.1:1"

# What users type after `facetrain submit X [submit options]`: `=` flags, repeated --set,
# values with spaces and leading dashes, absolute paths, nested subcommands.
TYPED = {
    "prep-flags": [
        "prep", "/data/raw faces", "--out=/data/shards", "--align", "none",
        "--shard-size", "4", "--dry-run", "--no-progress",
    ],
    "prep-set": [
        "prep", "/data/raw", "--out", "/data/s", "--val-identities", "Ann,Bob",
        "--set", "seed=-3", "--set", "augment.flip=false", "--set=shard_size=7",
    ],
    "eval-verify": [
        "eval", "verify", "--embeddings", "/e.parquet", "--pairs", "/lfw dir/pairs.txt",
        "--json=/r.json", "--no-mlflow", "--name", "lfw view 2",
    ],
    "train": [
        "train", "--config", "/etc/facetrain/train.yaml", "--set", "train.steps=10",
        "--set", "model.embedding_dim=256", "--nproc=4",
    ],
}  # fmt: skip


def _job_argv(argv: list[str], capsys) -> list[str]:
    """The argv a job runs for `facetrain ARGV`, read back the way Ray's shell does."""
    command = job_command(parse_args(argv), working_dir=None)
    capsys.readouterr()  # a note about --config outside the shipped project is not the point
    return shlex.split(shlex.join(command))


def _local(command: list[str]) -> dict:
    """The namespace `facetrain <command>` parses to locally, without its functions."""
    return {k: v for k, v in vars(build_parser().parse_args(command)).items() if not callable(v)}


@pytest.mark.parametrize("typed", TYPED.values(), ids=TYPED.keys())
@pytest.mark.parametrize(
    "layout",
    ["options-first", "options-last", "with-separator"],
)
def test_job_receives_exactly_what_was_typed(typed, layout, capsys):
    name, command_args = typed[0], typed[1:]
    ours = ["--address", HEAD, "--no-wait", "--env", "A=1 2", "--job-id", "mine"]
    argv = {
        "options-first": ["submit", name, *ours, *command_args],
        "options-last": ["submit", name, *command_args, *ours],
        "with-separator": ["submit", name, *ours, "--", *command_args],
    }[layout]
    job = _job_argv(argv, capsys)
    assert job == ["python", "-m", f"facetrain.jobs.ray.{name}", *command_args]
    # Submit's own options are ours, not the job's.
    parsed = parse_args(argv)
    assert (parsed.submit_address, parsed.submit_no_wait) == (HEAD, True)
    assert (parsed.submit_env, parsed.submit_job_id) == (["A=1 2"], "mine")
    # Parsed on the cluster by the command's parser, they mean what they mean locally.
    assert _local([name, *job[3:]]) == _local(typed)


def test_separator_forwards_what_looks_like_submit_options():
    # After `--` nothing is submit's: the first `--` is dropped, later ones reach the job.
    argv = ["submit", "prep", "--address", HEAD, "--", "--out", "/o", "--", "--env"]
    parsed = parse_args(argv)
    assert parsed.command_args == ["--out", "/o", "--", "--env"]
    assert parsed.submit_env == [] and parsed.command_namespace.source == "--env"


@pytest.mark.parametrize(
    "command_args, wrong",
    [
        (["/d", "--out", "/o", "--shard-sise", "4"], "--shard-sise"),
        (["/d", "--out", "/o", "--align", "arcfce"], "arcfce"),
        # Abbreviations are refused: the job gets the words as typed, --config found by name.
        (["/d", "--out", "/o", "--conf", "c.yaml"], "--conf"),
    ],
)
def test_unusable_command_arguments_fail_here_with_exit_2(command_args, wrong, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["submit", "prep", "--address", HEAD, *command_args])
    assert exit_info.value.code == 2
    assert wrong in capsys.readouterr().err


def test_submit_help_shows_the_forwarding_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["submit", "train", "--help"])
    assert exit_info.value.code == 0
    assert "facetrain submit train [submit options] [--] ARGS..." in capsys.readouterr().out


def test_config_inside_the_shipped_checkout_becomes_relative(tmp_path, capsys):
    inside = str(REPO / "k8s" / "base" / "configs" / "train.yaml")
    assert path_on_cluster(inside, REPO) == ("k8s/base/configs/train.yaml", True)
    outside = tmp_path / "mine.yaml"
    assert path_on_cluster(str(outside), REPO) == (str(outside), False)
    assert path_on_cluster("s3://bucket/c.yaml", REPO) == ("s3://bucket/c.yaml", False)

    forwarded = ["--set", "a=b", "--config", inside, "--nproc", "2", f"--config={inside}"]
    assert config_on_cluster(forwarded, REPO) == [
        "--set", "a=b", "--config", "k8s/base/configs/train.yaml", "--nproc", "2",
        "--config=k8s/base/configs/train.yaml",
    ]  # fmt: skip
    assert capsys.readouterr().err == ""
    # Elsewhere the path is kept, and the user is told it must exist on the cluster.
    assert config_on_cluster(["--config", str(outside)], REPO) == ["--config", str(outside)]
    assert f"--config {outside} is outside the shipped project" in capsys.readouterr().err
    # A shipped recipe's name is found by the job's own facetrain: kept as is, no note.
    assert config_on_cluster(["--config", "cpu-asoftmax"], REPO) == ["--config", "cpu-asoftmax"]
    assert capsys.readouterr().err == ""
    # After `--` a word is a positional value, never an option to rewrite.
    assert config_on_cluster(["--", "--config", inside], REPO) == ["--", "--config", inside]


def test_submitted_config_path_is_relative_in_the_job(capsys):
    inside = str(REPO / "configs" / "cpu-asoftmax.yaml")
    args = parse_args(["submit", "train", "--config", inside, "--nproc", "2"])
    assert job_command(args, REPO)[3:] == ["--config", "configs/cpu-asoftmax.yaml", "--nproc", "2"]


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


def test_local_stores_outputs_checkpoints_and_user_patterns_stay_home(tmp_path):
    """What Ray would upload from a checkout holding every local store and output."""
    from ray._private.runtime_env.packaging import _get_excludes

    checkout = tmp_path / "checkout"
    shipped = ["pyproject.toml", "jobs/cli/x.py", "configs/a.yaml", "docs/notes.md"]
    local = [
        "mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/1/model.bin", ".venv/bin/python",
        "demo-out/report.html", "runs/exp1/latest", "runs/exp1/step-00000003/meta.json",
        "work/ckpt/step-00000010/meta.json", "work/ckpt/step-00000010/backbone.pt",
        "scratch/big.npy",
    ]  # fmt: skip
    for name in shipped + local:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    env = build_runtime_env("source", checkout, excludes=["scratch/"])
    assert {"/runs/exp1/", "/work/ckpt/"} <= set(env["excludes"])
    excluded = _get_excludes(checkout, env["excludes"])

    def uploaded(name):
        path = checkout / name
        return not any(excluded(p) for p in [path, *path.parents] if checkout in p.parents)

    assert [name for name in shipped + local if uploaded(name)] == shipped


def test_submit_takes_exclude_patterns():
    args = parse_args(["submit", "train", "--exclude", "data/", "--exclude=*.npy", "--config", "c.yaml"])
    assert args.submit_exclude == ["data/", "*.npy"]
    assert args.command_args == ["--config", "c.yaml"]
