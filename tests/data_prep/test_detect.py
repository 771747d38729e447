"""Optional face detection (`--detect`, the `detect` extra: dlib's HOG detector)."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from facetrain.data_prep import run_prep
from facetrain.data_prep.align import ARCFACE_112, transform_points
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.detect import (
    REASON_NO_FACE,
    REASON_SEVERAL_FACES,
    FaceBox,
    choose_main_face,
)
from facetrain.data_prep.landmarks import read_landmarks
from facetrain.jobs.cli import main
from PIL import Image

LFW_IMAGES = 20


def test_main_face_is_the_largest_unless_a_second_is_close_in_size():
    assert choose_main_face([]) == (None, REASON_NO_FACE)
    big, small = FaceBox(10, 10, 60, 60), FaceBox(100, 10, 30, 30)
    assert choose_main_face([small, big]) == (big, None)
    twin = FaceBox(100, 10, 58, 58)  # 93 % of the largest's area
    assert choose_main_face([big, twin, small]) == (None, REASON_SEVERAL_FACES)


def test_without_the_extra_detection_is_a_usage_error_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "faces" / "ann").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "faces" / "ann" / "a.jpg")
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    args = ["prep", str(tmp_path / "faces"), "--out", str(tmp_path / "o"), "--detect"]
    assert main([*args, "--no-progress", "--set", "executor=inline"]) == 2
    assert "facetrain[detect]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _lfw_sample(lfw_root) -> dict[str, np.ndarray]:
    """The first image of every 250th identity (sorted): deterministic, spread over the set."""
    points = read_landmarks(lfw_root / "landmarks.txt")
    firsts = {}
    for relpath in sorted(points):
        firsts.setdefault(relpath.split("/")[0], relpath)
    chosen = sorted(firsts.values())[::250][:LFW_IMAGES]
    return {
        relpath: points[relpath] for relpath in chosen if (lfw_root / "images" / relpath).exists()
    }


def _detect(image: Image.Image):
    from facetrain.data_prep.detect import require_detector
    from facetrain.data_prep.images import open_image
    from facetrain.data_prep.scan import detected_landmarks

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    header = open_image(buffer.getvalue(), "test.png")
    return detected_landmarks(header, "test.png", require_detector())


def _landmark_crop_box(points: np.ndarray) -> np.ndarray:
    """left, top, right, bottom of the square whose arcface template best fits five points
    (float64 least squares, written out independently of data_prep)."""
    unit = ARCFACE_112 / 112.0
    design = np.zeros((10, 3))
    design[0::2, 0], design[1::2, 1] = 1.0, 1.0
    design[0::2, 2], design[1::2, 2] = unit[:, 0], unit[:, 1]
    left, top, side = np.linalg.lstsq(design, points.ravel(), rcond=None)[0]
    return np.array([left, top, left + side, top + side])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.lfw
def test_detector_finds_the_main_face_of_real_lfw_images(lfw_root):
    pytest.importorskip("dlib")
    sample = _lfw_sample(lfw_root)
    found = 0
    for relpath, true_points in sample.items():
        points, reason = _detect(Image.open(lfw_root / "images" / relpath))
        if points is None:
            continue
        found += 1
        detected = np.asarray(points).reshape(5, 2)
        iou = _iou(_landmark_crop_box(detected), _landmark_crop_box(true_points))
        assert iou > 0.6, (relpath, iou)
    assert found >= 0.8 * len(sample), f"{found} of {len(sample)} images gave one main face"


@pytest.mark.lfw
def test_blank_noise_and_two_equal_faces_are_rejected_with_their_reason(lfw_root):
    pytest.importorskip("dlib")
    rng = np.random.default_rng(0)
    assert _detect(Image.new("RGB", (150, 150), (128, 128, 128))) == (None, REASON_NO_FACE)
    noise = Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    assert _detect(noise) == (None, REASON_NO_FACE)
    for relpath in _lfw_sample(lfw_root):
        face = Image.open(lfw_root / "images" / relpath).convert("RGB")
        if _detect(face)[0] is not None:
            break
    pair = Image.new("RGB", (300, 150))
    pair.paste(face, (0, 0))
    pair.paste(face, (150, 0))
    assert _detect(pair) == (None, REASON_SEVERAL_FACES)


@pytest.mark.lfw
def test_prep_of_a_folder_without_landmarks_detects_faces(lfw_root, tmp_path):
    pytest.importorskip("dlib")
    all_points = read_landmarks(lfw_root / "landmarks.txt")
    root = tmp_path / "faces"
    chosen = []
    for name in ("Colin_Powell", "Laura_Bush", "John_Ashcroft"):
        (root / name).mkdir(parents=True)
        for number in (1, 2, 3):
            relpath = f"{name}/{name}_{number:04d}.jpg"
            (root / relpath).symlink_to(lfw_root / "images" / relpath)
            chosen.append(relpath)
    Image.new("RGB", (150, 150), (90, 90, 90)).save(root / "Laura_Bush" / "blank.jpg")
    face = Image.open(root / chosen[0]).convert("RGB")
    pair = Image.new("RGB", (300, 150))
    pair.paste(face, (0, 0))
    pair.paste(face, (150, 0))
    pair.save(root / "Colin_Powell" / "pair.jpg")
    out = tmp_path / "out"
    summary = run_prep(
        PrepConfig(source=str(root), out=str(out), detect=True, executor="inline", progress=False)
    )
    rejects = {
        row["source"]: row["reason"] for row in pq.read_table(out / "rejects.parquet").to_pylist()
    }
    assert rejects["Laura_Bush/blank.jpg"] == REASON_NO_FACE
    assert rejects["Colin_Powell/pair.jpg"] == REASON_SEVERAL_FACES
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert summary.accepted == len(manifest) >= len(chosen) - 2
    assert {row["source"] for row in manifest} | set(rejects) == {
        *chosen,
        "Laura_Bush/blank.jpg",
        "Colin_Powell/pair.jpg",
    }
    # The box crop puts the real five points near the template (a box is coarser than points).
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar"))))
    assert len(samples) == len(manifest)
    # On 1180 LFW images: median 6.4 px, 99th percentile 13.8 px (mean over the five points).
    errors = {}
    for sample in samples:
        meta = json.loads(sample["json"])
        assert Image.open(io.BytesIO(sample["jpg"])).size == (112, 112)
        moved = transform_points(np.asarray(meta["transform"]), all_points[meta["source"]])
        errors[meta["source"]] = np.linalg.norm(moved - ARCFACE_112, axis=1).mean()
    assert np.median(list(errors.values())) < 10.0 and max(errors.values()) < 25.0, errors
