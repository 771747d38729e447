"""The demo's synthetic faces: deterministic, landmarks on the drawn parts, LFW-format files."""

from __future__ import annotations

import numpy as np
import pytest
from facetrain.jobs.demo.pairs import write_pairs
from facetrain.jobs.demo.synthetic_faces import (
    MARKER_COLOURS,
    identity_traits,
    image_variation,
    render_faces,
    write_dataset,
)
from PIL import Image


def _batch(seed, keys, size=128, markers=False):
    traits = [identity_traits(seed, identity) for identity, _ in keys]
    variations = [image_variation(seed, identity, image) for identity, image in keys]
    return render_faces(traits, variations, size, markers=markers)


KEYS = [(0, 1), (0, 2), (3, 1), (7, 5), (11, 2)]


def test_same_seed_same_pixels_whatever_the_batching():
    pixels, landmarks = _batch(5, KEYS)
    again, again_landmarks = _batch(5, KEYS)
    np.testing.assert_array_equal(pixels, again)
    np.testing.assert_array_equal(landmarks, again_landmarks)
    # One at a time gives the same images as the batch: nothing leaks between batch members.
    for index, key in enumerate(KEYS):
        alone, alone_landmarks = _batch(5, [key])
        np.testing.assert_array_equal(alone[0], pixels[index])
        np.testing.assert_allclose(alone_landmarks[0], landmarks[index])
    other, _ = _batch(6, KEYS)
    assert np.abs(other.astype(int) - pixels).mean() > 10


def test_images_of_one_identity_differ_and_identities_differ():
    pixels, landmarks = _batch(0, [(1, 1), (1, 2), (2, 1)])
    assert np.abs(pixels[0].astype(int) - pixels[1]).mean() > 5  # pose, light, noise change
    assert not np.allclose(landmarks[0], landmarks[1])
    a, b = identity_traits(0, 1), identity_traits(0, 2)
    assert (a.eye_x, a.mouth_y, a.face_a) != (b.eye_x, b.mouth_y, b.face_a)


@pytest.mark.parametrize("seed", [0, 1])
def test_landmarks_sit_on_markers_drawn_through_the_inverse_warp(seed):
    # Markers are painted in the canonical frame and reach the image through the per-pixel
    # inverse warp; landmarks come from the forward map. Their agreement checks both.
    keys = [(identity, image) for identity in range(6) for image in (1, 2)]
    pixels, landmarks = _batch(seed, keys, size=256, markers=True)
    for index in range(len(keys)):
        for point, colour in enumerate(MARKER_COLOURS):
            inside = np.all(pixels[index].astype(int) == colour, axis=-1)
            ys, xs = np.nonzero(inside)
            assert len(xs) >= 8, f"image {keys[index]}: marker {point} not found"
            centre = np.array([xs.mean(), ys.mean()])
            distance = np.linalg.norm(centre - landmarks[index, point])
            assert distance < 0.5, f"image {keys[index]} point {point}: {distance:.2f} px off"


def test_landmark_order_is_left_eye_right_eye_nose_mouth():
    _, landmarks = _batch(0, [(identity, 1) for identity in range(20)])
    eyes_left, eyes_right, nose, mouth_left, mouth_right = np.moveaxis(landmarks, 1, 0)
    assert np.all(eyes_left[:, 0] < eyes_right[:, 0])
    assert np.all(mouth_left[:, 0] < mouth_right[:, 0])
    eye_y = (eyes_left[:, 1] + eyes_right[:, 1]) / 2
    mouth_y = (mouth_left[:, 1] + mouth_right[:, 1]) / 2
    assert np.all((eye_y < nose[:, 1]) & (nose[:, 1] < mouth_y))


def test_written_dataset_matches_renderer_and_lfw_layout(tmp_path):
    dataset = write_dataset(
        tmp_path, identities=[4, 9], images=(2, 4), size=96, seed=3, progress=False
    )
    rows = [line.split() for line in dataset.landmarks.read_text().splitlines()]
    assert len(rows) == dataset.total == sum(dataset.counts.values())
    assert all(len(row) == 11 for row in rows)
    for name, count in dataset.counts.items():
        assert sorted(p.name for p in (dataset.images / name).iterdir()) == [
            f"{name}_{number:04d}.jpg" for number in range(1, count + 1)
        ]
    # The file holds the renderer's landmarks for the image at that path.
    relpath, *values = rows[-1]
    name, number = relpath.split("/")[0], int(relpath[-8:-4])
    identity = int(name.split("_")[1])
    pixels, landmarks = _batch(3, [(identity, number), (identity, number % 2 + 1)], size=96)
    np.testing.assert_allclose(np.array(values, float).reshape(5, 2), landmarks[0], atol=0.006)
    with Image.open(dataset.images / relpath) as image:
        assert image.size == (96, 96) and image.mode == "RGB"
        # JPEG (of noisy pixels) is near the rendered image, far from another image of the face.
        decoded = np.asarray(image).astype(int)
        assert np.abs(decoded - pixels[0]).mean() * 3 < np.abs(decoded - pixels[1]).mean()


def _parse_pairs(path):
    lines = path.read_text().splitlines()
    folds, per_fold = map(int, lines[0].split())
    return folds, per_fold, [line.split("\t") for line in lines[1:]]


def test_pairs_file_reads_back_as_lfw_pairs(tmp_path):
    counts = {f"synth_{i:05d}": 2 + i % 5 for i in range(12)}
    path = write_pairs(tmp_path / "pairs.txt", counts, folds=4, pairs_per_fold=6, seed=1)
    folds, per_fold, rows = _parse_pairs(path)
    assert (folds, per_fold, len(rows)) == (4, 6, 4 * 2 * 6)
    seen = set()
    for index, row in enumerate(rows):
        same = index % (2 * per_fold) < per_fold
        if same:
            name, i, j = row[0], int(row[1]), int(row[2])
            assert len(row) == 3 and 1 <= i < j <= counts[name]
            pair = frozenset([(name, i), (name, j)])
        else:
            assert len(row) == 4 and row[0] != row[2]
            i, j = int(row[1]), int(row[3])
            assert 1 <= i <= counts[row[0]] and 1 <= j <= counts[row[2]]
            pair = frozenset([(row[0], i), (row[2], j)])
        assert pair not in seen
        seen.add(pair)


def test_pairs_refuse_what_cannot_be_drawn(tmp_path):
    with pytest.raises(ValueError, match="same-identity pairs wanted"):
        write_pairs(tmp_path / "p.txt", {"a": 2, "b": 2}, folds=2, pairs_per_fold=2)
    with pytest.raises(ValueError, match=">= 2 identities"):
        write_pairs(tmp_path / "p.txt", {"a": 5}, folds=1, pairs_per_fold=1)
