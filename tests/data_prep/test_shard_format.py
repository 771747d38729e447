"""dataset.json through the shared schema: bad files fail with one line naming file and key."""

from __future__ import annotations

import json

import pytest
from facetrain.data_prep.shard_format import (
    DATASET_FILE,
    DatasetFormatError,
    parse_dataset_json,
    sample_key,
)

GOOD = {
    "num_classes": 3,
    "splits": {"train": {"shards": [{"name": "train-000000.tar", "samples": 7, "identities": 3}]}},
}


def _write(tmp_path, tree) -> tuple[str, str]:
    path = tmp_path / DATASET_FILE
    path.write_text(tree if isinstance(tree, str) else json.dumps(tree))
    return str(path), path.read_text()


def _error(tmp_path, tree) -> str:
    location, text = _write(tmp_path, tree)
    with pytest.raises(DatasetFormatError) as caught:
        parse_dataset_json(text, location)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{location}: ")
    return message[len(location) + 2 :]


def test_a_good_file_reads_and_writes_back_the_same_keys(tmp_path):
    location, text = _write(tmp_path, GOOD)
    manifest = parse_dataset_json(text, location)
    assert manifest.num_classes == 3 and manifest.splits["train"].shards[0].samples == 7
    assert json.loads(manifest.to_json()) == GOOD  # nothing added, nothing lost


def test_missing_field_names_the_key(tmp_path):
    tree = {**GOOD}
    del tree["num_classes"]
    assert _error(tmp_path, tree) == "missing key 'num_classes'"
    tree = json.loads(json.dumps(GOOD))
    del tree["splits"]["train"]["shards"][0]["identities"]
    assert _error(tmp_path, tree) == "missing key 'splits.train.shards.0.identities'"


def test_mistyped_field_names_the_key_and_the_value(tmp_path):
    tree = json.loads(json.dumps(GOOD))
    tree["splits"]["train"]["shards"][0]["samples"] = "many"
    message = _error(tmp_path, tree)
    assert message.startswith("key 'splits.train.shards.0.samples': ") and "'many'" in message
    tree = {**GOOD, "splits": ["train"]}
    assert _error(tmp_path, tree).startswith("key 'splits': ")


def test_not_json_is_said_so(tmp_path):
    assert _error(tmp_path, '{"num_classes": 3,').startswith("not JSON (")


def test_sample_key_pads_class_and_position():
    assert sample_key("train", 42, 7) == "train_000042_0007"
    assert sample_key("val", 0, 12345) == "val_000000_12345"  # grows past 4 digits, never cut
