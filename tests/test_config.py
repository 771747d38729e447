import pytest
import yaml
from facetrain.jobs.cli.config import ConfigError, apply_overrides, load_config, save_resolved
from pydantic import BaseModel, ConfigDict


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 10
    lr: float = 0.1


class Root(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "run"
    train: Inner = Inner()


def test_file_then_overrides_win_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ntrain: {steps: 5}\n")
    cfg = load_config(Root, path, ["train.lr=0.5", "train.steps=7"])
    assert (cfg.name, cfg.train.steps, cfg.train.lr) == ("a", 7, 0.5)


def test_overrides_parse_yaml_scalars_and_create_sections():
    tree = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=true", "e=text"])
    assert tree == {"a": {"b": 3, "c": [1, 2]}, "d": True, "e": "text"}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.stepz'"):
        load_config(Root, None, ["train.stepz=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"key 'train\.steps'.*integer.*'abc'"):
        load_config(Root, None, ["train.steps=abc"])


def test_malformed_override_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Root, None, ["train.steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "nope.yaml")
    path = tmp_path / "c.yaml"
    path.write_text("name: a\n")
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Root, path, ["name.x=1"])


def test_saved_resolved_config_round_trips(tmp_path):
    cfg = load_config(Root, None, ["train.steps=3"])
    path = save_resolved(cfg, tmp_path / "out" / "config.yaml")
    assert Root.model_validate(yaml.safe_load(path.read_text())) == cfg


def test_integer_parts_index_lists_without_touching_the_original():
    tree = {"loss": [{"type": "softmax", "weight": 1.0}, {"type": "triplet", "weight": 0.5}]}
    updated = apply_overrides(tree, ["loss.1.weight=0.25", "loss.0.extra.depth=2"])
    assert updated["loss"][1]["weight"] == 0.25
    assert updated["loss"][0]["extra"] == {"depth": 2}
    assert tree["loss"][1]["weight"] == 0.5


def test_bad_list_index_is_named():
    tree = {"loss": [{"type": "softmax"}]}
    with pytest.raises(ConfigError, match="loss has 1 entries, no index 3"):
        apply_overrides(tree, ["loss.3.weight=1"])
    with pytest.raises(ConfigError, match="loss is a list; expected an index"):
        apply_overrides(tree, ["loss.weight=1"])
