"""Optional face detection (`--detect`, the `detect` extra: dlib detectors + 68-point model)."""

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
    detection_available,
    five_from_68,
)
from facetrain.data_prep.landmarks import read_landmarks
from facetrain.jobs.cli import main
from PIL import Image

LFW_IMAGES = 20


def _needs_the_detect_extra() -> None:
    if not detection_available():
        pytest.skip("the `detect` extra (dlib-bin, face-recognition-models) is not installed")


def test_main_face_is_the_largest_unless_a_second_is_close_in_size():
    assert choose_main_face([]) == (None, REASON_NO_FACE)
    big, small = FaceBox(10, 10, 60, 60), FaceBox(100, 10, 30, 30)
    assert choose_main_face([small, big]) == (big, None)
    twin = FaceBox(100, 10, 58, 58)  # 93 % of the largest's area
    assert choose_main_face([big, twin, small]) == (None, REASON_SEVERAL_FACES)


def test_among_faces_close_in_size_the_central_one_is_main_unless_two_are_as_central():
    central, aside = FaceBox(45, 45, 60, 60), FaceBox(100, 0, 58, 58)  # 150 x 150 image
    assert choose_main_face([aside, central], (150, 150)) == (central, None)
    # Mirror images about the centre: as close to it as each other.
    left, right = FaceBox(10, 45, 60, 60), FaceBox(80, 45, 60, 60)
    assert choose_main_face([left, right], (150, 150)) == (None, REASON_SEVERAL_FACES)
    # Off-centre by less than half a face width more than the nearest: still ambiguous.
    nearly = FaceBox(45 + 60 * 0.45, 45, 60, 60)
    assert choose_main_face([central, nearly], (150, 150)) == (None, REASON_SEVERAL_FACES)
    # A clearly largest face (side >= 1.5x) wins wherever it is.
    big = FaceBox(0, 0, 100, 100)
    assert choose_main_face([central, big], (150, 150)) == (big, None)
    just_over = FaceBox(0, 0, 92, 92)
    assert choose_main_face([central, just_over], (150, 150)) == (just_over, None)
    # A bystander 1.4x the subject's side off to one side (LFW's Laura_Bush_0032 with the CNN
    # detector): the centred subject is the main face.
    bystander = FaceBox(86, 41, 83, 83)
    subject = FaceBox(42, 46, 58, 58)
    assert choose_main_face([bystander, subject], (150, 150)) == (subject, None)


def test_five_points_from_68_are_eye_centres_nose_tip_and_mouth_corners():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 150, (68, 2))
    # iBUG 300-W numbering (1-based in its documentation): eyes 37-42 and 43-48, nose tip
    # 31, mouth corners 49 and 55; written out one coordinate at a time.
    expected = np.zeros((5, 2))
    for axis in (0, 1):
        expected[0, axis] = sum(points[i - 1, axis] for i in range(37, 43)) / 6
        expected[1, axis] = sum(points[i - 1, axis] for i in range(43, 49)) / 6
        expected[2, axis] = points[31 - 1, axis]
        expected[3, axis] = points[49 - 1, axis]
        expected[4, axis] = points[55 - 1, axis]
    np.testing.assert_allclose(five_from_68(points), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        five_from_68(points[:5])


def test_detector_and_upsample_flags_reach_the_config(tmp_path):
    from facetrain.jobs.cli import build_parser
    from facetrain.jobs.cli.prep import build_config

    args = build_parser().parse_args(
        ["prep", str(tmp_path), "--out", str(tmp_path / "o"), "--detect", "--detector", "cnn",
         "--upsample", "2"]
    )  # fmt: skip
    config = build_config(args)
    assert (config.detect, config.detector, config.upsample) == (True, "cnn", 2)
    defaults = build_config(build_parser().parse_args(["prep", str(tmp_path), "--out", "o"]))
    assert (defaults.detector, defaults.upsample) == ("hog", None)


def test_without_the_extra_detection_is_a_usage_error_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "faces" / "ann").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "faces" / "ann" / "a.jpg")
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # ImportError on import
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


