"""Ray entrypoints attach to the cluster of the job they run in, unless told otherwise."""

import pytest
from facetrain.jobs.ray.entrypoint import with_cluster_address


def test_inside_a_ray_job_the_cluster_is_used(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert with_cluster_address(["src", "--out", "o"], "--ray-address") == [
        "src",
        "--out",
        "o",
        "--ray-address",
        "auto",
    ]


def test_a_given_address_is_kept_in_either_spelling(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    for argv in (["s", "--ray-address", "ray://x:10001"], ["s", "--ray-address=ray://x:10001"]):
        assert with_cluster_address(argv, "--ray-address") == argv


def test_outside_a_ray_job_nothing_is_added(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert with_cluster_address(["s", "--out", "o"], "--ray-address") == ["s", "--out", "o"]


@pytest.fixture
def no_dispatcher(monkeypatch):
    """Make the `facetrain` dispatcher unusable: an entrypoint must not need it."""
    import facetrain.jobs.cli as cli

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray entrypoint went through the facetrain dispatcher")

    monkeypatch.setattr(cli, "main", refuse)
    monkeypatch.setattr(cli, "build_parser", refuse)
    monkeypatch.setattr(cli, "parse_args", refuse)


def test_prep_entrypoint_runs_the_prep_command_on_the_jobs_cluster(monkeypatch, no_dispatcher):
    from facetrain.jobs.cli import prep as command
    from facetrain.jobs.ray import prep as entrypoint

    seen = []
    monkeypatch.setattr(command, "run", lambda args: seen.append(args) or 7)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert entrypoint.main(["/raw faces", "--out=/s", "--set", "seed=3"]) == 7
    (args,) = seen
    assert (args.source, args.out, args.overrides) == ("/raw faces", "/s", ["seed=3"])
    assert args.ray_address == "auto"


def test_entrypoints_keep_the_commands_exit_codes_and_messages(no_dispatcher, tmp_path, capsys):
    from facetrain.jobs.ray import eval as eval_entrypoint
    from facetrain.jobs.ray import prep as prep_entrypoint

    assert prep_entrypoint.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "facetrain prep: error: SOURCE is required (an image-folder root or a .rec file)"
    )
    missing = tmp_path / "none.parquet"
    code = eval_entrypoint.main(
        ["verify", "--embeddings", str(missing), "--pairs", str(tmp_path / "p.txt"), "--no-mlflow"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("facetrain eval: error: ") and "none.parquet" in err
    # A typo is argparse's exit 2, naming the command and the word.
    with pytest.raises(SystemExit) as exit_info:
        prep_entrypoint.main(["/raw", "--out", "/s", "--shard-sise", "4"])
    assert exit_info.value.code == 2
    assert "facetrain prep: error: unrecognized arguments: --shard-sise" in capsys.readouterr().err


def test_train_entrypoint_names_an_unknown_recipe(no_dispatcher, capsys):
    from facetrain.jobs.ray import train as entrypoint

    assert entrypoint.main(["--config", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facetrain.jobs.ray.train: error: config no-such-recipe: ")
    assert "cpu-asoftmax" in err and len(err.strip().splitlines()) == 1
