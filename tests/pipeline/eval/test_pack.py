"""`facetrain pack`: insightface-readable `.bin` packs that score like the pairs route."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from facetrain.jobs.cli import main
from facetrain.pipeline.eval import export_model, run_bin_verification, run_verification
from facetrain.pipeline.eval.config import EvalOptions
from facetrain.pipeline.eval.pairs import read_pairs
from PIL import Image

from tests.pipeline.eval.helpers import ProjectionNet, write_face_folder, write_pairs_file

FIGURES = ("accuracy", "accuracy_std", "auc", "eer", "threshold")


def insightface_load_bin(path):
    """What insightface's `load_bin` does before decoding: a plain pickle load."""
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="bytes")


def test_png_pack_is_insightface_readable_and_scores_exactly_like_the_pairs(tmp_path):
    write_face_folder(tmp_path / "images", identities=6, per_identity=4)
    pairs = write_pairs_file(tmp_path / "pairs.txt", identities=6, per_identity=4)
    out = tmp_path / "faces.bin"
    args = ["pack", str(pairs), "--images", str(tmp_path / "images"), "--out", str(out)]
    assert main([*args, "--format", "png"]) == 0

    images, is_same = insightface_load_bin(out)
    pair_list = read_pairs(pairs)
    assert len(images) == 2 * len(pair_list) and list(is_same) == list(pair_list.is_same)
    first = Image.open(io.BytesIO(images[2]))
    assert first.size == (112, 112) and first.mode == "RGB"
    expected = np.asarray(Image.open(tmp_path / "images" / pair_list.keys_a[1]).convert("RGB"))
    assert np.array_equal(np.asarray(first), expected)  # pair 1's first image, losslessly

    options = EvalOptions(batch_size=8, workers=1, progress=False, device="cpu")
    model = ProjectionNet().eval()
    from_pack = run_bin_verification(model, out, options).summary
    from_pairs = run_verification(
        model, pairs=pairs, images=tmp_path / "images", options=options
    ).summary
    for figure in FIGURES:
        assert from_pack[figure] == pytest.approx(from_pairs[figure], abs=1e-12), figure
    assert from_pack["tar_at_far"] == from_pairs["tar_at_far"]


def test_pack_leaves_out_pairs_with_a_missing_image_and_says_so(tmp_path, capsys):
    write_face_folder(tmp_path / "images", identities=4, per_identity=3)
    (tmp_path / "images" / "Person_1" / "Person_1_0002.jpg").unlink()
    pairs = write_pairs_file(tmp_path / "pairs.txt", identities=4, per_identity=3)
    out = tmp_path / "faces.bin"
    assert main(["pack", str(pairs), "--images", str(tmp_path / "images"), "--out", str(out)]) == 0
    images, is_same = insightface_load_bin(out)
    assert len(is_same) == 16 - 2 and len(images) == 28
    assert "Person_1/Person_1_0002.jpg: missing file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--out", "x.pkl"], "expected a file name ending in .bin"),
        (["--out", "x.bin", "--align", "nope"], "alignment template 'nope'"),
    ],
)
def test_pack_usage_errors_exit_2(tmp_path, capsys, extra, expected):
    write_face_folder(tmp_path / "images", identities=2, per_identity=2)
    pairs = write_pairs_file(tmp_path / "pairs.txt", identities=2, per_identity=2)
    code = main(["pack", str(pairs), "--images", str(tmp_path / "images"), *extra])
    assert code == 2 and expected in capsys.readouterr().err


@pytest.mark.lfw
@pytest.mark.slow
def test_lfw_view2_pack_gives_the_figures_of_the_pairs_route(lfw_root, tmp_path):
    """All 6,000 View 2 pairs, aligned with the SphereFace landmarks, through both routes."""
    from facetrain.pipeline.models import build_backbone

    model = tmp_path / "tiny.ts"
    export_model(build_backbone("tiny", embedding_size=32).eval(), model, "torchscript")
    packed = tmp_path / "lfw.bin"
    images, landmarks = str(lfw_root / "images"), str(lfw_root / "landmarks.txt")
    pack = ["pack", str(lfw_root / "pairs.txt"), "--images", images, "--landmarks", landmarks]
    assert main([*pack, "--out", str(packed), "--workers", "2"]) == 0

    common = ["--model", str(model), "--no-mlflow", "--set", "progress=false"]
    common += ["--set", "device=cpu", "--set", "workers=2", "--set", "batch_size=256"]
    assert main(["eval", "verify", "--bin", str(packed), "--json", str(tmp_path / "b.json"), *common]) == 0
    route = ["--pairs", str(lfw_root / "pairs.txt"), "--images", images, "--landmarks", landmarks]
    assert main(["eval", "verify", *route, "--json", str(tmp_path / "p.json"), *common]) == 0
    from_pack = json.loads((tmp_path / "b.json").read_text())
    from_pairs = json.loads((tmp_path / "p.json").read_text())
    assert from_pack["pairs"] == from_pairs["pairs"] == 6000
    # The same folds: insightface's contiguous tenths of the pack are View 2's ten folds.
    assert from_pack["protocol"] == from_pairs["protocol"] == "10-fold cross-validation"
    # JPEG (quality 95) re-encoding of the aligned faces is the only difference.
    assert from_pack["accuracy"] == pytest.approx(from_pairs["accuracy"], abs=0.005)
    assert from_pack["auc"] == pytest.approx(from_pairs["auc"], abs=0.003)
    assert from_pack["eer"] == pytest.approx(from_pairs["eer"], abs=0.005)
    per_fold = np.abs(np.subtract(from_pack["fold_accuracies"], from_pairs["fold_accuracies"]))
    assert per_fold.max() <= 0.02, per_fold

    # Lossless: the very figures of the pairs route.
    lossless = tmp_path / "lfw-png.bin"
    assert main([*pack, "--out", str(lossless), "--workers", "2", "--format", "png"]) == 0
    assert main(["eval", "verify", "--bin", str(lossless), "--json", str(tmp_path / "n.json"), *common]) == 0
    from_png = json.loads((tmp_path / "n.json").read_text())
    for figure in (*FIGURES, "tar_at_far", "fold_accuracies"):
        assert from_png[figure] == pytest.approx(from_pairs[figure], abs=1e-9), figure
