"""Bytes in, 8-bit RGB out: every colour mode and every way a file can be bad, named.

Each failure raises `ImageError` whose `reason` is a short, stable category (what
rejects.parquet counts) and whose message names the file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Our own pixel limit decides; PIL's built-in one only warns or fires above it.
Image.MAX_IMAGE_PIXELS = None

REASON_MISSING = "missing file"
REASON_UNREADABLE = "unreadable file"
REASON_EMPTY = "empty file"
REASON_NOT_IMAGE = "not an image"
REASON_CORRUPT = "truncated or corrupt image"
REASON_BOMB = "decompression bomb"


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the category, the message names the file."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}" + (f" ({detail})" if detail else ""))


def read_file(path: str | Path) -> bytes:
    """The bytes of `path`, or ImageError(missing / unreadable / empty)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise ImageError(str(path), REASON_MISSING) from err
    except OSError as err:  # permissions, a directory named like an image, I/O errors
        raise ImageError(str(path), REASON_UNREADABLE, err.strerror or type(err).__name__) from err
    if not data:
        raise ImageError(str(path), REASON_EMPTY)
    return data


def open_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Parse the header only (cheap): format and size are known, pixels not decoded yet."""
    if not data:
        raise ImageError(name, REASON_EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError(name, REASON_BOMB, str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageError(name, REASON_NOT_IMAGE) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(name, REASON_CORRUPT, str(err)) from err
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(name, REASON_CORRUPT, f"size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(name, REASON_BOMB, f"{width}x{height} > {max_pixels} pixels")
    return image


def load_rgb(
    source: str | Path | bytes,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` (a path or the file's bytes) to an 8-bit RGB image.

    `draft_size`: the smallest size still needed; a JPEG much larger than that is decoded at
    1/2, 1/4 or 1/8 scale (PIL `draft`, done inside libjpeg, so it is also much faster). The
    returned image's `info["source_size"]` keeps the full size, to rescale landmarks with.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), name or "<bytes>"
    else:
        data, name = read_file(source), name or str(source)
    return decode_rgb(open_image(data, name, max_pixels), name, draft_size=draft_size)


def decode_rgb(
    image: Image.Image, name: str, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image opened by `open_image` (header parsed once) to 8-bit RGB."""
    source_size = image.size
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (max(1, int(draft_size[0])), max(1, int(draft_size[1]))))
    try:
        image.load()
        rgb = to_rgb8(image)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(name, REASON_CORRUPT, str(err)) from err
    rgb.info["source_size"] = source_size
    return rgb


def to_rgb8(image: Image.Image) -> Image.Image:
    """Grayscale, CMYK, palette, alpha and 16-bit images as 8-bit RGB (alpha over white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values >> 8  # 16-bit -> top 8 bits
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
