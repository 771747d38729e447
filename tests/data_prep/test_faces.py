"""The per-image work of the process task: reduced-scale decode agrees with a full decode."""

import io
import sys

import numpy as np
import pytest
from facetrain.data_prep import faces
from facetrain.data_prep.align import TEMPLATES, align_face
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.images import decode_rgb, load_rgb
from facetrain.jobs.demo.synthetic_faces import jpeg_bytes
from PIL import Image

from tests.data_prep.synth import dot_centres, face_image


def test_reduced_decode_matches_full_resolution_alignment(monkeypatch):
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = 7.0 * (TEMPLATES["arcface"].points - 56) @ rot.T + [900, 700]
    data = jpeg_bytes(face_image(points, (1800, 1400), seed=3, radius=25), quality=95)
    decoded_sizes = []

    def recording_decode_rgb(*args, **kwargs):
        image = decode_rgb(*args, **kwargs)
        decoded_sizes.append(image.size)
        return image

    monkeypatch.setattr(faces, "decode_rgb", recording_decode_rgb)
    config = PrepConfig(source="s", out="o", image_library="pil")  # PIL's reduced decode
    jpg, size, matrix = faces.process_image(data, points.ravel().tolist(), config, "big.jpg")
    # The face spans 7x the output: 1/4 is the largest reduction that keeps >= 1/7 of the size.
    assert decoded_sizes == [(450, 350)]
    reduced = np.asarray(Image.open(io.BytesIO(jpg))).astype(float)
    full = np.asarray(align_face(load_rgb(data), points)).astype(float)
    assert size == (112, 112) and reduced.shape == full.shape
    # Same crop, slightly softer: only the block-averaging of the reduced decode differs.
    assert np.abs(reduced - full).mean() < 4.0
    # Reduced pixel j covers source pixels 4j..4j+3: without that half-block shift the dots
    # drift by 0.3 px; with it they sit within 0.15 px (deterministic inputs).
    template = TEMPLATES["arcface"].points
    assert np.abs(dot_centres(reduced, template) - template).max() < 0.15
    np.testing.assert_allclose(
        points @ matrix[:, :2].T + matrix[:, 2], TEMPLATES["arcface"].points, atol=1e-6
    )


def test_pre_aligned_jpeg_passes_through_and_sphereface_crops_it():
    face = face_image(TEMPLATES["arcface"].points, (112, 112), seed=4)
    data = jpeg_bytes(face)
    kept, size, matrix = faces.process_image(
        data, None, PrepConfig(source="s", out="o", align="none"), "x"
    )
    assert kept == data and size == (112, 112) and matrix is None
    cropped, size, _ = faces.process_image(
        data, None, PrepConfig(source="s", out="o", align="sphereface"), "x"
    )
    assert size == (96, 112)
    expected = np.asarray(Image.open(io.BytesIO(data)))[:, 8:104].astype(float)
    assert np.abs(np.asarray(Image.open(io.BytesIO(cropped))).astype(float) - expected).mean() < 2.0


def test_opencv_path_matches_the_pil_path():
    pytest.importorskip("cv2")
    angle = -0.2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    template = TEMPLATES["arcface"].points
    for canvas, factor, fmt in (
        ((1800, 1400), 7.0, "jpeg"),
        ((200, 220), 1.3, "png"),
        ((200, 220), 1.3, "jpeg"),
    ):
        points = factor * (template - 56) @ rot.T + np.array(canvas) / 2
        image = face_image(points, canvas, seed=5, radius=3.5 * factor)
        data = jpeg_bytes(image) if fmt == "jpeg" else _png(image)
        outputs = {}
        for library in ("pil", "opencv"):
            config = PrepConfig(source="s", out="o", image_library=library)
            jpg, size, _ = faces.process_image(data, points.ravel().tolist(), config, "x")
            outputs[library] = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(float)
            assert size == (112, 112)
            assert np.abs(dot_centres(outputs[library], template) - template).max() < 1.0
        assert np.abs(outputs["pil"] - outputs["opencv"]).mean() < 3.0, (canvas, fmt)


def test_auto_library_is_opencv_when_it_imports_else_pil(monkeypatch):
    pytest.importorskip("cv2")
    assert PrepConfig(source="s", out="o").image_library == "opencv"
    assert PrepConfig(source="s", out="o", image_library="pil").image_library == "pil"
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    assert PrepConfig(source="s", out="o").image_library == "pil"


def test_opencv_path_refuses_a_cut_off_jpeg():
    pytest.importorskip("cv2")
    from facetrain.data_prep.images import ImageError

    data = jpeg_bytes(face_image(TEMPLATES["arcface"].points, (112, 112), seed=6))
    config = PrepConfig(source="s", out="o", image_library="opencv")
    with pytest.raises(ImageError) as caught:
        faces.process_image(
            data[: len(data) // 2], TEMPLATES["arcface"].points.ravel().tolist(), config, "cut.jpg"
        )
    assert caught.value.reason == "truncated or corrupt image"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
