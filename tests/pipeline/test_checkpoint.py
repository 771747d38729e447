"""Checkpoints: exact resume on the same N, resharded resume on another N, atomic writes."""

import contextlib
import json
import shutil

import pytest
import torch
from facetrain.pipeline.train import checkpoint

from tests.dist import run_ranks
from tests.pipeline.shards import write_shards


class Interrupted(Exception):
    pass


def make_config(shards, ckpt_dir, steps):
    from facetrain.pipeline.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "data": {
                "shards": str(shards),
                "batch": {"p": 3, "k": 2},
                "workers": 1,
                "buffer_identities": 6,
            },
            "model": {"backbone": "tiny", "embedding_size": 8, "dropout": 0.2},
            "loss": [{"type": "asoftmax", "margin": 2}, {"type": "triplet", "weight": 0.5}],
            "train": {"steps": steps, "lr": 0.05, "warmup_steps": 2, "seed": 1},
            "checkpoint": {"dir": str(ckpt_dir), "every": 3, "keep": 5},
            "mlflow": {"enabled": False},
        }
    )


def train(rank, world_size, shards, ckpt_dir, steps, stop_after=None):
    """Run the real loop; record each step's loss; optionally die right after a step."""
    from facetrain.pipeline.train.hooks import Hook
    from facetrain.pipeline.train.loop import run_rank

    losses = {}

    class Record(Hook):
        def after_step(self, trainer, out):
            losses[out.step] = out.loss
            if stop_after is not None and trainer.step == stop_after:
                raise Interrupted
            self.trainer = trainer

    recorder = Record()
    with contextlib.suppress(Interrupted):
        run_rank(make_config(shards, ckpt_dir, steps), extra_hooks=[recorder], progress=False)
    return losses


def restored_state(trainer):
    """What a checkpoint must carry over, gathered to full tensors (a collective call)."""
    from facetrain.losses import merge_shards

    asoftmax = trainer.objective.terms["asoftmax"]
    world_size = trainer.world_size
    states, moms = [None] * world_size, [None] * world_size
    torch.distributed.all_gather_object(states, asoftmax.shard_state())
    torch.distributed.all_gather_object(
        moms, trainer.head_optimizer.state[asoftmax.weight]["momentum_buffer"]
    )
    return {
        "step": trainer.step,
        "backbone": {k: v.clone() for k, v in trainer.backbone.state_dict().items()},
        "weight": merge_shards(states)["weight"],
        "momentum": torch.cat(moms),
        "iteration": int(asoftmax.iteration),
    }


def restore(shards, ckpt_dir):
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.hooks import CheckpointHook
    from facetrain.pipeline.train.trainer import Trainer

    cfg = make_config(shards, ckpt_dir, 6)
    trainer = Trainer(cfg, 32, world_group())
    assert CheckpointHook(cfg).restore(trainer)
    return restored_state(trainer)


def straight_killed_resumed(rank, world_size, shards, root):
    """Three runs in the same two ranks: uninterrupted, killed after step 3, resumed."""
    straight = train(rank, world_size, shards, root / "straight", 6)
    killed = train(rank, world_size, shards, root / "killed", 6, stop_after=3)
    at_kill = restore(shards, root / "killed")
    resumed = train(rank, world_size, shards, root / "killed", 6)
    return straight, killed, resumed, at_kill


def restore_then_continue(rank, world_size, shards, root):
    return restore(shards, root / "other"), train(rank, world_size, shards, root / "other", 8)


@pytest.mark.slow
def test_resume_same_world_continues_exactly_and_other_world_reshards(tmp_path):
    shards = write_shards(tmp_path / "data", [2, 3, 4, 5] * 8, num_shards=4)
    straight, killed, resumed, at_kill = run_ranks(straight_killed_resumed, 2, shards, tmp_path)[0]
    assert sorted(killed) == [0, 1, 2] and sorted(resumed) == [3, 4, 5]
    assert [resumed[s] for s in (3, 4, 5)] == [straight[s] for s in (3, 4, 5)]  # exact, not close
    final_straight = checkpoint.load_backbone(tmp_path / "straight").state_dict()
    final_resumed = checkpoint.load_backbone(tmp_path / "killed").state_dict()
    for name, value in final_straight.items():
        assert torch.equal(final_resumed[name], value), name

    # One rank picks up the two-rank checkpoint of step 3: same weights, rows, momentum, lambda.
    shutil.copytree(tmp_path / "killed" / "step-00000003", tmp_path / "other" / "step-00000003")
    assert checkpoint.find_checkpoint(tmp_path / "other").name == "step-00000003"
    rows = sorted(
        checkpoint.load_shards(tmp_path / "other" / "step-00000003"), key=lambda s: s["class_start"]
    )
    assert [s["num_local_classes"] for s in rows] == [16, 16]
    state, continued = run_ranks(restore_then_continue, 1, shards, tmp_path)[0]
    assert state["step"] == at_kill["step"] == 3 and state["iteration"] == at_kill["iteration"] == 3
    for name, value in at_kill["backbone"].items():
        assert torch.equal(state["backbone"][name], value), name
    assert torch.equal(state["weight"], at_kill["weight"])
    assert torch.equal(state["momentum"], at_kill["momentum"])
    assert sorted(continued) == [3, 4, 5, 6, 7]
    net = checkpoint.load_backbone(tmp_path / "other")
    assert not net.training and net(torch.zeros(2, 3, 112, 112)).shape == (2, 8)


