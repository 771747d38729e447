"""Every bad input a user met, paired with its exit code and a fragment of its one-line error
(2: unusable input or arguments, 1: a failure), through the CLI's own entry point."""

from pathlib import Path

import pytest
import yaml
from facetrain.jobs.cli import main

from tests.pipeline.shards import write_shards


def _train_config(tmp_path, shards, **sections):
    tree = {
        "data": {"shards": str(shards), "batch": {"p": 3, "k": 2}, "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 8},
        "loss": [{"type": "softmax"}],
        "checkpoint": {"dir": str(tmp_path / "ckpt")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    for section, values in sections.items():
        tree[section] = {**tree[section], **values}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _shards(tmp_path):
    return write_shards(tmp_path / "data", [3, 4, 5, 2, 3, 4], num_shards=2, size=16)


def unknown_backbone(tmp_path):
    config = _train_config(tmp_path, _shards(tmp_path), model={"backbone": "resnet9000"})
    return ["train", "--config", config]


def p_above_identities(tmp_path):
    # 6 identities, P x K batches of 7 identities.
    return [
        "train",
        "--config",
        _train_config(tmp_path, _shards(tmp_path)),
        "--set",
        "data.batch.p=7",
        "--set",
        "data.sampler=pk",
    ]


def broken_dataset_json(tmp_path):
    shards = _shards(tmp_path)
    (shards / "dataset.json").write_text('{"num_classes": 6, "splits": ')
    return ["train", "--config", _train_config(tmp_path, shards)]


def k_equals_1(tmp_path):
    config = _train_config(tmp_path, _shards(tmp_path), data={"sampler": "pk"})
    return ["train", "--config", config, "--set", "data.batch.k=1"]


def file_tracking_uri(tmp_path):
    config = _train_config(tmp_path, _shards(tmp_path))
    return ["train", "--config", config, "--set", f"mlflow.tracking_uri=file://{tmp_path}/mlruns"]


def prep_out_unwritable(tmp_path):
    (tmp_path / "faces" / "someone").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    return ["prep", str(tmp_path / "faces"), "--out", str(tmp_path / "a-file" / "out")]


def prep_accepts_nothing(tmp_path):
    (tmp_path / "faces" / "someone").mkdir(parents=True)
    (tmp_path / "faces" / "someone" / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    return ["prep", str(tmp_path / "faces"), "--out", str(out), "--align", "none", "--workers", "1"]


def export_out_under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("")
    return ["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "a-file" / "m.pt")]


def verify_damaged_output(tmp_path):
    shards = _shards(tmp_path)
    tar = shards / "shards" / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    return ["prep", "--verify", str(shards)]


def verify_not_an_output(tmp_path):
    return ["prep", "--verify", str(tmp_path)]


CASES = [
    (unknown_backbone, 2, "model.backbone 'resnet9000': unknown backbone"),
    (p_above_identities, 2, "fewer than data.batch.p=7"),
    (broken_dataset_json, 2, "dataset.json: not JSON"),
    (k_equals_1, 2, "data.batch.k=1: the P x K sampler needs k >= 2"),
    (file_tracking_uri, 2, "MLflow 3 does not accept a file store"),
    (prep_out_unwritable, 2, "a-file/out: cannot write there"),
    (prep_accepts_nothing, 1, "no image of"),
    (export_out_under_a_file, 2, "a-file is a file, not a folder"),
    (verify_damaged_output, 1, "train-000001.tar: "),
    (verify_not_an_output, 2, "not a `facetrain prep` output"),
]


@pytest.mark.parametrize(
    ("make_args", "code", "fragment"), CASES, ids=[c[0].__name__ for c in CASES]
)
def test_bad_input_exits_with_its_code_and_one_line(tmp_path, capsys, make_args, code, fragment):
    args = make_args(tmp_path)
    assert main(args) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("facetrain ")]  # not tqdm's
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err and "{'" not in err


def test_verify_passes_an_intact_output(tmp_path, capsys):
    shards = _shards(tmp_path)
    assert main(["prep", "--verify", str(shards)]) == 0
    assert "2 shards match dataset.json" in capsys.readouterr().out
    assert Path(shards / "dataset.json").exists()
