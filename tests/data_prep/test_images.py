"""Colour modes to 8-bit RGB against numpy references, reduced decoding, and bad files."""

import io
import os

import numpy as np
import pytest
from facetrain.data_prep.images import (
    REASON_BOMB,
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_MISSING,
    REASON_NOT_IMAGE,
    REASON_UNREADABLE,
    ImageError,
    load_rgb,
)
from PIL import Image


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_grayscale_becomes_three_equal_channels():
    gray = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = np.asarray(load_rgb(_encode(Image.fromarray(gray, "L"), "PNG")))
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_sixteen_bit_png_keeps_the_top_eight_bits():
    values = np.random.default_rng(1).integers(0, 65536, (16, 16)).astype(np.uint16)
    image = Image.fromarray(values)  # I;16
    rgb = np.asarray(load_rgb(_encode(image, "PNG")))
    np.testing.assert_array_equal(rgb[..., 0], (values >> 8).astype(np.uint8))


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.array([0, 85, 170, 255])[None, :]
    rgb = np.asarray(load_rgb(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))).astype(float)
    alpha = rgba[..., 3] / 255.0
    expected_red = 200 * alpha + 255 * (1 - alpha)
    expected_green = 255 * (1 - alpha)
    assert np.abs(rgb[..., 0] - expected_red).max() <= 1
    assert np.abs(rgb[..., 1] - expected_green).max() <= 1


def test_palette_with_transparency_and_cmyk():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    opaque = np.asarray(load_rgb(_encode(palette, "PNG")))
    assert (opaque == [10, 20, 30]).all()
    palette.info["transparency"] = 1
    see_through = np.asarray(load_rgb(_encode(palette, "PNG", transparency=1)))
    assert (see_through == 255).all()
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in ink
    red = np.asarray(load_rgb(_encode(cmyk, "JPEG", quality=100))).astype(int)
    assert red[..., 0].min() > 240 and red[..., 1:].max() < 15


def test_reduced_jpeg_decode_keeps_enough_pixels_and_the_source_size():
    rng = np.random.default_rng(2)
    big = Image.fromarray(rng.integers(0, 255, (800, 1000, 3), dtype=np.uint8))
    data = _encode(big, "JPEG", quality=90)
    image = load_rgb(data, draft_size=(200, 160))
    assert image.size == (250, 200)  # 1/4: the largest reduction still >= the requested size
    assert image.info["source_size"] == (1000, 800)
    assert load_rgb(data).size == (1000, 800)


def test_bad_inputs_raise_with_the_file_and_the_reason(tmp_path):
    good = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    cases = {
        "empty.jpg": (b"", REASON_EMPTY),
        "text.jpg": (b"this is not an image at all", REASON_NOT_IMAGE),
        "cut.jpg": (good[: len(good) // 2], REASON_CORRUPT),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as caught:
            load_rgb(tmp_path / name)
        assert caught.value.reason == reason and name in str(caught.value)
    with pytest.raises(ImageError) as caught:
        load_rgb(tmp_path / "absent.jpg")
    assert caught.value.reason == REASON_MISSING
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError) as caught:
        load_rgb(tmp_path / "folder.jpg")
    assert caught.value.reason == REASON_UNREADABLE
    bomb = _encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageError) as caught:
        load_rgb(bomb, max_pixels=1_000_000, name="bomb.png")
    assert caught.value.reason == REASON_BOMB and "bomb.png" in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_read_permission_is_unreadable(tmp_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(_encode(Image.new("RGB", (8, 8)), "JPEG"))
    path.chmod(0)
    with pytest.raises(ImageError) as caught:
        load_rgb(path)
    assert caught.value.reason == REASON_UNREADABLE and "locked.jpg" in str(caught.value)


def _jpegs() -> dict[str, bytes]:
    """JPEGs of every layout read_header meets: modes, progressive, EXIF and comment segments,
    restart markers, fill bytes before a marker; and sizes that are not square."""
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    files = {
        "rgb": _encode(rgb, "JPEG"),
        "gray": _encode(rgb.convert("L"), "JPEG"),
        "cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "progressive": _encode(rgb, "JPEG", progressive=True),
        "exif+comment": _encode(rgb, "JPEG", exif=exif.tobytes(), comment=b"x" * 300),
        "restart markers": _encode(rgb, "JPEG", restart_marker_blocks=1),
        "png": _encode(rgb, "PNG"),
    }
    plain = files["rgb"]
    files["fill bytes"] = plain[:2] + b"\xff\xff\xff" + plain[2:]
    return files


def test_read_header_agrees_with_pil_on_every_jpeg_layout_and_falls_back_for_the_rest():
    from facetrain.data_prep.images import jpeg_frame, open_image, read_header

    for label, data in _jpegs().items():
        reference = Image.open(io.BytesIO(data))
        header = read_header(data, label)
        assert (header.format, header.mode, header.size) == (
            reference.format,
            reference.mode,
            reference.size,
        ), label
        # Only plain 8-bit L/RGB JPEGs skip PIL; the rest carry the image PIL opened.
        assert (jpeg_frame(data) is None) == (label in ("cmyk", "png")), label
        assert header.pil().size == open_image(data, label).size


@pytest.mark.parametrize("library", ["pil", "opencv"])
def test_a_jpeg_cut_anywhere_is_refused_for_the_reason_pil_gives(library):
    """Every cut is refused, for the reason PIL's own open + decode gives (load_rgb), except one
    case: a file cut after its frame header that PIL cannot identify at all is, to the fast
    header read, a JPEG, and OpenCV's decode calls it truncated rather than not an image."""
    if library == "opencv":
        pytest.importorskip("cv2")
    from facetrain.data_prep.config import PrepConfig
    from facetrain.data_prep.faces import process_image
    from facetrain.data_prep.images import jpeg_frame

    config = PrepConfig(source="/in", out="/out", image_library=library)
    data = _jpegs()["exif+comment"]
    points = [18.0, 20.0, 34.0, 20.0, 26.0, 27.0, 20.0, 33.0, 32.0, 33.0]
    process_image(data, points, config, "whole.jpg")  # the uncut file goes through
    for cut in range(2, len(data) - 2, 7):
        with pytest.raises(ImageError) as expected:
            load_rgb(data[:cut])
        with pytest.raises(ImageError) as caught:
            process_image(data[:cut], points, config, f"cut-{cut}.jpg")
        renamed = (
            library == "opencv"
            and expected.value.reason == REASON_NOT_IMAGE
            and jpeg_frame(data[:cut]) is not None
        )
        assert caught.value.reason == (REASON_CORRUPT if renamed else expected.value.reason), cut


def test_read_header_keeps_the_pixel_limit():
    from facetrain.data_prep.images import read_header

    data = _jpegs()["rgb"]  # 53 x 37
    assert read_header(data, "ok.jpg", max_pixels=53 * 37).size == (53, 37)
    with pytest.raises(ImageError) as caught:
        read_header(data, "big.jpg", max_pixels=53 * 37 - 1)
    assert caught.value.reason == REASON_BOMB and "big.jpg" in str(caught.value)
