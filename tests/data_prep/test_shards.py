"""The per-image path of the shard task: reduced-scale decode agrees with a full decode."""

import io

import numpy as np
from PIL import Image

from data_prep import shards
from data_prep.align import TEMPLATES, align_face
from data_prep.config import PrepConfig
from data_prep.images import decode_rgb, load_rgb
from tests.data_prep.synth import dot_centres, face_image, jpeg_bytes


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

    monkeypatch.setattr(shards, "decode_rgb", recording_decode_rgb)
    config = PrepConfig(source="s", out="o")
    jpg, size, matrix = shards.process_image(data, points.ravel().tolist(), config, "big.jpg")
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
    kept, size, matrix = shards.process_image(
        data, None, PrepConfig(source="s", out="o", align="none"), "x"
    )
    assert kept == data and size == (112, 112) and matrix is None
    cropped, size, _ = shards.process_image(
        data, None, PrepConfig(source="s", out="o", align="sphereface"), "x"
    )
    assert size == (96, 112)
    expected = np.asarray(Image.open(io.BytesIO(data)))[:, 8:104].astype(float)
    assert np.abs(np.asarray(Image.open(io.BytesIO(cropped))).astype(float) - expected).mean() < 2.0
