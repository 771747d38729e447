"""Face detection and five landmarks for images without a landmark row (`--detect`).

Everything ships inside installed packages (the `detect` extra), so nothing downloads at run
time: dlib's HOG detector is compiled into dlib (wheel `dlib-bin`); the MMOD CNN detector and
the 68-point shape predictor come in `face-recognition-models`. The main face's box, in HOG's
frame, goes to the 68-point predictor, and its points reduce to the template's five (eye
centres, nose tip, mouth corners), which then align exactly like the points of a landmark file.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from facetrain.data_prep.errors import PrepInputError

EXTRA = "detect"
MODELS_PACKAGE = "face_recognition_models"
PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"
REASON_NO_FACE = "no face detected"
REASON_SEVERAL_FACES = "several faces, no clear main face"

DetectorKind = Literal["hog", "cnn"]

# Faces whose side is within this factor of the largest one's are "close in size": among them,
# the one nearest the image centre is the main face (datasets crop around their subject), unless
# another is nearly as central, by less than this fraction of the largest face's width. A
# bystander nearer the camera is often 1.2-1.45x the subject's size: at 0.8x the area (1.12x the
# side) the bystander won, and that was every one of the CNN's 7 failures in 400 seeded LFW
# images (BENCHMARKS.md, "Detected landmarks"). A face 1.5x the side of all others is main
# wherever it is.
MAIN_FACE_SIDE_RATIO = 1.5
MAIN_FACE_AREA_RATIO = 1 / MAIN_FACE_SIDE_RATIO**2
MAIN_FACE_CENTRE_MARGIN = 0.5
# HOG finds faces from about 80 px; upsampling small images once reaches about 40 px.
UPSAMPLE_BELOW_PIXELS = 400

# iBUG 300-W 68-point scheme (0-based), the one dlib's shape_predictor_68_face_landmarks was
# trained on: 36-41 the contour of the eye on the image's left (the subject's right eye),
# 42-47 the other eye, 30 the nose tip, 48 and 54 the outer mouth corners.
EYE_LEFT_68 = slice(36, 42)
EYE_RIGHT_68 = slice(42, 48)
NOSE_TIP_68 = 30
MOUTH_LEFT_68, MOUTH_RIGHT_68 = 48, 54

# The 68-point predictor was trained on HOG detector boxes; an MMOD box is framed differently
# (smaller, higher), so it is mapped to the HOG frame first: left + dx w, top + dy h, scale s.
# Medians over 140 LFW images where both detectors found one face (seeded subset of 150,
# `benchmarks/detect_landmarks.py --fit-mmod`).
MMOD_TO_HOG_OFFSET = (0.017, 0.087)
MMOD_TO_HOG_SCALE = 1.086
# A median mapping frames turned faces badly: MMOD's boxes come in coarse steps and sit on the
# head, not the features. On all of LFW, 2.2 % of the CNN's faces got points over 0.3
# inter-ocular distances off where HOG's points were fine (median 0.046), and View 2 accuracy
# fell 2.6-3.2 pp. So the CNN's main face is framed by the HOG box that overlaps its mapped box
# by at least this IoU (HOG is ~40x cheaper than MMOD); only faces HOG misses keep the mapping.
HOG_FRAME_MIN_IOU = 0.3

# Where 5-point annotations sit relative to the points reduced from the 68, per point (left
# eye, right eye, nose, left and right mouth corner), in inter-ocular units along and across
# the eye line (`to_annotation_convention`).
# Medians over 396 seeded LFW images (seed 2, HOG boxes; `--fit-points --images 400`).
FIVE_POINT_OFFSETS = (
    (-0.0047, -0.0264),
    (+0.0028, -0.0293),
    (-0.0039, +0.0294),
    (+0.0030, -0.0189),
    (-0.0036, -0.0160),
)


@dataclass(frozen=True)
class FaceBox:
    left: float
    top: float
    width: float
    height: float
    score: float = 0.0  # the detector's own score (HOG: SVM margin; MMOD: confidence)

    @property
    def area(self) -> float:
        return self.width * self.height

    def iou(self, other: FaceBox) -> float:
        """Intersection over union of the two boxes."""
        width = min(self.left + self.width, other.left + other.width) - max(self.left, other.left)
        height = min(self.top + self.height, other.top + other.height) - max(self.top, other.top)
        inter = max(0.0, width) * max(0.0, height)
        return inter / (self.area + other.area - inter) if inter else 0.0


@dataclass(frozen=True)
class DetectedFace:
    box: FaceBox  # the detector's own box
    points: np.ndarray  # (5, 2) template order, source pixels
    landmark_box: FaceBox  # the box the 68-point predictor read (HOG's frame)


class FaceDetector:
    """A dlib face detector (HOG or MMOD) plus the 68-point shape predictor."""

    def __init__(self, kind: DetectorKind = "hog", upsample: int | None = None) -> None:
        dlib, models = _import_dlib()
        if kind not in ("hog", "cnn"):
            raise PrepInputError(f"detector {kind!r}: expected 'hog' or 'cnn'")
        if upsample is not None and upsample < 0:
            raise PrepInputError(f"upsample {upsample}: expected a count >= 0")
        self.kind = kind
        self.upsample = upsample
        self._dlib = dlib
        # The CNN's faces are framed by HOG's boxes too (HOG_FRAME_MIN_IOU).
        self._hog = dlib.get_frontal_face_detector()
        if kind == "cnn":
            self._mmod = dlib.cnn_face_detection_model_v1(str(models / MMOD_DETECTOR))
        self._predictor = dlib.shape_predictor(str(models / PREDICTOR_68))

    def find_faces(self, rgb: np.ndarray) -> list[FaceBox]:
        """Every face in an 8-bit RGB (H, W, 3) array, in its pixel coordinates."""
        if self.kind == "hog":
            return self._hog_faces(rgb)
        pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
        return [
            FaceBox(d.rect.left(), d.rect.top(), d.rect.width(), d.rect.height(), d.confidence)
            for d in self._mmod(pixels, self._upsample(rgb))
        ]

    def _upsample(self, rgb: np.ndarray) -> int:
        if self.upsample is not None:
            return self.upsample
        return 1 if max(rgb.shape[:2]) < UPSAMPLE_BELOW_PIXELS else 0

    def _hog_faces(self, rgb: np.ndarray) -> list[FaceBox]:
        pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
        rects, scores, _ = self._hog.run(pixels, self._upsample(rgb), 0.0)
        return [
            FaceBox(r.left(), r.top(), r.width(), r.height(), float(score))
            for r, score in zip(rects, scores, strict=True)
        ]

    def landmark_box(self, rgb: np.ndarray, face: FaceBox) -> FaceBox:
        """The box the 68-point predictor reads `face` of `rgb` in: HOG's frame, which it was
        trained on. A CNN face takes the HOG box of the same face where HOG finds one, else
        its box mapped to that frame."""
        if self.kind == "hog":
            return face
        mapped = mmod_to_hog_frame(face)
        hog = max(self._hog_faces(rgb), key=mapped.iou, default=None)
        if hog is not None and mapped.iou(hog) >= HOG_FRAME_MIN_IOU:
            return FaceBox(hog.left, hog.top, hog.width, hog.height, face.score)
        return mapped

    def points_68(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 68 iBUG points of the face in `box` (HOG's frame), (68, 2) pixels."""
        rect = self._dlib.rectangle(
            round(box.left),
            round(box.top),
            round(box.left + box.width) - 1,
            round(box.top + box.height) - 1,
        )
        shape = self._predictor(np.ascontiguousarray(rgb, dtype=np.uint8), rect)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], np.float64)

    def detect(self, rgb: np.ndarray) -> tuple[DetectedFace | None, str | None]:
        """(the main face with its five points, None) or (None, reject reason)."""
        height, width = rgb.shape[:2]
        face, reason = choose_main_face(self.find_faces(rgb), (width, height))
        if face is None:
            return None, reason
        box = self.landmark_box(rgb, face)
        points = to_annotation_convention(five_from_68(self.points_68(rgb, box)))
        return DetectedFace(face, points, box), None


