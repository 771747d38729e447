"""Bytes in, 8-bit RGB out: every colour mode and every way a file can be bad, named.

Each failure raises `ImageError` whose `reason` is a short, stable category (what
rejects.parquet counts) and whose message names the file.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
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
        # Not Path.read_bytes: its path parsing costs ~20 us a face.
        with open(path, "rb") as handle:
            data = handle.read()
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
    _check_size(name, *image.size, max_pixels)
    return image


def _check_size(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(name, REASON_CORRUPT, f"size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(name, REASON_BOMB, f"{width}x{height} > {max_pixels} pixels")


@dataclass
class ImageHeader:
    """An image's format, mode and size, read without decoding; `pil()` opens it with PIL."""

    data: bytes
    name: str
    format: str
    mode: str
    size: tuple[int, int]
    opened: Image.Image | None = field(default=None, repr=False)

    def pil(self) -> Image.Image:
        """The file opened with PIL, for a PIL decode (its header parsed the first time only)."""
        if self.opened is None:
            self.opened = open_image(self.data, self.name)
        return self.opened


def read_header(data: bytes, name: str, max_pixels: int | None = None) -> ImageHeader:
    """`open_image`'s checks and facts, with a plain 8-bit JPEG's read from its frame header
    alone: PIL's parse of every marker costs about 25x more, and an OpenCV decode never needs it.
    Anything else is opened with PIL, which also names what is wrong with a bad file."""
    frame = jpeg_frame(data)
    if frame is None:
        image = open_image(data, name, max_pixels)
        return ImageHeader(data, name, image.format, image.mode, image.size, image)
    width, height, mode = frame
    _check_size(name, width, height, max_pixels)
    return ImageHeader(data, name, "JPEG", mode, (width, height))


# Start-of-frame markers (ITU T.81 table B.1): every coding process except DHT/DAC/JPG-ext.
_JPEG_FRAME_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_MODES = {1: "L", 3: "RGB"}  # PIL's modes for 1 and 3 components


def jpeg_frame(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, "L" or "RGB") from an 8-bit JPEG's frame header, or None for anything
    else (not a JPEG, CMYK, 12-bit, a size left to a DNL marker, markers cut off or malformed):
    those go to PIL, which decides how to read or reject them."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
        elif marker in (0xD9, 0xDA):  # end of image, or scan data, before any frame header
            return None
        elif marker in _JPEG_FRAME_MARKERS:
            if pos + 10 > end:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
            mode = _JPEG_MODES.get(components)
            if precision != 8 or mode is None or width == 0 or height == 0:
                return None
            return width, height, mode
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


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