def _detect(image: Image.Image, kind: str = "hog"):
    from facetrain.data_prep.detect import require_detector
    from facetrain.data_prep.images import read_header
    from facetrain.data_prep.scan import detected_landmarks

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    header = read_header(buffer.getvalue(), "test.png")
    points, score, reason = detected_landmarks(header, "test.png", require_detector(kind))
    assert (points is None) == (score is None) == (reason is not None)
    return points, reason


def _nme(detected: np.ndarray, reference: np.ndarray) -> float:
    """Mean point error over the reference inter-ocular distance (float64, written out here)."""
    inter_ocular = np.hypot(*(reference[0] - reference[1]))
    return float(
        np.mean([np.hypot(*(d - r)) for d, r in zip(detected, reference, strict=True)])
        / inter_ocular
    )


@pytest.mark.lfw
@pytest.mark.parametrize(("kind", "images"), [("hog", LFW_IMAGES), ("cnn", 8)])
def test_detected_five_points_match_the_reference_landmarks_of_lfw(lfw_root, kind, images):
    """The issue's bar (median NME <= 0.05 over LFW) on a fixed subset; the benchmark,
    benchmarks/detect_landmarks.py, measures it on more images."""
    _needs_the_detect_extra()
    errors = []
    for relpath, true_points in list(_lfw_sample(lfw_root).items())[:images]:
        points, _ = _detect(Image.open(lfw_root / "images" / relpath), kind)
        if points is not None:
            errors.append(_nme(np.asarray(points).reshape(5, 2), true_points))
    assert len(errors) >= 0.8 * images, f"{kind}: {len(errors)} of {images} images gave a face"
    assert np.median(errors) <= 0.05, (kind, sorted(errors))
    assert max(errors) < 0.25, (kind, sorted(errors))


def test_box_iou_matches_a_count_of_covered_grid_cells():
    rng = np.random.default_rng(3)
    grid = (np.arange(400) + 0.5) / 4  # cell centres, 0.25 px apart over 100 px
    xs, ys = np.meshgrid(grid, grid)

    def cover(box: FaceBox) -> np.ndarray:
        return (
            (xs >= box.left) & (xs < box.left + box.width)
            & (ys >= box.top) & (ys < box.top + box.height)
        )  # fmt: skip

    for _ in range(50):
        a, b = (FaceBox(*rng.uniform(0, 50, 2), *rng.uniform(5, 50, 2)) for _ in range(2))
        counted = (cover(a) & cover(b)).sum() / (cover(a) | cover(b)).sum()
        assert a.iou(b) == pytest.approx(counted, abs=0.02)
        assert a.iou(b) == pytest.approx(b.iou(a))
    assert FaceBox(0, 0, 10, 10).iou(FaceBox(20, 20, 5, 5)) == 0.0
    assert FaceBox(1, 2, 10, 10).iou(FaceBox(1, 2, 10, 10)) == pytest.approx(1.0)


# Faces whose points from the MMOD box mapped to HOG's frame lie 0.4-0.7 inter-ocular distances
# off, where HOG's own box gives points within 0.035 (the records of the all-LFW benchmark run,
# 2026-12-04).
MAPPING_MISSES = (
    "Angela_Merkel/Angela_Merkel_0001.jpg",
    "Ashley_Olsen/Ashley_Olsen_0001.jpg",
    "Bill_Belichick/Bill_Belichick_0001.jpg",
)


