"""Shipped recipes: `facetrain configs list|show`, and `--config NAME` in every command."""

from pathlib import Path

import pytest
import yaml
from facetrain.jobs.cli import main
from facetrain.jobs.cli.config import ConfigError, find_config, load_config, read_yaml
from facetrain.pipeline.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
# The independent reference: the YAML files in the repository's configs/ folder.
RECIPE_FILES = {path.stem: path for path in sorted((REPO / "configs").glob("*.yaml"))}
UNKNOWN = "no-such-recipe"

# Every command that takes --config, with arguments that reach its config loading first.
WITH_CONFIG = {
    "prep": ["prep", "/raw", "--out", "/shards"],
    "train": ["train"],
    "eval verify": ["eval", "verify", "--embeddings", "/e.parquet", "--pairs", "/p.txt"],
    "eval cluster": ["eval", "cluster", "--embeddings", "/e.parquet"],
    "eval identify": ["eval", "identify", "--embeddings", "/e.parquet"],
    "embed": ["embed", "--model", "m", "--images", "/i", "--out", "/e.parquet"],
    "demo": ["demo", "--out", "/nonexistent/demo-out"],
}


def _first_comment(path: Path) -> str:
    line = next(line for line in path.read_text().splitlines() if line.startswith("#"))
    return line.lstrip("# ").strip()


def test_list_names_every_shipped_recipe_with_its_first_comment(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one row per recipe, nothing wrapped
    assert len(RECIPE_FILES) >= 5
    assert main(["configs", "list"]) == 0
    rows = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert {name: text.strip() for name, text in rows} == {
        name: _first_comment(path) for name, path in RECIPE_FILES.items()
    }


@pytest.mark.parametrize("spelling", ["cpu-asoftmax", "cpu-asoftmax.yaml"])
def test_show_prints_the_recipe_verbatim(spelling, capsys):
    assert main(["configs", "show", spelling]) == 0
    assert capsys.readouterr().out == RECIPE_FILES["cpu-asoftmax"].read_text()


def test_show_of_an_unknown_name_is_one_line_listing_the_names(capsys):
    assert main(["configs", "show", UNKNOWN]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and UNKNOWN in err
    assert all(name in err for name in RECIPE_FILES)


@pytest.mark.parametrize("spelling", ["gpu-iresnet50-asoftmax", "gpu-iresnet50-asoftmax.yaml"])
def test_config_name_loads_the_shipped_recipe(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    by_name = load_config(TrainConfig, spelling, ["train.steps=3"])
    by_path = load_config(TrainConfig, RECIPE_FILES["gpu-iresnet50-asoftmax"], ["train.steps=3"])
    assert by_name == by_path and by_name.train.steps == 3


def test_an_existing_file_wins_over_a_recipe_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cpu-asoftmax.yaml").write_text("mine: true\n")
    assert read_yaml("cpu-asoftmax.yaml") == {"mine": True}
    assert read_yaml("cpu-asoftmax") == yaml.safe_load(RECIPE_FILES["cpu-asoftmax"].read_text())


def test_a_missing_path_is_never_taken_for_a_recipe(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        find_config(tmp_path / "cpu-asoftmax.yaml")
    with pytest.raises(ConfigError, match="not found"):
        find_config("configs-elsewhere/cpu-asoftmax.yaml")


@pytest.mark.parametrize("command", WITH_CONFIG.values(), ids=WITH_CONFIG.keys())
def test_every_command_names_the_recipes_for_an_unknown_config(command, capsys):
    assert main([*command, "--config", UNKNOWN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"facetrain {command[0]}: error: config {UNKNOWN}: ")
    assert all(name in err for name in RECIPE_FILES)


@pytest.mark.parametrize("command", WITH_CONFIG.values(), ids=WITH_CONFIG.keys())
def test_every_command_with_config_says_it_takes_a_name(command, capsys):
    with pytest.raises(SystemExit):
        main([*command[: 2 if command[0] == "eval" else 1], "--help"])
    assert "--config FILE|NAME" in capsys.readouterr().out


def test_prep_reads_the_prep_recipe_by_name():
    from facetrain.data_prep.config import PrepConfig
    from facetrain.jobs.cli import parse_args
    from facetrain.jobs.cli.prep import build_config

    args = parse_args(["prep", "/raw", "--out", "/shards", "--config", "prep"])
    expected = load_config(
        PrepConfig, None, base={**read_yaml(RECIPE_FILES["prep"]), "source": "/raw", "out": "/shards"}
    )
    assert build_config(args) == expected
