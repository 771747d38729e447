"""Image -> tensor conversions shared by training, evaluation and embedding.

The one convention every backbone expects: RGB, float, CHW, `pixel / 127.5 - 1` in [-1, 1].
Decoding and flipping stay in uint8 HWC (cheap to move between loader processes); the
conversion to float happens once per batch, after collation.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import simplejpeg
import torch
from facetrain.data_prep.align import similarity_transform
from PIL import Image


def decode_rgb(data: bytes, where: str = "image", out: np.ndarray | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 HWC RGB array; `where` names the sample in the error.

    Baseline JPEGs go through simplejpeg (libjpeg-turbo, about twice PIL's speed here and
    the same pixels), straight into `out` when given; anything else through PIL."""
    if data[:2] == b"\xff\xd8":
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            # CMYK/YCCK: PIL's conversion to RGB is the reference (libjpeg-turbo's differs by 1).
            if colorspace in ("YCbCr", "Gray", "RGB") and (
                out is None or out.shape == (height, width, 3)
            ):
                return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        except (ValueError, TypeError):
            pass  # let PIL decide (and name the problem)
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except Exception as err:  # PIL raises several unrelated types for bad data
        raise ValueError(f"{where}: cannot decode image ({err})") from err
    if out is None:
        return pixels
    if out.shape != pixels.shape:
        raise ValueError(
            f"{where}: image is {pixels.shape[1]}x{pixels.shape[0]}, expected {out.shape[1]}x{out.shape[0]}"
        )
    out[...] = pixels
    return out


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """One PIL image or uint8 HWC RGB array -> float CHW tensor in [-1, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"to_tensor: expected uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
    return normalize_batch(torch.from_numpy(np.ascontiguousarray(image))[None])[0]


def normalize_batch(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1] (`pixel / 127.5 - 1`)."""
    batch, height, width, _ = images_uint8.shape
    out = torch.empty((batch, 3, height, width), dtype=torch.float32)
    out.copy_(images_uint8.permute(0, 3, 1, 2))  # one pass: layout and dtype together
    return out.div_(127.5).sub_(1.0)


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror a HWC image left-right (aligned faces are symmetric about the vertical axis)."""
    return image[:, ::-1]


def landmark_jitter_matrix(
    rng: np.random.Generator, sigma: float, points: np.ndarray
) -> np.ndarray:
    """The (2, 3) similarity that re-aligns a face aligned on `points` (the template, in
    output pixels) as if its landmarks had been found N(0, sigma^2) pixels off per
    coordinate: what a landmark detector's scatter does to the crops it produces. Training
    on such crops teaches the model the misalignment it will see from detected points."""
    noisy = points + rng.normal(0.0, sigma, points.shape)
    return similarity_transform(noisy, points)


def warp_face(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A HWC uint8 face moved by a (2, 3) affine matrix (dst = matrix @ src), same size;
    edge pixels repeat into the corners the move uncovers."""
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