def _import_dlib():
    """(dlib, the folder of face-recognition-models' model files).

    The models package is located, not imported: its __init__ needs pkg_resources, which
    current setuptools no longer ships; the .dat files are all that is used.
    """
    hint = (
        f"face detection (--detect) needs the `{EXTRA}` extra: pip install 'facetrain[{EXTRA}]' "
        "(dlib-bin and face-recognition-models; the detectors and the landmark model ship "
        "inside them)"
    )
    try:
        import dlib
    except ImportError as err:
        raise PrepInputError(hint) from err
    try:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PrepInputError(hint)
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in (PREDICTOR_68, MMOD_DETECTOR) if not (models / name).is_file()]
    if missing:
        raise PrepInputError(f"{hint}; {models} lacks {', '.join(missing)}")
    return dlib, models


def require_extra() -> None:
    """PrepInputError naming the `detect` extra unless dlib and the model files are installed."""
    _import_dlib()


def detection_available() -> bool:
    """Whether the `detect` extra is installed (dlib and the model files)."""
    try:
        _import_dlib()
    except PrepInputError:
        return False
    return True


def require_detector(kind: DetectorKind = "hog", upsample: int | None = None) -> FaceDetector:
    """A FaceDetector, or PrepInputError naming the extra to install."""
    return FaceDetector(kind, upsample)


