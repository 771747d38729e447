"""Five-point face alignment: a least-squares similarity transform to a fixed template.

Coordinates follow OpenCV's convention (pixel i's centre is at i), the one in which the
arcface template and published landmark sets are given, so these crops match insightface's
`cv2.warpAffine` crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Left eye, right eye, nose tip, left mouth corner, right mouth corner (insightface arcface).
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


@dataclass(frozen=True)
class Template:
    name: str
    points: np.ndarray  # (5, 2) in output pixels
    size: tuple[int, int]  # (width, height)


TEMPLATES: dict[str, Template] = {
    "arcface": Template("arcface", ARCFACE_112, (112, 112)),
    # SphereFace's 96x112 crop is the arcface template shifted 8 px left.
    "sphereface": Template("sphereface", ARCFACE_112 - np.array([8.0, 0.0]), (96, 112)),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"alignment template {name!r}: expected one of {sorted(TEMPLATES)}"
        ) from None


def similarity_transform(src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray:
    """The (2, 3) rotation+uniform-scale+translation that best maps src onto dst (least squares).

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns", specialised to 2-D: with centred points, the optimal scaled rotation
    [[a, -b], [b, a]] has a = sum(src . dst) / |src|^2 and b = sum(src x dst) / |src|^2, the same
    optimum as the SVD form (a reflection is never chosen), without an SVD per image.
    """
    src = np.asarray(src_points, dtype=np.float64)
    dst = np.asarray(dst_points, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(
            f"similarity_transform: expected two (N, 2) arrays, got {src.shape} and {dst.shape}"
        )
    # Plain floats: for five points numpy's per-call overhead is most of the cost (~70 us an
    # image in numpy, ~10 us here), and prep fits one transform per face.
    count = len(src)
    src_xy, dst_xy = src.tolist(), dst.tolist()
    src_mx, src_my = (sum(column) / count for column in zip(*src_xy, strict=True))
    dst_mx, dst_my = (sum(column) / count for column in zip(*dst_xy, strict=True))
    src_norm = dot = cross = 0.0
    for (x, y), (u, v) in zip(src_xy, dst_xy, strict=True):
        x, y, u, v = x - src_mx, y - src_my, u - dst_mx, v - dst_my
        src_norm += x * x + y * y
        dot += x * u + y * v
        cross += x * v - y * u
    if src_norm <= 0:
        raise ValueError("similarity_transform: source points are all equal")
    a, b = dot / src_norm, cross / src_norm
    return np.array(
        [
            [a, -b, dst_mx - (a * src_mx - b * src_my)],
            [b, a, dst_my - (b * src_mx + a * src_my)],
        ]
    )


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_scale(matrix: np.ndarray) -> float:
    """Output pixels per source pixel of a similarity transform."""
    (a, b, _), (c, d, _) = matrix.tolist()
    return math.sqrt(abs(a * d - b * c))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    linear_inverse = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear_inverse, -linear_inverse @ matrix[:, 2:3]])


def warp_affine(image: Image.Image, matrix: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Warp `image` by the source->output (2, 3) `matrix` into an image of `size`, bilinear.

    PIL's AFFINE wants output->source coefficients in continuous coordinates (pixel centres at
    i + 0.5), so the OpenCV-convention inverse is conjugated by that half-pixel shift.
    """
    inverse = invert_affine(matrix)
    linear, offset = inverse[:, :2], inverse[:, 2]
    offset = offset + 0.5 - linear @ np.array([0.5, 0.5])
    coefficients = (linear[0, 0], linear[0, 1], offset[0], linear[1, 0], linear[1, 1], offset[1])
    return image.transform(
        size, Image.Transform.AFFINE, data=coefficients, resample=Image.Resampling.BILINEAR
    )


def alignment_matrix(landmarks: np.ndarray, template: str = "arcface") -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks: expected shape (5, 2), got {landmarks.shape}")
    return similarity_transform(landmarks, get_template(template).points)


def align_face(image: Image.Image, landmarks: np.ndarray, template: str = "arcface") -> Image.Image:
    """The RGB face crop of `template`'s size whose five points sit on the template."""
    chosen = get_template(template)
    matrix = alignment_matrix(landmarks, template)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return warp_affine(image, matrix, chosen.size)
