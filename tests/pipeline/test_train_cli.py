"""`facetrain train` as a user runs it, and every shipped training config."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from facetrain.jobs.cli.config import load_config
from facetrain.pipeline.config import TrainConfig

from tests.pipeline.shards import write_shards

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIGS = sorted(
    p for p in (REPO / "configs").glob("*.yaml") if p.name.startswith(("cpu-", "gpu-"))
)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.data.batch.p * cfg.data.batch.k >= 32


def test_every_objective_has_a_cpu_config():
    objectives = {tuple(t.type for t in load_config(TrainConfig, p).loss) for p in TRAIN_CONFIGS}
    assert {
        ("softmax",),
        ("asoftmax",),
        ("softmax", "center"),
        ("triplet",),
        ("asoftmax", "triplet"),
        ("arcface",),
        ("cosface",),
    } <= objectives
    for recipe in ("gpu-iresnet50-asoftmax.yaml", "gpu-iresnet50-arcface.yaml"):
        gpu = load_config(TrainConfig, REPO / "configs" / recipe)
        assert gpu.model.backbone == "iresnet50" and gpu.train.precision == "bf16"


def test_margin_terms_build_the_losses_they_name():
    from facetrain.losses import ArcFaceLoss, CombinedMarginLoss, CosFaceLoss
    from facetrain.pipeline.train.objective import Objective

    for term, loss_type, attributes in [
        ({"type": "arcface", "margin": 0.4, "scale": 30}, ArcFaceLoss, {"m2": 0.4}),
        ({"type": "cosface", "margin": 0.3, "scale": 30}, CosFaceLoss, {"m3": 0.3}),
        ({"type": "combined", "m1": 1.0, "m2": 0.3, "m3": 0.2}, CombinedMarginLoss, {"m2": 0.3}),
    ]:
        cfg = TrainConfig.model_validate(
            {"data": {"shards": "x"}, "loss": [term, {"type": "center"}]}
        )
        built = Objective(cfg.loss, num_classes=7, embedding_size=8).terms[term["type"]]
        assert type(built) is loss_type and built.num_local_classes == 7
        assert all(getattr(built, key) == value for key, value in attributes.items())
    with pytest.raises(ValueError, match="at most one classifier term"):
        TrainConfig.model_validate(
            {"data": {"shards": "x"}, "loss": [{"type": "arcface"}, {"type": "cosface"}]}
        )


def facetrain(*args, cwd):
    return subprocess.run(
        [str(Path(sys.executable).parent / "facetrain"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_unknown_config_key_exits_2_naming_it(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"shards": "x"}, "loss": [{"type": "softmax"}]}))
    result = facetrain("train", "--config", str(config), "--set", "train.stepz=3", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.stepz" in lines[0], result.stderr


def test_missing_shards_exit_2_naming_data_shards(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {"shards": str(tmp_path / "nowhere")}, "loss": [{"type": "softmax"}]}
        )
    )
    result = facetrain("train", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "data.shards" in result.stderr and "dataset.json" in result.stderr, result.stderr


@pytest.mark.slow
def test_train_two_ranks_prints_the_mlflow_run(tmp_path):
    shards = write_shards(tmp_path / "shards", [3, 4, 5] * 6, num_shards=4)
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "shards": str(shards),
                    "batch": {"p": 3, "k": 2},
                    "workers": 1,
                    "buffer_identities": 6,
                },
                "model": {"backbone": "tiny", "embedding_size": 16},
                "loss": [{"type": "asoftmax"}, {"type": "triplet", "weight": 0.5}],
                "train": {"steps": 4, "lr": 0.05, "log_every": 2},
                "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 2},
                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "cli"},
            }
        )
    )
    result = facetrain(
        "train", "--config", str(config), "--nproc", "2", "--set", "train.steps=5", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^MLflow run: ([0-9a-f]{32})$", result.stdout, re.MULTILINE)
    assert match, result.stdout

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    run = mlflow.get_run(match.group(1))
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "5"
    assert run.data.tags["world_size"] == "2"
    assert (tmp_path / "ckpt" / "step-00000005" / "meta.json").is_file()