def _save(root, step, payload=1.0):
    return checkpoint.save_checkpoint(
        root,
        step,
        rank=0,
        world_size=1,
        barrier=lambda: None,
        config={"step": step},
        backbone_state={"w": torch.full((4,), payload)},
        replicated={"step": step},
        shard={
            "class_start": 0,
            "num_local_classes": 2,
            "num_classes": 2,
            "tensors": {"x.weight": torch.ones(2, 3)},
        },
        rank_local={},
        keep=3,
    )


def test_a_checkpoint_killed_mid_write_is_never_loaded(tmp_path, monkeypatch):
    first = _save(tmp_path, 3)
    assert checkpoint.find_checkpoint(tmp_path) == first

    real_save = torch.save

    def dies_on_state(obj, path, *args, **kwargs):
        if str(path).endswith("state.pt"):
            real_save(obj, path, *args, **kwargs)
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_on_state)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 6)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / ".tmp-step-00000006").is_dir()  # the half-written staging folder...
    assert checkpoint.find_checkpoint(tmp_path) == first  # ...is ignored

    # A step folder whose files do not match meta.json (truncated, or a stale `latest`).
    second = _save(tmp_path, 9, payload=2.0)
    with open(second / "backbone.pt", "r+b") as handle:
        handle.truncate(10)
    assert not checkpoint.is_complete(second)
    assert checkpoint.find_checkpoint(tmp_path) == first
    (tmp_path / "latest").write_text(json.dumps({"checkpoint": "step-00000042"}))
    assert checkpoint.find_checkpoint(tmp_path) == first
    with pytest.raises(ValueError, match="incomplete"):
        checkpoint.find_checkpoint(second)


def test_keep_prunes_old_checkpoints(tmp_path):
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000003",
        "step-00000004",
        "step-00000005",
    ]


def zero_stage_round_trip(rank, world_size):
    """Save under one ZeRO stage / optimizer, restore under another; next steps must agree."""
    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.trainer import Trainer

    def config(stage, optimizer):
        return TrainConfig.model_validate(
            {
                "data": {"shards": "unused", "batch": {"p": 4, "k": 2}},
                "model": {"backbone": "tiny", "embedding_size": 16},
                "loss": [{"type": "softmax"}],
                "train": {
                    "zero_stage": stage,
                    "lr": 0.05,
                    "optimizer": optimizer,
                    "schedule": "constant",
                },
            }
        )

    generator = torch.Generator().manual_seed(rank)
    batches = [
        (torch.rand(8, 3, 112, 112, generator=generator) * 2 - 1, torch.arange(8) % 10)
        for _ in range(3)
    ]
    results = []
    for saved_stage, loaded_stage, optimizer in [(2, 0, "sgd"), (0, 2, "sgd"), (1, 2, "adamw")]:
        original = Trainer(config(saved_stage, optimizer), 10, world_group())
        for images, labels in batches[:2]:
            original.train_step(images, labels)
        state = checkpoint.RankState.capture(original)
        restored = Trainer(config(loaded_stage, optimizer), 10, world_group())
        checkpoint.RankState.apply(restored, state.backbone, state.replicated, [state.shard], None)
        again = checkpoint.RankState.capture(restored).replicated["backbone_optimizer"]
        results.append(
            {
                "state": state.replicated["backbone_optimizer"],
                "again": again,
                "next": (
                    original.train_step(*batches[2]).loss,
                    restored.train_step(*batches[2]).loss,
                ),
                "weights": [
                    (a.detach().clone(), b.detach().clone())
                    for a, b in zip(
                        original.backbone.parameters(), restored.backbone.parameters(), strict=True
                    )
                ],
            }
        )
    return results


@pytest.mark.slow
def test_optimizer_state_moves_between_zero_stages():
    for result in run_ranks(zero_stage_round_trip, 1)[0]:
        saved, loaded = result["state"], result["again"]
        assert saved["step"] == loaded["step"]
        for name, entry in saved["params"].items():
            assert entry and entry.keys() == loaded["params"][name].keys()
            for key, value in entry.items():
                assert torch.equal(value, loaded["params"][name][key]), (name, key)
        assert result["next"][0] == pytest.approx(result["next"][1], rel=1e-6)
        for before, after in result["weights"]:
            torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)
