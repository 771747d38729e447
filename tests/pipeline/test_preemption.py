"""Preemption and bad data: SIGTERM stops every rank at one step with a checkpoint, and a
resumed run ends where an uninterrupted one does; an undecodable image is replaced and counted."""

import contextlib
import os
import signal

import pytest
import torch

from tests.dist import run_ranks
from tests.pipeline.shards import write_shards


def make_config(shards, ckpt_dir, steps, **overrides):
    from facetrain.pipeline.config import TrainConfig

    tree = {
        "data": {"shards": str(shards), "batch": {"p": 3, "k": 2}, "workers": 1},
        "model": {"backbone": "tiny", "embedding_size": 8, "dropout": 0.2},
        "loss": [{"type": "asoftmax", "margin": 2}, {"type": "triplet", "weight": 0.5}],
        "train": {"steps": steps, "lr": 0.05, "warmup_steps": 2, "seed": 1, "log_every": 1},
        "checkpoint": {"dir": str(ckpt_dir), "every": 100},
        "mlflow": {"enabled": False},
    }
    for section, values in overrides.items():
        tree[section] = {**tree.get(section, {}), **values}
    return TrainConfig.model_validate(tree)


def final_state(trainer):
    from facetrain.losses import merge_shards

    asoftmax = trainer.objective.terms["asoftmax"]
    states = [None] * trainer.world_size
    torch.distributed.all_gather_object(states, asoftmax.shard_state())
    return {
        "step": trainer.step,
        "backbone": {k: v.clone() for k, v in trainer.backbone.state_dict().items()},
        "weight": merge_shards(states)["weight"],
    }


def train(cfg, signal_rank=None, signal_after=None, rank=0):
    """The real loop; optionally this rank sends itself SIGTERM after a step."""
    from facetrain.pipeline.train.hooks import Hook
    from facetrain.pipeline.train.loop import run_rank
    from facetrain.pipeline.train.signals import TrainingStopped

    class Probe(Hook):
        trainer = None

        def after_step(self, trainer, out):
            self.trainer = trainer
            if rank == signal_rank and trainer.step == signal_after:
                os.kill(os.getpid(), signal.SIGTERM)

    probe = Probe()
    stopped = None
    try:
        run_rank(cfg, extra_hooks=[probe], progress=False)
    except TrainingStopped as err:
        stopped = (err.signum, err.step)
    return probe.trainer, stopped


def sigterm_then_resume(rank, world_size, shards, root):
    from facetrain.pipeline.train import checkpoint

    straight, _ = train(make_config(shards, root / "straight", 6), rank=rank)
    straight_state = final_state(straight)
    cfg = make_config(shards, root / "stopped", 6)
    _, stopped = train(cfg, signal_rank=1, signal_after=2, rank=rank)
    saved = checkpoint.find_checkpoint(cfg.checkpoint.dir)
    resumed, again = train(cfg, rank=rank)
    # The handler is gone once the loop ends: SIGTERM is the default again.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    return {
        "stopped": stopped,
        "saved": saved.name if saved else None,
        "again": again,
        "straight": straight_state,
        "resumed": final_state(resumed),
    }


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_all_at_one_step_and_resume_matches(tmp_path):
    shards = write_shards(tmp_path / "data", [3, 4, 5, 2] * 8, num_shards=4)
    results = run_ranks(sigterm_then_resume, 2, shards, tmp_path)
    for out in results:
        # Rank 1 received it after step 2; both ranks learn of it after step 3's all-reduce.
        assert out["stopped"] == (signal.SIGTERM, 3)
        assert out["saved"] == "step-00000003"
        assert out["again"] is None and out["resumed"]["step"] == 6
        for name, tensor in out["straight"]["backbone"].items():
            assert torch.equal(tensor, out["resumed"]["backbone"][name]), name
        assert torch.equal(out["straight"]["weight"], out["resumed"]["weight"])


def bad_sample_runs(rank, world_size, shards, root):
    from facetrain.pipeline.train.bad_samples import TooManyBadSamples

    tracking = f"sqlite:///{root}/mlflow.db"
    cfg = make_config(
        shards,
        root / "ckpt",
        8,
        mlflow={"enabled": True, "tracking_uri": tracking, "log_model": False},
        data={"max_bad_samples": 1},
    )
    trainer, _ = train(cfg)
    strict = make_config(shards, root / "strict", 8, data={"max_bad_samples": 0})
    error = None
    with contextlib.suppress(TooManyBadSamples):
        try:
            train(strict)
        except TooManyBadSamples as err:
            error = str(err)
            raise
    return {
        "step": trainer.step,
        "run_id": trainer.extra_state["mlflow_run_id"],
        "bad": trainer.extra_state["bad_samples"],
        "error": error,
        "tracking": tracking,
    }


@pytest.mark.slow
def test_a_garbage_jpeg_is_replaced_counted_once_and_named_with_its_shard(tmp_path):
    import mlflow

    # Label 1 has two images, one broken: every draw of it needs the other as a stand-in.
    shards = write_shards(
        tmp_path / "data", [3, 2, 4, 3, 3, 4], num_shards=1, bad_images=frozenset({(1, 0)})
    )
    out = run_ranks(bad_sample_runs, 1, shards, tmp_path)[0]
    assert out["step"] == 8
    assert len(out["bad"]) == 1
    assert out["bad"][0].startswith("train-000000.tar/00001_0000: cannot decode image")
    history = mlflow.MlflowClient(out["tracking"]).get_metric_history(
        out["run_id"], "data/bad_samples"
    )
    assert len(history) == 8 and max(m.value for m in history) == 1.0
    assert out["error"] is not None
    assert "more than data.max_bad_samples=0" in out["error"]
    assert "train-000000.tar/00001_0000" in out["error"]