def five_from_68(points: np.ndarray) -> np.ndarray:
    """(5, 2) left eye, right eye, nose tip, left and right mouth corner from 68 iBUG points."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"five_from_68: expected (68, 2) points, got {points.shape}")
    return np.stack(
        [
            points[EYE_LEFT_68].mean(axis=0),
            points[EYE_RIGHT_68].mean(axis=0),
            points[NOSE_TIP_68],
            points[MOUTH_LEFT_68],
            points[MOUTH_RIGHT_68],
        ]
    )


def face_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(origin, x axis, y axis, unit) of five points: the eyes' midpoint, the unit vectors along
    and across the eye line, the inter-ocular distance. Offsets in it do not depend on the
    face's position, size or roll."""
    left_eye, right_eye = points[0], points[1]
    across = right_eye - left_eye
    unit = float(np.linalg.norm(across))
    x_axis = across / unit
    y_axis = np.array([-x_axis[1], x_axis[0]])  # image y points down: towards the mouth
    return (left_eye + right_eye) / 2, x_axis, y_axis, unit


def to_annotation_convention(points: np.ndarray) -> np.ndarray:
    """Five points from the 68-point model moved to where 5-point annotations put them.

    Eye centres from six contour points and 68-point mouth corners sit slightly apart from
    the 5-point convention that aligned datasets (and LFW's landmark file) follow; faces
    aligned from uncorrected points are framed a little differently from the faces a model
    is trained and evaluated on. `FIVE_POINT_OFFSETS` are medians over LFW images, in the
    face frame (`benchmarks/detect_landmarks.py --fit-points`)."""
    _, x_axis, y_axis, unit = face_frame(points)
    offsets = np.asarray(FIVE_POINT_OFFSETS, dtype=np.float64)
    return points + unit * (offsets[:, :1] * x_axis + offsets[:, 1:] * y_axis)


def mmod_to_hog_frame(face: FaceBox) -> FaceBox:
    """An MMOD box moved and scaled to where the HOG detector would put the same face."""
    width, height = MMOD_TO_HOG_SCALE * face.width, MMOD_TO_HOG_SCALE * face.height
    return FaceBox(
        face.left + MMOD_TO_HOG_OFFSET[0] * face.width,
        face.top + MMOD_TO_HOG_OFFSET[1] * face.height,
        width,
        height,
        face.score,
    )


def choose_main_face(
    boxes: list[FaceBox], image_size: tuple[int, int] | None = None
) -> tuple[FaceBox | None, str | None]:
    """(the main face, None), or (None, reject reason) when there is no clear main face.

    The largest face, or, when others are close to it in size, the one nearest the centre of
    an image of `image_size` (width, height); without a size, faces close in size reject."""
    if not boxes:
        return None, REASON_NO_FACE
    largest = max(boxes, key=lambda box: box.area)
    close = [box for box in boxes if box.area >= MAIN_FACE_AREA_RATIO * largest.area]
    if len(close) == 1:
        return largest, None
    if image_size is None:
        return None, REASON_SEVERAL_FACES
    centre_x, centre_y = image_size[0] / 2, image_size[1] / 2

    def off_centre(box: FaceBox) -> float:
        return math.hypot(box.left + box.width / 2 - centre_x, box.top + box.height / 2 - centre_y)

    nearest, runner_up = sorted(close, key=off_centre)[:2]
    if off_centre(runner_up) - off_centre(nearest) < MAIN_FACE_CENTRE_MARGIN * largest.width:
        return None, REASON_SEVERAL_FACES
    return nearest, None
