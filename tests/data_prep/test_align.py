"""Alignment against independent references: linear least squares and a numpy warp."""

import numpy as np
import pytest
from facetrain.data_prep.align import (
    TEMPLATES,
    align_face,
    alignment_matrix,
    similarity_transform,
    transform_points,
    warp_affine,
)
from PIL import Image


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """x' = a x - b y + tx, y' = b x + a y + ty solved as a plain linear least-squares problem."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def _umeyama_svd(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama's general SVD form, with its reflection guard."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    covariance = (dst - dst_mean).T @ (src - src_mean) / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / ((src - src_mean) ** 2).sum(1).mean()
    return np.hstack([scale * rotation, (dst_mean - scale * rotation @ src_mean)[:, None]])


def _bilinear_warp_reference(
    pixels: np.ndarray, matrix: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Inverse mapping, OpenCV convention (pixel i's centre at i), float64, NaN outside."""
    width, height = size
    linear_inverse = np.linalg.inv(matrix[:, :2])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    out_points = np.stack([xs.ravel(), ys.ravel()], 1) - matrix[:, 2]
    src = out_points @ linear_inverse.T
    sx, sy = src[:, 0], src[:, 1]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    h, w = pixels.shape[:2]
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    result = np.full((len(sx), pixels.shape[2]), np.nan)
    i = np.where(inside)[0]
    p = pixels.astype(np.float64)
    top = p[y0[i], x0[i]] * (1 - fx[i, None]) + p[y0[i], x0[i] + 1] * fx[i, None]
    bottom = p[y0[i] + 1, x0[i]] * (1 - fx[i, None]) + p[y0[i] + 1, x0[i] + 1] * fx[i, None]
    result[i] = top * (1 - fy[i, None]) + bottom * fy[i, None]
    return result.reshape(height, width, -1)


def test_similarity_matches_linear_least_squares_on_noisy_points():
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = rng.uniform(0, 200, size=(5, 2))
        angle, scale = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 3)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        dst = scale * src @ rot.T + rng.uniform(-50, 50, 2) + rng.normal(0, 2, (5, 2))
        np.testing.assert_allclose(
            similarity_transform(src, dst), _lstsq_similarity(src, dst), atol=1e-9
        )


def test_exact_similarity_is_recovered_and_reflections_are_refused():
    src = TEMPLATES["arcface"].points
    matrix = np.array([[0.8, -0.6, 10.0], [0.6, 0.8, -4.0]]) * 1.5
    dst = transform_points(matrix, src)
    np.testing.assert_allclose(similarity_transform(src, dst), matrix, atol=1e-9)
    mirrored = src * np.array([-1.0, 1.0])
    found = similarity_transform(src, mirrored)
    assert np.linalg.det(found[:, :2]) > 0


@pytest.mark.parametrize("template", ["arcface", "sphereface"])
def test_aligned_landmarks_and_dots_land_on_the_template(template):
    rng = np.random.default_rng(1)
    chosen = TEMPLATES[template]
    # A face 2.3x the template size, rotated 20 degrees, placed in a 400x300 canvas.
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = 2.3 * chosen.points @ rot.T + np.array([120.0, 40.0])
    landmarks += rng.normal(0, 0.3, landmarks.shape)
    matrix = alignment_matrix(landmarks, template)
    assert np.abs(transform_points(matrix, landmarks) - chosen.points).max() < 1.0

    canvas = np.zeros((300, 400, 3), np.uint8)
    ys, xs = np.mgrid[0:300, 0:400]
    for x, y in landmarks:
        canvas[(xs - x) ** 2 + (ys - y) ** 2 <= 5**2] = 255
    aligned = np.asarray(align_face(Image.fromarray(canvas), landmarks, template)).astype(float)
    assert aligned.shape == (chosen.size[1], chosen.size[0], 3)
    oy, ox = np.mgrid[0 : chosen.size[1], 0 : chosen.size[0]]
    for tx, ty in chosen.points:
        near = (ox - tx) ** 2 + (oy - ty) ** 2 <= 6**2
        weight = aligned[..., 0] * near
        centre = np.array([(weight * ox).sum(), (weight * oy).sum()]) / weight.sum()
        assert np.hypot(*(centre - [tx, ty])) < 1.0


def test_pil_warp_matches_an_independent_numpy_warp():
    rng = np.random.default_rng(2)
    # Smooth random texture, so bilinear interpolation is well defined and comparable.
    coarse = rng.uniform(0, 255, size=(20, 26, 3))
    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((260, 200), Image.BICUBIC))
    landmarks = (
        TEMPLATES["arcface"].points * 1.4 + np.array([60.0, 25.0]) + rng.normal(0, 2, (5, 2))
    )
    matrix = alignment_matrix(landmarks)
    ours = np.asarray(warp_affine(Image.fromarray(texture), matrix, (112, 112))).astype(float)
    reference = _bilinear_warp_reference(texture, matrix, (112, 112))
    valid = ~np.isnan(reference).any(axis=2)
    assert valid.mean() > 0.9
    difference = np.abs(ours - reference)[valid]
    assert difference.max() <= 2.0 and difference.mean() < 0.6


def test_bad_landmarks_are_named():
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        alignment_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="expected one of"):
        align_face(Image.new("RGB", (10, 10)), TEMPLATES["arcface"].points, "vggface")
