"""Checkpoints load as plain data only: planted pickles and old-format files are refused,
never unpickled, and `facetrain checkpoint convert` brings an old checkpoint back."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from facetrain.jobs.cli import main
from facetrain.pipeline.train import checkpoint

from tests.dist import run_ranks
from tests.pipeline.planted import WritesMarker
from tests.pipeline.shards import write_shards
from tests.pipeline.test_checkpoint import make_config


def train_three_steps(rank, world_size, shards, ckpt_dir):
    from facetrain.pipeline.train.loop import run_rank

    run_rank(make_config(shards, ckpt_dir, 3), progress=False)


def resume_into_fresh_trainer(rank, world_size, shards, ckpt_dir):
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.hooks import CheckpointHook
    from facetrain.pipeline.train.trainer import Trainer

    cfg = make_config(shards, ckpt_dir, 6)
    trainer = Trainer(cfg, 32, world_group())
    try:
        CheckpointHook(cfg).restore(trainer)
    except checkpoint.UnsafeCheckpointError as err:
        return "refused", str(err)
    return "resumed", trainer.step


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe-ckpt")
    shards = write_shards(root / "data", [2, 3, 4, 5] * 8, num_shards=2)
    run_ranks(train_three_steps, 1, shards, root / "ckpt")
    return shards, root / "ckpt"


def test_every_file_loads_with_weights_only(trained):
    _, ckpt = trained
    step = checkpoint.find_checkpoint(ckpt)
    assert checkpoint.read_meta(step)["format"] == checkpoint.FORMAT
    for path in step.rglob("*.pt"):
        assert isinstance(torch.load(path, weights_only=True), dict), path


def test_rng_states_round_trip_through_plain_data():
    np.random.seed(7)
    random.seed(7)
    saved_numpy = checkpoint.numpy_rng_to_plain(np.random.get_state())
    saved_python = checkpoint.python_rng_to_plain(random.getstate())
    expected = (np.random.rand(5), [random.random() for _ in range(5)])
    np.random.seed(0)
    random.seed(0)
    np.random.set_state(checkpoint.numpy_rng_from_plain(saved_numpy))
    random.setstate(checkpoint.python_rng_from_plain(saved_python))
    assert np.array_equal(np.random.rand(5), expected[0])
    assert [random.random() for _ in range(5)] == expected[1]


def plant_everywhere(step_dir, marker):
    """Replace every .pt with a pickle that would write `marker`, keeping meta.json honest
    about the new sizes (a tamperer who can write the folder can rewrite meta.json too)."""
    meta = checkpoint.read_meta(step_dir)
    for name in list(meta["files"]):
        if name.endswith(".pt"):
            torch.save({"state": WritesMarker(marker)}, step_dir / name)
            meta["files"][name] = (step_dir / name).stat().st_size
    (step_dir / "meta.json").write_text(json.dumps(meta))


def test_planted_pickles_are_refused_by_every_load_path(trained, tmp_path):
    from facetrain.pipeline.eval.bin_format import encode_image, write_bin
    from facetrain.pipeline.eval.model_ref import load_model

    shards, ckpt = trained
    tampered = tmp_path / "tampered"
    shutil.copytree(ckpt, tampered)
    marker = tmp_path / "marker"
    plant_everywhere(checkpoint.find_checkpoint(tampered), marker)

    with pytest.raises(checkpoint.UnsafeCheckpointError, match="backbone.pt"):
        checkpoint.load_backbone(tampered)
    with pytest.raises(ValueError, match="facetrain checkpoint convert"):
        load_model(str(tampered))
    outcome, message = run_ranks(resume_into_fresh_trainer, 1, shards, tampered)[0]
    assert outcome == "refused" and "facetrain checkpoint convert" in message
    pairs = write_bin(
        tmp_path / "pairs.bin", [encode_image(np.zeros((112, 112, 3), np.uint8))] * 2, [True]
    )
    verdict = main(["eval", "verify", "--model", str(tampered), "--bin", str(pairs), "--no-mlflow"])
    assert verdict == 2
    assert not marker.exists()


def make_old_format(step_dir):
    """What facetrain wrote before: numpy RNG state as a tuple holding an ndarray, no format."""
    rank_file = step_dir / "ranks" / "rank-00000.pt"
    state = torch.load(rank_file, weights_only=True)
    state["numpy"] = np.random.get_state()
    state["python"] = random.getstate()
    torch.save(state, rank_file)
    meta = checkpoint.read_meta(step_dir)
    del meta["format"]
    meta["files"]["ranks/rank-00000.pt"] = rank_file.stat().st_size
    (step_dir / "meta.json").write_text(json.dumps(meta))


def test_old_format_is_refused_then_converted_after_confirmation(trained, tmp_path, capsys):
    shards, ckpt = trained
    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    make_old_format(checkpoint.find_checkpoint(old))

    with pytest.raises(checkpoint.UnsafeCheckpointError, match="old pickle format"):
        checkpoint.load_backbone(old)
    outcome, message = run_ranks(resume_into_fresh_trainer, 1, shards, old)[0]
    assert outcome == "refused" and str(old) in message

    new = tmp_path / "new"
    assert main(["checkpoint", "convert", str(old), str(new)]) == 2  # no tty, no confirmation
    assert "--trust-source" in capsys.readouterr().err
    assert not new.exists()
    assert main(["checkpoint", "convert", str(old), str(new), "--trust-source"]) == 0
    converted = checkpoint.find_checkpoint(new)
    for path in converted.rglob("*.pt"):
        torch.load(path, weights_only=True)
    original = checkpoint.load_backbone(ckpt).state_dict()
    for name, value in checkpoint.load_backbone(new).state_dict().items():
        assert torch.equal(value, original[name]), name
    assert run_ranks(resume_into_fresh_trainer, 1, shards, new)[0] == ("resumed", 3)
