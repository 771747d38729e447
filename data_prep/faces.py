"""One face: source bytes -> aligned JPEG (decode at reduced scale, warp, encode)."""

from __future__ import annotations

import math

import numpy as np
from facetrain.data_prep.align import alignment_matrix, get_template, transform_scale, warp_affine
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.images import ImageHeader, decode_rgb, encode_jpeg, read_header
from PIL import Image


def process_image(
    data: bytes,
    landmarks: list[float] | None,
    config: PrepConfig,
    name: str,
    header: ImageHeader | None = None,
    matrix: np.ndarray | None = None,
) -> tuple[bytes, tuple[int, int], np.ndarray | None]:
    """(JPEG bytes, size, source->output transform or None) of one face.

    `header`, `matrix`: the header already read from `data` and the landmarks' alignment
    matrix, when the scan has them (saves parsing and fitting again).
    """
    if header is None:
        header = read_header(data, name, config.max_image_pixels)
    if config.align == "none" or landmarks is None:
        return _keep_aligned(data, header, config, name), aligned_size(config), None
    template = get_template(config.align)
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if matrix is None:
        matrix = alignment_matrix(points, config.align)
    width = header.size[0]
    scale = transform_scale(matrix)  # output pixels per source pixel
    # Decoding at 1/2..1/8 is lossless for the crop as long as the face keeps >= output size.
    max_reduction = int(min(8, 2 ** math.floor(math.log2(1 / scale)))) if scale < 0.5 else 1
    if config.image_library == "opencv":
        from facetrain.data_prep import opencv_ops

        pixels, reduction = opencv_ops.decode_bgr(data, header, name, max_reduction)
    else:
        draft = (math.ceil(width * scale), math.ceil(header.size[1] * scale))
        image = decode_rgb(header.pil(), name, draft_size=draft if max_reduction > 1 else None)
        reduction = 2 ** round(math.log2(width / image.size[0]))
    if reduction > 1:
        # Pixel j of the reduced image covers source pixels [r*j, r*j + r - 1].
        # The least-squares similarity commutes with rescaling its source points, so the
        # reduced image's transform is the full one composed with p = r * q + (r - 1) / 2.
        linear = matrix[:, :2]
        offset = linear @ np.full(2, (reduction - 1) / 2) + matrix[:, 2]
        warp = np.column_stack([linear * reduction, offset])
    else:
        warp = matrix
    if config.image_library == "opencv":
        face = opencv_ops.warp_bgr(pixels, warp, template.size)
        return opencv_ops.encode_jpeg_bgr(face, config.jpeg_quality), template.size, matrix
    face = warp_affine(image, warp, template.size)
    return encode_jpeg(face, config.jpeg_quality), template.size, matrix


def aligned_size(config: PrepConfig) -> tuple[int, int]:
    return get_template("arcface" if config.align == "none" else config.align).size


def _keep_aligned(data: bytes, header: ImageHeader, config: PrepConfig, name: str) -> bytes:
    """Pre-aligned faces: the original JPEG bytes when they already fit, else re-encoded."""
    size = aligned_size(config)
    is_jpeg = header.format == "JPEG"
    image = decode_rgb(header.pil(), name)  # a full decode even to pass through: catches truncation
    if is_jpeg and image.size == size and not config.reencode:
        return data
    if image.height == size[1] and image.width > size[0]:
        # An arcface 112x112 crop holds the sphereface 96x112 one: the template is 8 px left.
        margin = (image.width - size[0]) // 2
        image = image.crop((margin, 0, margin + size[0], size[1]))
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return encode_jpeg(image, config.jpeg_quality)