@pytest.mark.lfw
def test_the_cnn_frames_its_face_with_the_hog_box_of_the_same_face(lfw_root):
    from facetrain.data_prep.detect import FaceDetector, mmod_to_hog_frame

    _needs_the_detect_extra()
    reference = read_landmarks(lfw_root / "landmarks.txt")
    cnn, hog = FaceDetector("cnn"), FaceDetector("hog")
    for relpath in MAPPING_MISSES:
        rgb = np.asarray(Image.open(lfw_root / "images" / relpath).convert("RGB"))
        face, reason = cnn.detect(rgb)
        assert reason is None, relpath
        (hog_box,) = hog.find_faces(rgb)
        assert (face.landmark_box.left, face.landmark_box.top, face.landmark_box.width) == (
            hog_box.left, hog_box.top, hog_box.width,
        ), relpath  # fmt: skip
        assert face.landmark_box.score == face.box.score  # the score stays MMOD's
        mapped_points = five_from_68(cnn.points_68(rgb, mmod_to_hog_frame(face.box)))
        truth = np.asarray(reference[relpath], np.float64).reshape(5, 2)
        assert _nme(mapped_points, truth) > 0.3, relpath  # the case this guards
        assert _nme(face.points, truth) < 0.1, relpath


@pytest.mark.lfw
def test_a_face_hog_misses_keeps_the_mapped_mmod_box(lfw_root):
    from facetrain.data_prep.detect import FaceDetector, mmod_to_hog_frame

    _needs_the_detect_extra()
    cnn = FaceDetector("cnn")
    face = Image.open(lfw_root / "images" / "Abdoulaye_Wade/Abdoulaye_Wade_0003.jpg")
    rgb = np.asarray(face.convert("RGB"))
    assert FaceDetector("hog").find_faces(rgb) == []
    detected, reason = cnn.detect(rgb)
    assert reason is None
    assert detected.landmark_box == mmod_to_hog_frame(detected.box)


@pytest.mark.lfw
def test_blank_noise_and_two_equal_faces_are_rejected_with_their_reason(lfw_root):
    _needs_the_detect_extra()
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
    _needs_the_detect_extra()
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
    # Detected points, and the detector's score, travel with each face for later weighting.
    for row in manifest:
        assert len(row["landmarks"]) == 10 and np.isfinite(row["detector_score"]), row
    # The detected points put the real five points near the template.
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar"))))
    assert len(samples) == len(manifest)
    # Mean over the five points, 112x112 crop: on these 9 images 1.2-4.4 px, median 2.8 px;
    # the box crop this replaced gave a median of 6.4 px on 1180 LFW images.
    errors = {}
    for sample in samples:
        meta = json.loads(sample["json"])
        assert Image.open(io.BytesIO(sample["jpg"])).size == (112, 112)
        row = next(row for row in manifest if row["source"] == meta["source"])
        assert meta["detector_score"] == row["detector_score"]
        np.testing.assert_array_equal(np.ravel(meta["landmarks"]), row["landmarks"])
        moved = transform_points(np.asarray(meta["transform"]), all_points[meta["source"]])
        errors[meta["source"]] = np.linalg.norm(moved - ARCFACE_112, axis=1).mean()
    assert np.median(list(errors.values())) < 4.0 and max(errors.values()) < 8.0, errors


def test_annotation_offsets_move_with_the_face(monkeypatch):
    """The correction is stated in the face's own frame: moving, scaling and rolling the face
    moves the corrected points the same way (a float64 reference built by hand)."""
    from facetrain.data_prep import detect

    offsets = ((0.01, -0.02), (-0.01, -0.02), (0.0, 0.05), (0.03, 0.01), (-0.03, 0.01))
    monkeypatch.setattr(detect, "FIVE_POINT_OFFSETS", offsets)
    upright = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 75.0], [45.0, 95.0], [75.0, 95.0]])
    # Upright with eyes 40 px apart: along = +x, across = +y, unit 40.
    np.testing.assert_allclose(
        detect.to_annotation_convention(upright), upright + 40.0 * np.array(offsets), atol=1e-12
    )
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = scale * upright @ rotation.T + shift
    np.testing.assert_allclose(
        detect.to_annotation_convention(moved),
        scale * detect.to_annotation_convention(upright) @ rotation.T + shift,
        atol=1e-9,
    )
