"""IJB-B/C 1:1 template verification against a brute-force NumPy reference of the same pooling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from facetrain.data_prep.align import ARCFACE_112, align_face
from facetrain.jobs.cli import main
from facetrain.pipeline.eval import export_model
from facetrain.pipeline.eval.config import EvalOptions
from facetrain.pipeline.eval.ijb import (
    IJB_FAR_LEVELS,
    far_label,
    pool_templates,
    run_ijb,
    score_template_pairs,
)
from PIL import Image

from tests.pipeline.eval.helpers import ProjectionNet

IDENTITIES, TEMPLATES_PER_ID, MEDIA_PER_TEMPLATE, FRAMES_PER_MEDIA = 10, 3, 3, 3
CROP = 150  # loose crops: the face sits at an offset inside a larger image
OPTIONS = EvalOptions(batch_size=32, workers=2, progress=False, device="cpu")


def smooth_face(rng: np.random.Generator) -> np.ndarray:
    """A random low-frequency 112x112 'face': what survives the model's pooling is identity."""
    coarse = rng.uniform(0, 255, (7, 7, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((112, 112), Image.BICUBIC), dtype=np.float64)


def write_ijb(root: Path, one_image_per_template: bool = False, noise: float = 400.0) -> dict:
    """A small IJB-C-format set: identities with several templates, each of several media
    (photos or video frames), each a noisy loose crop of the identity's face at an offset."""
    rng = np.random.default_rng(0)
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    tid_mid, points, truth = [], [], []
    template_id, media_id, image_number = 0, 1000, 0
    for identity in range(IDENTITIES):
        face = smooth_face(rng)
        for _ in range(TEMPLATES_PER_ID):
            template_id += 1
            truth.append((template_id, identity))
            first_of_template = True
            for _ in range(MEDIA_PER_TEMPLATE):
                media_id += 1
                for _ in range(FRAMES_PER_MEDIA):
                    image_number += 1
                    name = f"{image_number}.jpg"
                    dx, dy = rng.integers(0, CROP - 112, size=2)
                    canvas = rng.uniform(0, 255, (CROP, CROP, 3))
                    canvas[dy : dy + 112, dx : dx + 112] = face + rng.normal(0, noise, face.shape)
                    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(
                        root / "loose_crop" / name, quality=95
                    )
                    landmarks = ARCFACE_112 + np.array([dx, dy])
                    score = rng.uniform(0.5, 1.0)
                    coordinates = " ".join(f"{v:.3f}" for v in landmarks.reshape(-1))
                    points.append(f"{name} {coordinates} {score:.4f}")
                    if first_of_template or not one_image_per_template:
                        tid_mid.append(f"{name} {template_id} {media_id}")
                    first_of_template = False
    pairs = [
        f"{a} {b} {int(id_a == id_b)}"
        for i, (a, id_a) in enumerate(truth)
        for b, id_b in truth[i + 1 :]
    ]
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    return {"pairs": len(pairs), "templates": len(truth), "images": len(tid_mid)}


# ---------------------------------------------------------------- brute-force reference


def reference_ijb(root: Path, model: torch.nn.Module, detector_score: bool = True) -> dict:
    """Everything in plain loops and float64, straight from the text files."""
    points = {}
    for line in (root / "meta" / "ijbc_name_5pts_score.txt").read_text().split("\n"):
        if line:
            name, *values = line.split()
            points[name] = (np.array(values[:10], dtype=float).reshape(5, 2), float(values[10]))
    templates: dict[int, dict[int, list[np.ndarray]]] = {}
    for line in (root / "meta" / "ijbc_face_tid_mid.txt").read_text().split("\n"):
        if not line:
            continue
        name, template, media = line.split()
        landmarks, score = points[name]
        face = np.asarray(align_face(Image.open(root / "loose_crop" / name).convert("RGB"), landmarks))
        x = torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            feature = (model(x) + model(x.flip(3)))[0].double().numpy()
        feature = feature / np.linalg.norm(feature) * (score if detector_score else 1.0)
        templates.setdefault(int(template), {}).setdefault(int(media), []).append(feature)
    pooled = {}
    for template, medias in templates.items():
        media_means = [np.mean(frames, axis=0) for frames in medias.values()]
        mean = np.mean(media_means, axis=0)
        pooled[template] = mean / np.linalg.norm(mean)
    scores, same = [], []
    for line in (root / "meta" / "ijbc_template_pair_label.txt").read_text().split("\n"):
        if line:
            a, b, label = (int(v) for v in line.split())
            scores.append(float(np.dot(pooled[a], pooled[b])))
            same.append(label == 1)
    scores, same = np.array(scores), np.array(same)
    positives, negatives = scores[same], scores[~same]
    tar = {}
    for far in IJB_FAR_LEVELS:
        best = 0.0
        for threshold in [np.inf, *scores]:
            if np.sum(negatives >= threshold) <= far * negatives.size:
                best = max(best, np.sum(positives >= threshold) / positives.size)
        tar[far_label(far)] = best
    return {"tar_at_far": tar, "scores": scores}


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    return root, write_ijb(root)


@pytest.mark.parametrize("detector_score", [True, False])
def test_tar_at_far_matches_the_brute_force_reference(ijb_root, detector_score):
    root, counts = ijb_root
    model = ProjectionNet().eval()
    result = run_ijb(model, root, "IJBC", OPTIONS, detector_score=detector_score)
    reference = reference_ijb(root, model, detector_score)
    np.testing.assert_allclose(result.scores, reference["scores"], atol=1e-5)
    assert result.summary["tar_at_far"] == pytest.approx(reference["tar_at_far"], abs=1e-12)
    assert set(result.summary["tar_at_far"]) == {"1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"}
    assert result.summary["pairs"] == counts["pairs"] == 435
    assert result.summary["templates"] == counts["templates"] == 30
    assert result.summary["media"] == 90 and result.summary["images"] == 270
    assert result.summary["same_pairs"] == 30 and result.summary["images_failed"] == 0


def test_media_pooling_beats_one_image_per_template_on_noisy_faces(ijb_root, tmp_path):
    root, _ = ijb_root
    single_root = tmp_path / "IJBC"
    write_ijb(single_root, one_image_per_template=True)
    model = ProjectionNet().eval()
    pooled = run_ijb(model, root, "IJBC", OPTIONS).summary
    single = run_ijb(model, single_root, "IJBC", OPTIONS).summary
    assert single["images"] == 30
    assert pooled["tar_at_far"]["1e-2"] > single["tar_at_far"]["1e-2"] + 0.2, (pooled, single)
    assert pooled["auc"] > single["auc"]


def test_scoring_in_small_batches_gives_the_same_scores():
    rng = np.random.default_rng(1)
    ids = np.array([3, 5, 9, 12])
    features = rng.normal(size=(4, 8))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    a, b = rng.choice([3, 5, 9, 12, 7], size=50), rng.choice([3, 5, 9, 12], size=50)
    whole = score_template_pairs(ids, features, a, b, batch=1 << 20)
    small = score_template_pairs(ids, features, a, b, batch=7)
    np.testing.assert_array_equal(whole, small)
    assert np.isnan(whole[a == 7]).all() and not np.isnan(whole[a != 7]).any()
    rows = {t: i for i, t in enumerate(ids)}
    for index in np.flatnonzero(a != 7):
        expected = features[rows[a[index]]] @ features[rows[b[index]]]
        assert whole[index] == pytest.approx(expected, abs=1e-6)


def test_pool_templates_averages_media_before_templates():
    # Template 1: media 10 has three identical frames, media 11 one frame; media count once each.
    features = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids, pooled = pool_templates(features, np.array([1, 1, 1, 1]), np.array([10, 10, 10, 11]))
    assert ids.tolist() == [1]
    np.testing.assert_allclose(pooled[0], [2**-0.5, 2**-0.5])


def test_cli_writes_json_roc_and_logs_to_mlflow(ijb_root, tmp_path, mlflow_uri):
    import mlflow

    root, _ = ijb_root
    model = tmp_path / "projection.ts"
    export_model(ProjectionNet().eval(), model, "torchscript")
    out = tmp_path / "ijbc.json"
    args = ["eval", "ijb", "--root", str(root), "--set", "IJBC", "--model", str(model)]
    args += ["--json", str(out), "--set", "progress=false", "--set", "device=cpu"]
    assert main(args) == 0
    summary = json.loads(out.read_text())
    reference = reference_ijb(root, ProjectionNet().eval())
    assert summary["tar_at_far"] == pytest.approx(reference["tar_at_far"], abs=1e-12)
    assert out.with_suffix(".roc.png").stat().st_size > 1000
    runs = mlflow.search_runs(experiment_names=["facetrain-eval"], output_format="list")
    logged = runs[0].data.metrics
    assert logged["IJBC/tar_at_far_1e-4"] == pytest.approx(summary["tar_at_far"]["1e-4"])
    assert logged["IJBC/templates"] == 30


def test_cli_names_a_missing_metadata_file(tmp_path, capsys):
    (tmp_path / "meta").mkdir()
    model = tmp_path / "projection.ts"
    export_model(ProjectionNet().eval(), model, "torchscript")
    code = main(["eval", "ijb", "--root", str(tmp_path), "--model", str(model), "--no-mlflow"])
    assert code == 2
    assert "meta/ijbc_face_tid_mid.txt" in capsys.readouterr().err
