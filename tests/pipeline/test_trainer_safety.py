"""Non-finite steps are skipped and bounded; MLflow never stops training; models are logged.

One spawned rank runs all three scenarios (DeepSpeed start-up is the expensive part).
"""

import logging

import pytest
import torch

from tests.dist import run_ranks
from tests.pipeline.shards import write_shards


def make_config(shards, root, **mlflow):
    from facetrain.pipeline.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "data": {
                "shards": str(shards),
                "batch": {"p": 3, "k": 2},
                "workers": 0,
                "buffer_identities": 6,
            },
            "model": {"backbone": "tiny", "embedding_size": 8},
            "loss": [{"type": "asoftmax"}, {"type": "triplet", "weight": 0.5}],
            "train": {"steps": 3, "lr": 0.05, "log_every": 1, "max_nonfinite_in_row": 3},
            "checkpoint": {"dir": str(root / "ckpt"), "every": 100},
            "mlflow": {"experiment": "tests", **mlflow},
        }
    )


def snapshot(trainer):
    state = {f"backbone.{k}": v.clone() for k, v in trainer.backbone.state_dict().items()}
    state.update({f"objective.{k}": v.clone() for k, v in trainer.objective.state_dict().items()})
    return state


def nonfinite_scenario(cfg):
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.trainer import NonFiniteLossError, Trainer

    trainer = Trainer(cfg, 12, world_group())
    images = torch.rand(6, 3, 112, 112) * 2 - 1
    labels = torch.tensor([0, 0, 5, 5, 9, 9])
    trainer.train_step(images, labels)
    before = snapshot(trainer)
    poisoned = images.clone()
    poisoned[2, 0, 10, 10] = float("nan")
    nan_step = trainer.train_step(poisoned, labels)
    after_nan = snapshot(trainer)

    real_forward = trainer.objective.forward
    trainer.objective.forward = lambda e, y: (e.sum() * float("inf"), {})
    inf_step = trainer.train_step(images, labels)
    trainer.objective.forward = real_forward
    good_step = trainer.train_step(images, labels)
    after_good = snapshot(trainer)

    error = None
    try:
        for _ in range(3):
            trainer.train_step(poisoned, labels)
    except NonFiniteLossError as err:
        error = str(err)
    unchanged = all(torch.equal(before[k], after_nan[k]) for k in before)
    moved = any(
        not torch.equal(before[k], after_good[k])
        for k in before
        if k.startswith("backbone") and before[k].is_floating_point()
    )
    return {
        "nan_step": (nan_step.skipped, nan_step.reason),
        "inf_step": (inf_step.skipped, inf_step.reason),
        "good_step": good_step.skipped,
        "unchanged": unchanged,
        "moved": moved,
        "skipped": trainer.skipped_steps,
        "step": trainer.step,
        "error": error,
    }


def run_with_tracking(cfg):
    from facetrain.pipeline.train.loop import run_rank

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("facetrain.tracking").addHandler(handler)
    try:
        summary = run_rank(cfg, progress=False)
    finally:
        logging.getLogger("facetrain.tracking").removeHandler(handler)
    return summary, messages


def scenarios(rank, world_size, shards, root):
    unreachable = make_config(shards, root / "down", tracking_uri="http://127.0.0.1:9")
    reachable = make_config(
        shards,
        root / "up",
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        registered_model="tiny-face",
    )
    disabled = make_config(
        shards, root / "off", tracking_uri=f"sqlite:///{root}/off.db", enabled=False
    )
    return {
        "off": run_with_tracking(disabled),
        "nonfinite": nonfinite_scenario(make_config(shards, root / "nan")),
        "down": run_with_tracking(unreachable),
        "up": run_with_tracking(reachable),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    shards = write_shards(root / "data", [2, 3, 4] * 4, num_shards=2)
    return root, run_ranks(scenarios, 1, shards, root)[0]


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_stop_training(results):
    _, out = results
    nonfinite = out["nonfinite"]
    assert nonfinite["nan_step"] == (True, "non-finite embeddings")
    assert nonfinite["inf_step"][0] and nonfinite["inf_step"][1].startswith("non-finite loss")
    assert nonfinite["unchanged"]  # a skipped step touches no weight, centre or lambda counter
    assert nonfinite["good_step"] is False and nonfinite["moved"]
    assert nonfinite["skipped"] == 5 and nonfinite["step"] == 7
    assert "3 non-finite steps in a row" in nonfinite["error"]
    assert "train.max_nonfinite_in_row=3" in nonfinite["error"]


@pytest.mark.slow
def test_unreachable_tracking_server_warns_once_and_training_goes_on(results):
    import json

    root, out = results
    summary, messages = out["down"]
    assert summary["steps"] == 3 and summary["mlflow_run_id"] is None
    assert len([m for m in messages if m.startswith("MLflow")]) == 1, messages
    # ...and says loudly that the model never reached MLflow, and how to send it later.
    assert summary["tracking_lost"].startswith("start_run failed")
    assert "facetrain tracking sync" in summary["mlflow_failed"]
    records = [
        json.loads(line)
        for line in (root / "down" / "ckpt" / "tracking" / "records.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [0, 1, 2]
    assert {"loss", "lr", "loss/asoftmax", "asoftmax/lambda", "triplet/active_fraction"} <= set(
        records[1]["metrics"]
    )

    # ...and the kept records upload later, as a run of their own.
    import mlflow
    from facetrain.pipeline.train.tracking import upload_records

    uri = f"sqlite:///{root}/later.db"
    run_id = upload_records(
        root / "down" / "ckpt" / "tracking" / "records.jsonl", uri, experiment="later"
    )
    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(run_id)
    assert run.data.params["model.backbone"] == "tiny"
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    kept = [(r["step"], r["metrics"]["loss"]) for r in records if r["kind"] == "metrics"]
    assert [(m.step, m.value) for m in history] == kept


@pytest.mark.slow
def test_final_backbone_is_logged_registered_and_loadable(results):
    import mlflow
    from facetrain.pipeline.train.checkpoint import load_backbone

    root, out = results
    summary, messages = out["up"]
    assert not messages
    run_id = summary["mlflow_run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    run = mlflow.get_run(run_id)
    assert (
        run.data.params["model.backbone"] == "tiny" and run.data.params["loss.1.type"] == "triplet"
    )
    assert run.data.tags["world_size"] == "1" and len(run.data.tags["data_manifest_sha256"]) == 16
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2]
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    expected = load_backbone(root / "up" / "ckpt")(faces)
    from facetrain.pipeline.eval import load_model

    for uri in (f"runs:/{run_id}/model", "models:/tiny-face/1"):
        torch.testing.assert_close(load_model(uri).module(faces), expected)


@pytest.mark.slow
def test_tracking_disabled_trains_without_touching_mlflow(results):
    root, out = results
    summary, messages = out["off"]
    assert summary["steps"] == 3
    assert "mlflow_run_id" not in summary
    assert not (root / "off.db").exists()
    assert not (root / "off" / "ckpt" / "tracking").exists()
