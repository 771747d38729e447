"""Which checkpoint a run resumes from, and whether it may: the newest that loads completely
(each one skipped named with its reason), and only for the data it was written for."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from facetrain.pipeline.data.shards import read_dataset_index
from facetrain.pipeline.train import checkpoint

from tests.pipeline.shards import write_shards


def _save(root, step, dataset=None):
    return checkpoint.save_checkpoint(
        root,
        step,
        rank=0,
        world_size=1,
        barrier=lambda: None,
        config={"step": step},
        backbone_state={"w": torch.full((4,), float(step))},
        replicated={"step": step},
        shard={
            "class_start": 0,
            "num_local_classes": 2,
            "num_classes": 2,
            "tensors": {"x.weight": torch.ones(2, 3)},
        },
        rank_local={},
        keep=5,
        dataset=dataset,
    )


def _garble_same_size(path):
    size = path.stat().st_size
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    assert path.stat().st_size == size


def test_newest_that_loads_completely_is_chosen_and_the_skipped_are_named(tmp_path, caplog):
    _save(tmp_path, 3)
    truncated = _save(tmp_path, 6)
    garbled = _save(tmp_path, 9)
    with open(truncated / "backbone.pt", "r+b") as handle:
        handle.truncate(10)
    _garble_same_size(garbled / "state.pt")  # the right size: only loading it tells
    assert checkpoint.is_complete(garbled)

    with caplog.at_level(logging.WARNING, logger="facetrain.train"):
        found, (meta, backbone, replicated, _, _) = checkpoint.choose_checkpoint(tmp_path)
    assert found.name == "step-00000003" and replicated == {"step": 3}
    assert torch.equal(backbone["w"], torch.full((4,), 3.0))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "resuming from step-00000003" in lines[0]
    assert (
        f"{garbled} (backbone.pt or state.pt does not load:" in lines[0]
        and f"{truncated} (files missing or truncated)" in lines[0]
    )

    _garble_same_size(tmp_path / "step-00000003" / "backbone.pt")
    with pytest.raises(ValueError, match="no checkpoint loads completely") as error:
        checkpoint.choose_checkpoint(tmp_path)
    for step in (3, 6, 9):
        assert f"step-{step:08d} (" in str(error.value)
    assert checkpoint.choose_checkpoint(tmp_path / "empty") is None


def _fingerprint(root):
    from facetrain.pipeline.data.shards import read_class_names

    index = read_dataset_index(str(root))
    return {**index.fingerprint(read_class_names(str(root))), "shards": str(root)}


def test_a_checkpoint_of_other_data_is_refused_naming_both(tmp_path):
    first = write_shards(tmp_path / "first", [3, 4, 5] * 10, num_shards=2, size=16)
    other = write_shards(tmp_path / "other", [3, 4] * 7, num_shards=2, size=16)
    saved = _save(tmp_path / "ckpt", 5, dataset=_fingerprint(first))
    checkpoint.check_dataset(saved, _fingerprint(first), str(first))  # the same data: fine
    checkpoint.check_dataset(saved, None, str(first))  # nothing to compare with: fine
    with pytest.raises(checkpoint.DatasetMismatchError) as error:
        checkpoint.check_dataset(saved, _fingerprint(other), str(other))
    message = str(error.value)
    assert f"data.shards {str(first)!r}, not to {str(other)!r}" in message
    assert "num_classes 30 -> 14" in message and "train.init_from" in message

    # The CLI refuses before any rank starts: exit 2, one line.
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"shards": str(other)},
                "loss": [{"type": "softmax"}],
                "checkpoint": {"dir": str(tmp_path / "ckpt")},
            }
        )
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "facetrain"), "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "resuming would mix two datasets" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
