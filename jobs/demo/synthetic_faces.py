"""Procedural face-like images with exact 5-point landmarks, for the demo and for tests.

An identity is a set of persistent traits (face shape, skin tone, eye spacing, iris, brows,
hair and hairline, glasses, beard, marks); every image of it is the same face under a new
similarity pose (rotation, scale, translation), expression (blink, smile, open mouth),
lighting (gain, gradient, colour cast), background clutter and sensor noise. The nuisances
are chosen so that raw pixels are a poor identity signal while a small CNN learns one.

Rendering is an inverse warp: every output pixel is mapped back into the canonical face
frame, where each part is a signed-distance shape evaluated for a whole batch at once (numpy,
no per-pixel Python). The five landmarks are the canonical points sent through the forward
transform of the same pose, so they follow the face exactly. Pixel coordinates are pixel
indices (x = column, y = row; an integer sits at a pixel centre), as in OpenCV.

Everything is deterministic by seed: an identity's traits come from `(seed, identity)`, an
image's variation from `(seed, identity, image)`, so batching and order do not change pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Canonical frame: u to the right, v downwards, one unit ~ a third of the face height.
SKIN_TONES = np.array(
    [
        [241, 204, 178],
        [224, 172, 138],
        [198, 145, 110],
        [161, 110, 75],
        [120, 80, 52],
        [88, 58, 40],
    ],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [
        [25, 20, 18],
        [70, 45, 30],
        [130, 90, 50],
        [200, 160, 90],
        [150, 60, 30],
        [180, 180, 180],
        [90, 90, 95],
    ],
    dtype=np.float32,
)
IRIS_COLOURS = np.array(
    [[60, 40, 25], [100, 70, 40], [60, 110, 160], [70, 130, 80], [120, 120, 130]], dtype=np.float32
)
MARK_COLOURS = np.array(
    [[180, 30, 40], [30, 60, 170], [30, 130, 60], [40, 30, 30], [200, 150, 20]], dtype=np.float32
)
MARK_KINDS = ("none", "mole", "cheek_stripes", "freckles", "forehead_dot")
FRECKLES = 9
# `render_faces(markers=True)`: one pure colour per landmark, for tests that look for them.
MARKER_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255), (0, 255, 255))
MARKER_RADIUS = 0.06


@dataclass(frozen=True)
class FaceTraits:
    """What stays the same across every image of one identity (canonical-frame units)."""

    face_a: float  # half width of the face ellipse
    face_b: float  # half height
    size: float  # face unit in pixels, as a fraction of the image side
    skin: np.ndarray  # RGB
    eye_x: float  # half the distance between the eyes
    eye_y: float
    eye_a: float
    eye_b: float
    iris: np.ndarray
    brow_gap: float
    brow_thick: float
    brow_tilt: float
    nose_x: float
    nose_y: float
    nose_w: float
    mouth_w: float  # half width, corner to centre
    mouth_y: float
    lip: np.ndarray
    lip_thick: float
    hair: np.ndarray
    hairline: float
    hair_curve: float
    hair_part: float
    glasses: bool
    glasses_colour: np.ndarray
    beard: bool
    mark_kind: int
    mark_colour: np.ndarray
    mark_uv: np.ndarray  # (FRECKLES, 2): positions used by the mark kinds


@dataclass(frozen=True)
class ImageVariation:
    """What changes from one image of an identity to the next."""

    angle: float  # radians
    scale: float
    squash: float  # horizontal compression, a cheap stand-in for yaw that alignment cannot undo
    shear: float
    shift: np.ndarray  # pixels, (dx, dy)
    blink: float  # eye openness multiplier
    smile: float  # mouth curvature
    mouth_open: float
    mouth_stretch: float
    gain: float
    gradient: np.ndarray  # lighting slope per image side, (gx, gy)
    cast: np.ndarray  # per-channel gain
    noise: float
    background: np.ndarray  # two RGB colours, (2, 3)
    bg_angle: float
    clutter: np.ndarray  # (4, 7): centre (u, v), half axes (a, b), RGB, per background blob
    occluder: np.ndarray  # (7,): centre (u, v), half axes, RGB; half axes 0 = none
    gamma: float
    blur: float  # downscale factor before scaling back up; 1 = sharp
    seed: int


def identity_traits(seed: int, identity: int) -> FaceTraits:
    rng = np.random.default_rng([seed, identity, 0xFACE])
    pick = lambda table: table[rng.integers(len(table))] + rng.normal(0, 10, 3).astype(np.float32)  # noqa: E731
    return FaceTraits(
        face_a=rng.uniform(0.78, 0.98),
        face_b=rng.uniform(1.02, 1.22),
        size=rng.uniform(0.26, 0.31),
        skin=np.clip(pick(SKIN_TONES), 0, 255),
        eye_x=rng.uniform(0.29, 0.42),
        eye_y=rng.uniform(-0.30, -0.12),
        eye_a=rng.uniform(0.10, 0.15),
        eye_b=rng.uniform(0.045, 0.075),
        iris=np.clip(pick(IRIS_COLOURS), 0, 255),
        brow_gap=rng.uniform(0.10, 0.19),
        brow_thick=rng.uniform(0.02, 0.05),
        brow_tilt=rng.uniform(-0.35, 0.35),
        nose_x=rng.uniform(-0.03, 0.03),
        nose_y=rng.uniform(0.12, 0.28),
        nose_w=rng.uniform(0.07, 0.14),
        mouth_w=rng.uniform(0.22, 0.36),
        mouth_y=rng.uniform(0.50, 0.64),
        lip=np.clip(
            pick(np.array([[170, 80, 80], [140, 60, 70], [190, 110, 100]], np.float32)), 0, 255
        ),
        lip_thick=rng.uniform(0.03, 0.07),
        hair=np.clip(pick(HAIR_COLOURS), 0, 255),
        hairline=rng.uniform(-0.85, -0.45),
        hair_curve=rng.uniform(-0.4, 0.5),
        hair_part=rng.uniform(-0.35, 0.35),
        glasses=bool(rng.random() < 0.3),
        glasses_colour=np.clip(
            pick(np.array([[20, 20, 20], [120, 30, 30], [40, 40, 120]], np.float32)), 0, 255
        ),
        beard=bool(rng.random() < 0.25),
        mark_kind=int(rng.integers(len(MARK_KINDS))),
        mark_colour=np.clip(pick(MARK_COLOURS), 0, 255),
        mark_uv=np.stack(
            [rng.uniform(-0.6, 0.6, FRECKLES), rng.uniform(-0.1, 0.45, FRECKLES)], axis=1
        ),
    )


def image_variation(seed: int, identity: int, image: int) -> ImageVariation:
    rng = np.random.default_rng([seed, identity, image, 0xB0B])
    return ImageVariation(
        angle=float(np.deg2rad(rng.uniform(-14, 14))),
        scale=rng.uniform(0.88, 1.12),
        squash=rng.uniform(0.78, 1.0),
        shear=rng.uniform(-0.12, 0.12),
        shift=rng.uniform(-0.06, 0.06, 2),
        blink=rng.choice([1.0, rng.uniform(0.3, 1.1)], p=[0.6, 0.4]),
        smile=rng.uniform(-0.35, 0.25),
        mouth_open=max(0.0, rng.uniform(-0.02, 0.04)),
        mouth_stretch=rng.uniform(-0.03, 0.04),
        gain=rng.uniform(0.5, 1.4),
        gradient=rng.normal(0, 0.5, 2),
        cast=rng.uniform(0.75, 1.25, 3),
        noise=rng.uniform(2, 12),
        background=rng.uniform(0, 255, (2, 3)),
        bg_angle=rng.uniform(0, 2 * np.pi),
        clutter=np.concatenate(
            [
                rng.uniform(-1.6, 1.6, (4, 2)),
                rng.uniform(0.15, 0.7, (4, 2)),
                rng.uniform(0, 255, (4, 3)),
            ],
            axis=1,
        ),
        occluder=np.concatenate(
            [
                rng.uniform(-1.0, 1.0, 2),
                rng.uniform(0.15, 0.45, 2) * (rng.random() < 0.3),
                rng.uniform(0, 255, 3),
            ]
        ),
        gamma=rng.uniform(0.7, 1.4),
        blur=rng.choice([1.0, rng.uniform(1.5, 3.0)], p=[0.6, 0.4]),
        seed=int(rng.integers(2**31)),
    )


def canonical_landmarks(traits: FaceTraits, variation: ImageVariation) -> np.ndarray:
    """(5, 2) points in the canonical frame: eyes, nose tip, mouth corners (subject's left first
    as LFW lists them: the eye on the image's left)."""
    mouth_w = traits.mouth_w + variation.mouth_stretch
    return np.array(
        [
            [-traits.eye_x, traits.eye_y],
            [traits.eye_x, traits.eye_y],
            [traits.nose_x, traits.nose_y],
            [-mouth_w, traits.mouth_y],
            [mouth_w, traits.mouth_y],
        ]
    )


def pose_matrix(traits: FaceTraits, variation: ImageVariation, size: int) -> np.ndarray:
    """2x3 forward affine map from canonical units to pixel coordinates: squash and shear in
    the face frame, then rotation, scale and shift (the landmarks go through the same map)."""
    unit = traits.size * variation.scale * size
    cos, sin = np.cos(variation.angle) * unit, np.sin(variation.angle) * unit
    rotation = np.array([[cos, -sin], [sin, cos]])
    deform = np.array([[variation.squash, variation.shear], [0.0, 1.0]])
    centre = (size - 1) / 2 + variation.shift * size
    # The face centre sits a little below the image centre so hair fits above it.
    offset = np.array([centre[0], centre[1] + 0.05 * size])
    return np.hstack([rotation @ deform, offset[:, None]])


def render_faces(
    traits: Sequence[FaceTraits],
    variations: Sequence[ImageVariation],
    size: int = 128,
    markers: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a batch: (N, size, size, 3) uint8 images and (N, 5, 2) landmarks in pixels.

    `markers=True` paints a pure-colour dot on each landmark *in the canonical frame*, so it is
    carried through the same inverse warp as the face: a test can find the dots and check them
    against the landmarks, which come from the forward transform.
    """
    count = len(traits)
    if count != len(variations) or count == 0:
        raise ValueError(
            f"render_faces: need as many variations as traits (>0), got {count} and {len(variations)}"
        )
    matrices = np.stack(
        [pose_matrix(t, v, size) for t, v in zip(traits, variations, strict=True)]
    )  # (N, 2, 3)
    canon = np.stack(
        [canonical_landmarks(t, v) for t, v in zip(traits, variations, strict=True)]
    )  # (N, 5, 2)
    landmarks = canon @ matrices[:, :, :2].transpose(0, 2, 1) + matrices[:, None, :, 2]

    # Inverse warp of the pixel grid into each face's canonical frame.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    linear = matrices[:, :, :2]
    inverse = np.linalg.inv(linear).astype(np.float32)  # (N, 2, 2)
    dx = xs[None] - matrices[:, 0, 2, None, None].astype(np.float32)
    dy = ys[None] - matrices[:, 1, 2, None, None].astype(np.float32)
    u = inverse[:, 0, 0, None, None] * dx + inverse[:, 0, 1, None, None] * dy
    v = inverse[:, 1, 0, None, None] * dx + inverse[:, 1, 1, None, None] * dy
    # Pixels per canonical unit, for antialiasing: the smaller axis of the squashed frame.
    px_per_unit = np.array(
        [t.size * w.scale * w.squash * size for t, w in zip(traits, variations, strict=True)],
        np.float32,
    )
    canvas = _Canvas(u, v, px_per_unit[:, None, None])

    _background(canvas, variations, size)
    hair = _stack(traits, "hair")
    face_a, face_b = _stack(traits, "face_a"), _stack(traits, "face_b")
    # Hair behind the head, ears, then the face.
    canvas.paint(hair, canvas.ellipse(0, -0.12, face_a + 0.12, face_b + 0.08), where=v < 0.25)
    eye_y = _stack(traits, "eye_y")
    for side in (-1, 1):
        canvas.paint(
            _stack(traits, "skin") * 0.92, canvas.ellipse(side * face_a, eye_y + 0.18, 0.12, 0.22)
        )
    face = canvas.ellipse(0, 0, face_a, face_b)
    canvas.paint(_stack(traits, "skin"), face)
    # Cheek shading gives the face some depth under the lighting gradient.
    canvas.paint(
        _stack(traits, "skin") * 0.85, canvas.ellipse(0, 0.35, face_a, face_b * 0.7) * 0.35 * face
    )

    beard = np.array([t.beard for t in traits])[:, None, None]
    mouth_y = _stack(traits, "mouth_y")
    canvas.paint(hair * 0.9, face * (beard & (v > mouth_y - 0.12)) * 0.9)
    _marks(canvas, traits)
    # Fringe: hair over the forehead above a per-identity hairline with a parting.
    hairline = (
        _stack(traits, "hairline")
        + _stack(traits, "hair_curve") * u**2
        - 0.12 * np.abs(u - _stack(traits, "hair_part"))
    )
    canvas.paint(hair, face * canvas.half_plane(v - hairline))

    _eyes(canvas, traits, variations)
    _nose(canvas, traits)
    _mouth(canvas, traits, variations)
    glasses = np.array([t.glasses for t in traits])[:, None, None]
    if glasses.any():
        ring = np.zeros_like(u)
        eye_x = _stack(traits, "eye_x")
        for side in (-1, 1):
            dist = np.hypot(u - side * eye_x, (v - eye_y) * 1.2)
            ring = np.maximum(ring, canvas.band(dist, 0.2, 0.025))
        bridge = canvas.band(v, eye_y, 0.02) * (np.abs(u) < eye_x - 0.2)
        canvas.paint(_stack(traits, "glasses_colour"), np.maximum(ring, bridge) * glasses)

    if markers:
        for point in range(5):
            canvas.paint(
                np.array(MARKER_COLOURS[point], np.float32),
                canvas.disc(
                    canon[:, point, 0, None, None], canon[:, point, 1, None, None], MARKER_RADIUS
                ),
            )
        return np.clip(np.rint(canvas.rgb), 0, 255).astype(np.uint8), landmarks

    occluder = np.array([w.occluder for w in variations], np.float32)[:, :, None, None]
    canvas.paint(
        occluder[:, 4:7, 0, 0][:, None, None],
        canvas.ellipse(occluder[:, 0], occluder[:, 1], occluder[:, 2] + 1e-6, occluder[:, 3] + 1e-6)
        * (occluder[:, 2] > 0),
    )
    _lighting(canvas, variations, size)
    _blur(canvas, variations)
    _noise(canvas, variations)
    return np.clip(np.rint(canvas.rgb), 0, 255).astype(np.uint8), landmarks


class _Canvas:
    """A batch of RGB images and their canonical coordinates; shapes return coverage in [0, 1]."""

    def __init__(self, u: np.ndarray, v: np.ndarray, px_per_unit: np.ndarray) -> None:
        self.u, self.v, self.px_per_unit = u, v, px_per_unit
        self.rgb = np.zeros((*u.shape, 3), np.float32)

    def coverage(self, signed_distance: np.ndarray) -> np.ndarray:
        # One-pixel antialiased edge: signed distance (canonical units) -> pixels -> coverage.
        return np.clip(0.5 - signed_distance * self.px_per_unit, 0.0, 1.0)

    def ellipse(self, cu, cv, a, b) -> np.ndarray:
        radius = np.sqrt(((self.u - cu) / a) ** 2 + ((self.v - cv) / b) ** 2)
        return self.coverage((radius - 1) * np.minimum(a, b))

    def disc(self, cu, cv, r) -> np.ndarray:
        du, dv = self.u - cu, self.v - cv
        return self.coverage(np.sqrt(du * du + dv * dv) - r)

    def band(self, value, centre, half_width) -> np.ndarray:
        return self.coverage(np.abs(value - centre) - half_width)

    def half_plane(self, signed: np.ndarray) -> np.ndarray:
        return self.coverage(signed)

    def paint(self, colour, coverage, where=None) -> None:
        """Blend `colour` (RGB, or one RGB per image shaped (N, 1, 1, 3)) in by `coverage`."""
        if where is not None:
            coverage = coverage * where
        coverage = np.broadcast_to(np.asarray(coverage, np.float32), self.u.shape).reshape(-1)
        # Most parts cover a small share of the frame: touch only the covered pixels.
        covered = np.flatnonzero(coverage)
        if covered.size == 0:
            return
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 4:
            colour = colour.reshape(-1, 3)[covered // (self.u.shape[1] * self.u.shape[2])]
        rgb = self.rgb.reshape(-1, 3)
        rgb[covered] += coverage[covered, None] * (colour - rgb[covered])


def _stack(items: Sequence, name: str) -> np.ndarray:
    values = np.array([getattr(item, name) for item in items], np.float32)
    return values.reshape(len(items), 1, 1, *values.shape[1:])


def _background(canvas: _Canvas, variations: Sequence[ImageVariation], size: int) -> None:
    count, height, width = canvas.u.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / size - 0.5
    angle = _stack(variations, "bg_angle")
    ramp = np.clip(0.5 + np.cos(angle) * xs + np.sin(angle) * ys, 0, 1)[..., None]
    colours = np.array([w.background for w in variations], np.float32)  # (N, 2, 3)
    canvas.rgb[:] = colours[:, None, None, 0] * (1 - ramp) + colours[:, None, None, 1] * ramp
    clutter = np.array([w.clutter for w in variations], np.float32)  # (N, 4, 7)
    for blob in range(clutter.shape[1]):
        c = clutter[:, blob, :, None, None]
        canvas.paint(
            clutter[:, blob, None, None, 4:7],
            canvas.ellipse(c[:, 0] * 1.4, c[:, 1] * 1.4, c[:, 2] + 0.2, c[:, 3] + 0.2),
        )


def _marks(canvas: _Canvas, traits: Sequence[FaceTraits]) -> None:
    kinds = np.array([t.mark_kind for t in traits])
    colour = _stack(traits, "mark_colour")
    uv = np.array([t.mark_uv for t in traits], np.float32)  # (N, FRECKLES, 2)
    u, v = canvas.u, canvas.v
    cover = np.zeros_like(u)
    for kind, name in enumerate(MARK_KINDS):
        chosen = kinds == kind
        if not chosen.any() or name == "none":
            continue
        if name == "mole":
            shape = canvas.disc(uv[:, 0, 0, None, None], uv[:, 0, 1, None, None], 0.05)
        elif name == "cheek_stripes":
            shape = np.zeros_like(u)
            for side in (-1, 1):
                for offset in (0.0, 0.1):
                    along = canvas.band(v - 0.3 * side * (u - side * 0.55), 0.2 + offset, 0.022)
                    shape = np.maximum(shape, along * (np.abs(u - side * 0.55) < 0.16))
        elif name == "freckles":
            shape = np.zeros_like(u)
            for dot in range(FRECKLES):
                shape = np.maximum(
                    shape,
                    canvas.disc(
                        uv[:, dot, 0, None, None] * 0.9,
                        uv[:, dot, 1, None, None] * 0.5 + 0.05,
                        0.025,
                    ),
                )
        else:  # forehead_dot
            shape = canvas.disc(uv[:, 0, 0, None, None] * 0.3, -0.55, 0.07)
        cover = np.where(chosen[:, None, None], shape, cover)
    canvas.paint(colour, cover * 0.7)


def _eyes(
    canvas: _Canvas, traits: Sequence[FaceTraits], variations: Sequence[ImageVariation]
) -> None:
    eye_x, eye_y = _stack(traits, "eye_x"), _stack(traits, "eye_y")
    eye_a = _stack(traits, "eye_a")
    eye_b = _stack(traits, "eye_b") * _stack(variations, "blink")
    hair = _stack(traits, "hair")
    brow_gap, brow_thick, brow_tilt = (
        _stack(traits, "brow_gap"),
        _stack(traits, "brow_thick"),
        _stack(traits, "brow_tilt"),
    )
    u, v = canvas.u, canvas.v
    for side in (-1, 1):
        cu = side * eye_x
        white = canvas.ellipse(cu, eye_y, eye_a, eye_b)
        canvas.paint(np.array([235, 235, 230], np.float32), white)
        iris = canvas.disc(cu, eye_y, eye_a * 0.5) * white
        canvas.paint(_stack(traits, "iris"), iris)
        canvas.paint(
            np.array([10, 10, 10], np.float32), canvas.disc(cu, eye_y, eye_a * 0.22) * white
        )
        # Brow: a tilted arc whose inner end rises or falls with the identity's tilt.
        along = (u - cu) * side
        centre = eye_y - brow_gap - 0.05 + brow_tilt * along * 0.5 + 0.8 * along**2
        brow = canvas.band(v, centre, brow_thick) * canvas.half_plane(np.abs(u - cu) - eye_a * 1.3)
        canvas.paint(hair * 0.8, brow)


def _nose(canvas: _Canvas, traits: Sequence[FaceTraits]) -> None:
    nose_x, nose_y, nose_w = (
        _stack(traits, "nose_x"),
        _stack(traits, "nose_y"),
        _stack(traits, "nose_w"),
    )
    eye_y = _stack(traits, "eye_y")
    skin = _stack(traits, "skin")
    u, v = canvas.u, canvas.v
    # Bridge: a wedge from between the eyes widening down to the tip, a shade darker than skin.
    depth = np.clip((v - eye_y) / (nose_y - eye_y), 0, 1)
    wedge = canvas.half_plane(np.abs(u - nose_x) - nose_w * depth) * (v > eye_y) * (v < nose_y)
    canvas.paint(skin * 0.86, wedge * 0.8)
    canvas.paint(skin * 1.08, canvas.disc(nose_x, nose_y, nose_w * 0.45))
    for side in (-1, 1):
        canvas.paint(
            skin * 0.45,
            canvas.ellipse(nose_x + side * nose_w * 0.55, nose_y + 0.035, nose_w * 0.3, 0.02),
        )


def _mouth(
    canvas: _Canvas, traits: Sequence[FaceTraits], variations: Sequence[ImageVariation]
) -> None:
    mouth_w = _stack(traits, "mouth_w") + _stack(variations, "mouth_stretch")
    mouth_y = _stack(traits, "mouth_y")
    smile = _stack(variations, "smile")
    u, v = canvas.u, canvas.v
    across = np.clip(1 - (u / mouth_w) ** 2, 0, 1)
    # Centre line through both corners; negative curvature pulls the middle down (a smile).
    centre = mouth_y + smile * (u**2 - mouth_w**2)
    profile = np.sqrt(across)
    lips = canvas.coverage(np.abs(v - centre) - _stack(traits, "lip_thick") * profile - 0.006)
    canvas.paint(_stack(traits, "lip"), lips * canvas.half_plane(np.abs(u) - mouth_w))
    inner = canvas.coverage(np.abs(v - centre) - _stack(variations, "mouth_open") * profile - 0.004)
    canvas.paint(
        np.array([60, 20, 25], np.float32), inner * canvas.half_plane(np.abs(u) - mouth_w * 0.95)
    )


def _lighting(canvas: _Canvas, variations: Sequence[ImageVariation], size: int) -> None:
    count, height, width = canvas.u.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / size - 0.5
    gradient = np.array([w.gradient for w in variations], np.float32)
    light = _stack(variations, "gain") * (
        1 + gradient[:, 0, None, None] * xs + gradient[:, 1, None, None] * ys
    )
    canvas.rgb *= np.clip(light, 0.15, 2.0)[..., None] * _stack(variations, "cast")
    gamma = _stack(variations, "gamma")[..., None]
    canvas.rgb[:] = 255.0 * (np.clip(canvas.rgb, 0, 255) / 255.0) ** gamma


def _noise(canvas: _Canvas, variations: Sequence[ImageVariation]) -> None:
    for index, variation in enumerate(variations):
        noise_rng = np.random.default_rng(variation.seed)
        canvas.rgb[index] += (
            noise_rng.standard_normal(canvas.rgb.shape[1:], np.float32) * variation.noise
        )


def _blur(canvas: _Canvas, variations: Sequence[ImageVariation]) -> None:
    # Low resolution, as in frames from far cameras: shrink then enlarge (bilinear).
    height, width = canvas.u.shape[1:]
    for index, variation in enumerate(variations):
        if variation.blur <= 1.0:
            continue
        small = (max(8, round(width / variation.blur)), max(8, round(height / variation.blur)))
        image = Image.fromarray(np.clip(canvas.rgb[index], 0, 255).astype(np.uint8))
        canvas.rgb[index] = np.asarray(
            image.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
        )


def identity_name(identity: int) -> str:
    return f"synth_{identity:05d}"


def images_per_identity(seed: int, identity: int, low: int, high: int) -> int:
    """How many images identity `identity` gets: uniform in [low, high], fixed by seed."""
    return int(np.random.default_rng([seed, identity, 0xC0]).integers(low, high + 1))


@dataclass(frozen=True)
class SyntheticDataset:
    """An identity-per-folder tree like LFW's: `images/<name>/<name>_0001.jpg` + landmarks.txt."""

    images: Path
    landmarks: Path
    counts: dict[str, int]  # identity name -> number of images

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def iter_faces(
    identities: Sequence[int],
    seed: int,
    images: tuple[int, int],
    size: int = 128,
    batch: int = 64,
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]:
    """Yield batches of ((identity, image number from 1), pixels, landmarks) in a fixed order."""
    jobs = [
        (identity, number)
        for identity in identities
        for number in range(1, images_per_identity(seed, identity, *images) + 1)
    ]
    traits = {identity: identity_traits(seed, identity) for identity in identities}
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        pixels, landmarks = render_faces(
            [traits[identity] for identity, _ in chunk],
            [image_variation(seed, identity, number) for identity, number in chunk],
            size,
        )
        yield chunk, pixels, landmarks


def face_relpath(name: str, number: int) -> str:
    """LFW's layout: image `number` (from 1) of identity `name`."""
    return f"{name}/{name}_{number:04d}.jpg"


def jpeg_bytes(image: np.ndarray | Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def landmark_line(relpath: str, points: np.ndarray, decimals: int = 2) -> str:
    """One row of LFW's whitespace landmark format: `relpath x1 y1 ... x5 y5` (no newline)."""
    return relpath + " " + " ".join(f"{value:.{decimals}f}" for value in np.ravel(points))


def write_dataset(
    out: str | Path,
    identities: int | Sequence[int],
    images: tuple[int, int] = (10, 20),
    size: int = 128,
    seed: int = 0,
    quality: int = 92,
    progress: bool = True,
) -> SyntheticDataset:
    """Write `out/images/<name>/<name>_NNNN.jpg` and `out/landmarks.txt` (LFW's whitespace format:
    `relpath x1 y1 ... x5 y5`, pixel coordinates of the written images)."""
    from tqdm import tqdm

    if isinstance(identities, int):
        identities = range(identities)
    low, high = images
    if not 1 <= low <= high:
        raise ValueError(f"images per identity: expected 1 <= low <= high, got {images}")
    out = Path(out)
    root = out / "images"
    counts = {identity_name(i): images_per_identity(seed, i, low, high) for i in identities}
    lines: list[str] = []
    with tqdm(
        total=sum(counts.values()), desc="synthetic faces", unit="img", disable=not progress
    ) as bar:
        for chunk, pixels, landmarks in iter_faces(identities, seed, images, size):
            for (identity, number), image, points in zip(chunk, pixels, landmarks, strict=True):
                name = identity_name(identity)
                relpath = face_relpath(name, number)
                (root / name).mkdir(parents=True, exist_ok=True)
                (root / relpath).write_bytes(jpeg_bytes(image, quality))
                lines.append(landmark_line(relpath, points))
            bar.update(len(chunk))
    landmarks_path = out / "landmarks.txt"
    landmarks_path.write_text("\n".join(lines) + "\n")
    return SyntheticDataset(images=root, landmarks=landmarks_path, counts=counts)
