"""Optional face detection for images without landmarks (`detect: true`, the `detect` extra).

The detector is dlib's HOG frontal-face detector: its weights are compiled into the dlib
library itself (wheel `dlib-bin`), so nothing is downloaded at run time. (OpenCV 5 no longer
ships its Haar cascades in the opencv-python wheels.) The main face's box becomes a face box
like a manifest's `left, top, width, height`, and from there the usual box alignment
(`landmarks.box_to_landmarks`) makes the crop: a box crop, coarser than five real points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from facetrain.data_prep.errors import PrepInputError

EXTRA = "detect"
REASON_NO_FACE = "no face detected"
REASON_SEVERAL_FACES = "several faces, no clear main face"

# A second face at least this fraction of the largest one's area leaves no clear main face.
MAIN_FACE_AREA_RATIO = 0.8
# dlib's box is tighter than the arcface crop: the crop box whose template points best fit the
# real five points is (left - 0.12 w, top - 0.30 h, 1.21 w, 1.21 h), medians over 1014 LFW
# images with the SphereFace authors' landmarks (spread about 0.1 w).
CROP_BOX_OFFSET = (-0.12, -0.30)
CROP_BOX_SCALE = 1.21
# HOG finds faces from about 80 px; upsampling small images once reaches about 40 px.
UPSAMPLE_BELOW_PIXELS = 400


@dataclass(frozen=True)
class FaceBox:
    left: float
    top: float
    width: float
    height: float

    @property
    def area(self) -> float:
        return self.width * self.height


def require_detector():
    """dlib's frontal-face detector, or PrepInputError naming the extra to install."""
    try:
        import dlib
    except ImportError as err:
        raise PrepInputError(
            f"face detection (--detect) needs the `{EXTRA}` extra: "
            f"pip install 'facetrain[{EXTRA}]' (dlib-bin; its detector ships inside the wheel)"
        ) from err
    return dlib.get_frontal_face_detector()


def choose_main_face(boxes: list[FaceBox]) -> tuple[FaceBox | None, str | None]:
    """(the largest face, None), or (None, reject reason) when there is no clear main face."""
    if not boxes:
        return None, REASON_NO_FACE
    by_area = sorted(boxes, key=lambda box: box.area, reverse=True)
    if len(by_area) > 1 and by_area[1].area >= MAIN_FACE_AREA_RATIO * by_area[0].area:
        return None, REASON_SEVERAL_FACES
    return by_area[0], None


def find_faces(rgb: np.ndarray, detector) -> list[FaceBox]:
    """Every frontal face dlib finds in an 8-bit RGB (H, W, 3) array, in its pixel coordinates."""
    upsample = 1 if max(rgb.shape[:2]) < UPSAMPLE_BELOW_PIXELS else 0
    rects = detector(np.ascontiguousarray(rgb, dtype=np.uint8), upsample)
    return [FaceBox(r.left(), r.top(), r.width(), r.height()) for r in rects]


def crop_box(face: FaceBox) -> tuple[float, float, float, float]:
    """The detector's face box as the `left, top, width, height` box that the arcface
    template fills (what a manifest's face box means)."""
    return (
        face.left + CROP_BOX_OFFSET[0] * face.width,
        face.top + CROP_BOX_OFFSET[1] * face.height,
        CROP_BOX_SCALE * face.width,
        CROP_BOX_SCALE * face.height,
    )
