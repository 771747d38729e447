"""Faces with known landmarks for the data_prep tests, and a RecordIO writer.

Not the demo's rendered faces (facetrain.jobs.demo.synthetic_faces): alignment checks need a
white dot on each landmark of a dark background, whose centre survives warping and JPEG and is
found by brightness alone; a rendered face has bright skin all around its landmarks. The
landmark-list format and JPEG encoding are the demo module's.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from facetrain.data_prep.align import TEMPLATES
from facetrain.jobs.demo.synthetic_faces import landmark_line
from PIL import Image

MAGIC = 0xCED7230A


def face_landmarks(rng: np.random.Generator, canvas: tuple[int, int]) -> np.ndarray:
    """The template's points under a random similarity that keeps them inside `canvas`."""
    width, height = canvas
    angle = rng.uniform(-0.4, 0.4)
    scale = rng.uniform(0.9, 1.6) * min(width, height) / 160
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centred = TEMPLATES["arcface"].points - 56.0
    return scale * centred @ rot.T + np.array([width / 2, height / 2]) + rng.uniform(-5, 5, 2)


def face_image(
    landmarks: np.ndarray, canvas: tuple[int, int], seed: int, radius: float = 4.0
) -> Image.Image:
    """A smooth random background with a white dot on each landmark (for pixel checks)."""
    rng = np.random.default_rng(seed)
    width, height = canvas
    coarse = rng.uniform(0, 120, size=(6, 6, 3)).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).copy()
    ys, xs = np.mgrid[0:height, 0:width]
    for x, y in landmarks:
        pixels[(xs - x) ** 2 + (ys - y) ** 2 <= radius**2] = 255
    return Image.fromarray(pixels)


def dot_centres(image: np.ndarray, points: np.ndarray, radius: float = 7.0) -> np.ndarray:
    """Brightness-weighted centre of the white dot near each expected point."""
    brightness = np.clip(image.astype(float).min(axis=2) - 150, 0, None)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    centres = []
    for x, y in points:
        weight = brightness * (((xs - x) ** 2 + (ys - y) ** 2) <= radius**2)
        centres.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    return np.array(centres)


def make_folder_dataset(
    root: Path, counts: dict[str, int], seed: int = 0, canvas: tuple[int, int] = (160, 180)
) -> dict[str, np.ndarray]:
    """ROOT/<identity>/<nnnn>.png images and their landmarks (relpath -> (5, 2))."""
    rng = np.random.default_rng(seed)
    landmarks: dict[str, np.ndarray] = {}
    for identity, count in counts.items():
        (root / identity).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            relpath = f"{identity}/{index:04d}.png"
            points = face_landmarks(rng, canvas)
            face_image(points, canvas, seed=int(rng.integers(1 << 30))).save(root / relpath)
            landmarks[relpath] = points
    return landmarks


def write_landmark_lines(path: Path, landmarks: dict[str, np.ndarray]) -> Path:
    path.write_text(
        "".join(
            landmark_line(relpath, points, decimals=4) + "\n"
            for relpath, points in landmarks.items()
        )
    )
    return path


# ---- insightface RecordIO, written plainly (the reader under test lives in data_prep) ----


def pack_record(
    flag: int, label: float | list[float], payload: bytes, id_: int = 0, id2: int = 0
) -> bytes:
    if flag > 0:
        labels = list(label)
        return (
            struct.pack("<IfQQ", flag, 0.0, id_, id2) + struct.pack(f"<{flag}f", *labels) + payload
        )
    return struct.pack("<IfQQ", 0, float(label), id_, id2) + payload


def _frames(data: bytes) -> bytes:
    """dmlc framing; a payload holding the magic at a 4-byte boundary is split there."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(data) - 3, 4) if data[i : i + 4] == magic]
    parts, start = [], 0
    for cut in cuts:
        parts.append(data[start:cut])
        start = cut + 4
    parts.append(data[start:])
    out = b""
    for number, part in enumerate(parts):
        if len(parts) == 1:
            flag = 0
        elif number == 0:
            flag = 1
        elif number == len(parts) - 1:
            flag = 3
        else:
            flag = 2
        out += (
            struct.pack("<II", MAGIC, (flag << 29) | len(part))
            + part
            + b"\0" * ((4 - len(part) % 4) % 4)
        )
    return out


def write_rec(
    prefix: Path, images_by_label: list[tuple[int, bytes]], identity_headers: bool = True
) -> Path:
    """insightface layout: record 0 header, image records 1..n, then one record per identity
    (without `identity_headers`: image records only, from index 0)."""
    records: list[bytes] = []
    labels = sorted({label for label, _ in images_by_label})
    first_identity_record = len(images_by_label) + 1
    if identity_headers:
        records.append(
            pack_record(2, [first_identity_record, first_identity_record + len(labels)], b"")
        )
    ranges: dict[int, list[int]] = {}
    for index, (label, payload) in enumerate(images_by_label, start=len(records)):
        records.append(pack_record(0, float(label), payload, id_=index))
        ranges.setdefault(label, []).append(index)
    if identity_headers:
        for label in labels:
            records.append(pack_record(2, [min(ranges[label]), max(ranges[label]) + 1], b""))
    rec_path = prefix.with_suffix(".rec")
    index_lines = []
    with open(rec_path, "wb") as handle:
        for index, record in enumerate(records):
            index_lines.append(f"{index}\t{handle.tell()}\n")
            handle.write(_frames(record))
    prefix.with_suffix(".idx").write_text("".join(index_lines))
    return rec_path
