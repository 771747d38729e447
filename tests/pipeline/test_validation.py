"""Validation during training: config, eval mode, 2 ranks vs 1, MLflow curves, best model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.eval import run_verification
from facetrain.pipeline.eval.bin_format import write_bin
from facetrain.pipeline.eval.config import EvalOptions
from facetrain.pipeline.models import backbone_from_config
from pydantic import ValidationError

from tests.dist import run_ranks
from tests.pipeline.eval.helpers import write_face_folder, write_pairs_file
from tests.pipeline.shards import write_shards


def base_config(tmp_path: Path, shards: Path | None = None, **sections) -> TrainConfig:
    raw = {
        "data": {"shards": str(shards or tmp_path), "batch": {"p": 4, "k": 2}, "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 16},
        "loss": [{"type": "softmax"}],
        "train": {"steps": 4, "lr": 0.05, "log_every": 1},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every": 100},
        "mlflow": {"enabled": False},
    }
    raw.update(sections)
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def face_set(tmp_path_factory) -> dict:
    """A folder of aligned faces, its pairs file, and the same pairs as a .bin."""
    root = tmp_path_factory.mktemp("valset")
    write_face_folder(root / "images", identities=8, per_identity=4)
    pairs = write_pairs_file(root / "pairs.txt", identities=8, per_identity=4)
    from facetrain.pipeline.eval.pairs import read_pairs

    pair_list = read_pairs(pairs)
    images = [
        (root / "images" / key).read_bytes()
        for pair in zip(pair_list.keys_a, pair_list.keys_b, strict=True)
        for key in pair
    ]
    bin_path = write_bin(root / "faces.bin", images, pair_list.is_same)
    return {"images": root / "images", "pairs": pairs, "bin": bin_path}


# ---------------------------------------------------------------- config


def test_the_documented_eval_section_parses(tmp_path):
    section = yaml.safe_load(
        "{every: 500, sets: [{name: lfw, bin: lfw.bin}, {name: heldout, pairs: pairs.txt,"
        " images: DIR, landmarks: FILE}]}"
    )
    cfg = base_config(tmp_path, eval=section)
    assert cfg.eval.every == 500 and cfg.eval.flip and cfg.eval.batch_size == 64
    assert [s.name for s in cfg.eval.sets] == ["lfw", "heldout"]
    assert cfg.eval.sets[1].landmarks == "FILE"
    assert cfg.eval.selected == ("lfw", "accuracy")
    assert cfg.register == "best"
    assert base_config(tmp_path).register == "last"
    last = base_config(tmp_path, eval=section, mlflow={"register": "last"})
    assert last.register == "last" and last.model_dump()["mlflow"]["register"] == "last"
    with pytest.raises(ValidationError, match="mlflow.register=best needs an eval section"):
        base_config(tmp_path, mlflow={"register": "best"})


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"sets": [{"name": "x", "pairs": "p.txt"}]}, "exactly one of `images: DIR`"),
        ({"sets": [{"name": "x", "bin": "a.bin", "pairs": "p.txt"}]}, "either `bin: FILE`"),
        ({"sets": [{"name": "x", "bin": "a.bin"}], "select": "y/accuracy"}, "eval.select='y/accuracy'"),
        ({"sets": [{"name": "x", "bin": "a.bin"}], "select": "x/acc"}, "eval.select='x/acc'"),
        ({"sets": [{"name": "x", "bin": "a"}, {"name": "x", "bin": "b"}]}, "['x'] appear more"),
    ],
)
def test_bad_eval_sections_name_the_problem(tmp_path, section, expected):
    with pytest.raises(ValidationError, match=None) as err:
        base_config(tmp_path, eval=section)
    assert expected in str(err.value)


# ---------------------------------------------------------------- one evaluation


def fake_trainer(backbone, rank=0, world_size=1, group=None):
    return SimpleNamespace(
        backbone=backbone,
        device=torch.device("cpu"),
        precision="fp32",
        rank=rank,
        world_size=world_size,
        group=group,
        step=0,
        extra_state={},
    )


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    from facetrain.pipeline.config import ModelConfig

    torch.manual_seed(seed)
    model = backbone_from_config(ModelConfig(backbone="tiny", embedding_size=16))
    # Non-trivial running statistics, so that a forward pass in train mode would move them.
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 112, 112))
    return model


def evaluate_once(cfg: TrainConfig, trainer) -> dict:
    from facetrain.pipeline.train.validation import ValidationHook

    hook = ValidationHook(cfg, progress=False)
    hook.on_start(trainer)
    results = hook.evaluate(trainer)
    local_rows = {name: len(s.local.keys) for name, s in zip(results, hook.sets, strict=True)}
    return {
        "summaries": {name: v.summary for name, v in results.items()},
        "local_rows": local_rows,
    }


def eval_section(face_set: dict, batch_size: int = 5) -> dict:
    return {
        "every": 2,
        "batch_size": batch_size,
        "sets": [
            {"name": "folder", "pairs": str(face_set["pairs"]), "images": str(face_set["images"])},
            {"name": "packed", "bin": str(face_set["bin"])},
        ],
    }


def test_evaluation_runs_in_eval_mode_and_leaves_batchnorm_untouched(tmp_path, face_set):
    cfg = base_config(tmp_path, eval=eval_section(face_set))
    model = tiny_backbone()
    model.train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    result = evaluate_once(cfg, fake_trainer(model))
    assert model.training, "the backbone must be put back in train mode"
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), f"{name} changed during evaluation"

    # Independent reference: the `facetrain eval verify` path on the model in eval mode.
    options = EvalOptions(batch_size=7, workers=1, progress=False, device="cpu")
    reference = run_verification(
        model.eval(), pairs=face_set["pairs"], images=face_set["images"], options=options
    ).summary
    for name in ("folder", "packed"):
        summary = result["summaries"][name]
        for figure in ("accuracy", "accuracy_std", "auc", "eer"):
            assert summary[figure] == pytest.approx(reference[figure], abs=1e-9), (name, figure)
        assert summary["pairs"] == reference["pairs"] == 48


def _evaluate_on_rank(rank: int, world_size: int, cfg_json: str) -> dict:
    import torch.distributed as dist

    cfg = TrainConfig.model_validate_json(cfg_json)
    return evaluate_once(cfg, fake_trainer(tiny_backbone(), rank, world_size, dist.group.WORLD))


@pytest.mark.slow
def test_two_ranks_share_the_embedding_and_match_one_process(tmp_path, face_set):
    cfg = base_config(tmp_path, eval=eval_section(face_set, batch_size=4))
    single = evaluate_once(cfg, fake_trainer(tiny_backbone()))
    ranks = run_ranks(_evaluate_on_rank, 2, cfg.model_dump_json())
    for name in ("folder", "packed"):
        total = single["local_rows"][name]
        # Each rank decoded and embedded only its half of the images.
        assert [r["local_rows"][name] for r in ranks] == [total // 2, total - total // 2]
        for rank in ranks:
            for figure in ("accuracy", "accuracy_std", "auc", "eer", "tar_at_far"):
                assert rank["summaries"][name][figure] == pytest.approx(
                    single["summaries"][name][figure], abs=1e-6
                ), (name, figure)


# ---------------------------------------------------------------- in training


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("val-shards"), [4] * 8, num_shards=2)


@pytest.mark.slow
def test_training_logs_val_curves_keeps_the_best_and_registers_it(tmp_path, face_set, shards):
    import mlflow
    from facetrain.pipeline.train.checkpoint import find_checkpoint
    from facetrain.pipeline.train.loop import run_rank

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = base_config(
        tmp_path,
        shards,
        eval={**eval_section(face_set), "select": "packed/auc"},
        train={"steps": 5, "lr": 0.05, "log_every": 1},
        checkpoint={"dir": str(tmp_path / "ckpt"), "every": 4},
        mlflow={"tracking_uri": uri, "experiment": "val", "registered_model": "val-test"},
    )
    summary = run_rank(cfg, progress=False)
    client = mlflow.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(summary["mlflow_run_id"], "val/folder/accuracy")
    # Evaluations after steps 2 and 4 and at the end (5), at the index of their last step.
    assert [m.step for m in history] == [1, 3, 4]
    aucs = [
        m.value for m in client.get_metric_history(summary["mlflow_run_id"], "val/packed/auc")
    ]
    for key in ("accuracy_std", "auc", "eer", "tar_at_far_1e-3"):
        assert client.get_metric_history(summary["mlflow_run_id"], f"val/folder/{key}")
    best_step = [2, 4, 5][int(np.argmax(aucs))]  # the first of equal values stays best
    assert summary["best"]["step"] == best_step and summary["best"]["value"] == max(aucs)
    best = find_checkpoint(tmp_path / "ckpt" / "best")
    assert best is not None and best.name == f"step-{best_step:08d}"
    version = client.get_model_version("val-test", "1")
    assert version.tags["facetrain.weights"] == "best"
    assert float(version.tags["val/packed/auc"]) == pytest.approx(max(aucs), rel=1e-5)
    assert version.tags["facetrain.best_step"] == str(best_step)
    # The checkpoint of step 4 holds the verdict of the evaluation at step 4 (for a resume).
    from facetrain.pipeline.train.checkpoint import load_replicated

    _, replicated = load_replicated(tmp_path / "ckpt" / "step-00000004")
    verdict = replicated["extra"]["validation"]
    assert verdict["best_step"] == [2, 4][int(np.argmax(aucs[:2]))]
    assert verdict["best"] == max(aucs[:2])


@pytest.mark.parametrize(
    ("metric", "values", "best_step", "stop_step"),
    [
        ("auc", [0.5, 0.7, 0.6, 0.7, 0.9], 2, 4),  # an equal value is no improvement
        ("eer", [0.3, 0.2, 0.25, 0.1, 0.3, 0.3], 4, 6),  # lower is better
    ],
)
def test_best_and_patience_follow_the_selected_figure(
    tmp_path, face_set, monkeypatch, metric, values, best_step, stop_step
):
    from facetrain.pipeline.eval.verify import Verification
    from facetrain.pipeline.train import validation

    saved = []
    monkeypatch.setattr(validation, "save_best", lambda trainer, cfg: saved.append(trainer.step))
    cfg = base_config(
        tmp_path, eval={**eval_section(face_set), "patience": 2, "select": f"packed/{metric}"}
    )
    hook = validation.ValidationHook(cfg, progress=False)
    trainer = fake_trainer(None)
    figures = {"accuracy": 0.5, "accuracy_std": 0.0, "auc": 0.5, "eer": 0.5, "tar_at_far": {}}
    for step, value in enumerate(values, start=1):
        trainer.step = step
        summary = {**figures, metric: value}
        hook.results = {"packed": Verification(summary, np.zeros(1), np.zeros(1, dtype=bool))}
        hook._select(trainer)
        if hook.stop_requested:
            break
    assert trainer.step == stop_step
    seen = values[:stop_step]
    assert saved[-1] == best_step
    assert trainer.extra_state["validation"]["best"] == (min(seen) if metric == "eer" else max(seen))


def test_a_prep_val_split_serves_the_pairs_by_source_path(tmp_path, face_set):
    """`{pairs, shards}`: the faces prep aligned into the `val` split, found by source path."""
    import json

    from facetrain.data_prep.shard_format import (
        DATASET_FILE,
        IMAGE_KEY,
        LABEL_KEY,
        PROVENANCE_KEY,
        SHARDS_DIR,
        DatasetManifest,
    )
    from facetrain.data_prep.tar_writer import ShardTarWriter
    from facetrain.pipeline.eval.valsets import decode_faces, pair_set

    images = face_set["images"]
    keys = sorted(path.relative_to(images).as_posix() for path in images.rglob("*.jpg"))
    (tmp_path / SHARDS_DIR).mkdir()
    with open(tmp_path / SHARDS_DIR / "val-000000.tar", "wb") as stream:
        writer = ShardTarWriter(stream)
        writer.write_samples(
            (
                f"val_{index:06d}_0000",
                {
                    LABEL_KEY: str(index).encode(),
                    IMAGE_KEY: (face_set["images"] / key).read_bytes(),
                    PROVENANCE_KEY: json.dumps({"source": key}).encode(),
                },
            )
            for index, key in enumerate(keys[1:])  # the first image was rejected by prep
        )
        writer.close()
    manifest = DatasetManifest.model_validate(
        {"num_classes": 0, "splits": {"val": {"shards": [
            {"name": "val-000000.tar", "samples": len(keys) - 1, "identities": len(keys) - 1}]}}}
    )  # fmt: skip
    (tmp_path / DATASET_FILE).write_text(manifest.to_json())

    from_shards = pair_set("val", pairs=face_set["pairs"], shards=tmp_path)
    from_folder = pair_set("val", pairs=face_set["pairs"], images=face_set["images"])
    decoded = decode_faces(from_shards.source, from_shards.keys)
    reference = decode_faces(from_folder.source, from_folder.keys)
    assert list(decoded.failures) == [keys[0]] and "not in the split" in decoded.failures[keys[0]]
    for key, face in zip(decoded.keys, decoded.faces, strict=True):
        assert np.array_equal(face, reference.faces[reference.keys.index(key)]), key
