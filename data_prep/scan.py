"""Scanning: read each listed image once for its content hash and header (no pixel decode).

`scan_images` yields each image's SCAN_SCHEMA row with the bytes and parsed header, so the
process task (process.py) decodes from them without reading or parsing the file again. Rows
with a `reason` are rejects.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from facetrain.data_prep.align import alignment_matrix, get_template, transform_scale
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.images import ImageError, ImageHeader, decode_rgb, read_file, read_header
from facetrain.data_prep.recordio import IndexedRecordFile, RecordIOError
from facetrain.data_prep.sources import Chunk, FolderChunk, RecChunk

REASON_NO_LANDMARKS = "no landmarks"
REASON_OUTSIDE = "landmarks outside image"
REASON_DEGENERATE = "degenerate landmarks"
REASON_BAD_RECORD = "corrupt record"
DETECT_MAX_SIDE = 1024  # detection needs no more pixels than this across

SCAN_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("source", pa.string()),
        ("offset", pa.int64()),  # .rec byte offset; null for files
        ("sha1", pa.binary(20)),
        ("bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("landmarks", pa.list_(pa.float64(), 10)),
        ("face_size", pa.float64()),  # source pixels across the output crop
        ("detector_score", pa.float64()),  # --detect: the main face's detector score; else null
        ("reason", pa.string()),  # null: usable
    ]
)


class Scanned(NamedTuple):
    row: dict  # SCAN_SCHEMA
    data: bytes | None = None  # the file's (or record's) bytes, when it could be read
    header: ImageHeader | None = None  # format, mode and size of `data` (pixels not decoded)
    matrix: np.ndarray | None = None  # source -> template alignment, when landmarks gave one


def scan_images(chunk: Chunk, config: PrepConfig) -> Iterator[Scanned]:
    if isinstance(chunk, RecChunk):
        return _scan_rec(chunk, config)
    return _scan_folder(chunk, config)


def _row(
    identity: str,
    source: str,
    offset: int | None = None,
    data: bytes | None = None,
    size: tuple[int | None, int | None] = (None, None),
    landmarks: tuple[float, ...] | None = None,
    face_size: float | None = None,
    reason: str | None = None,
    detector_score: float | None = None,
) -> dict:
    """One SCAN_SCHEMA row; `data` (the file's bytes) gives its hash and size."""
    return {
        "identity": identity,
        "source": source,
        "offset": offset,
        "sha1": hashlib.sha1(data).digest() if data else None,
        "bytes": len(data) if data is not None else None,
        "width": size[0],
        "height": size[1],
        "landmarks": list(landmarks) if landmarks is not None else None,
        "face_size": face_size,
        "detector_score": detector_score,
        "reason": reason,
    }


def _scan_folder(chunk: FolderChunk, config: PrepConfig):
    root = chunk.root
    detector = None
    if config.detect and config.align != "none":
        from facetrain.data_prep.detect import require_detector

        detector = require_detector(config.detector, config.upsample)
    for entry in chunk.entries:
        try:
            data = read_file(os.path.join(root, entry.relpath))
            image = read_header(data, entry.relpath, config.max_image_pixels)
        except ImageError as err:
            yield Scanned(_row(entry.identity, entry.relpath, reason=err.reason))
            continue
        size = image.size
        if config.align == "none":
            row = _row(entry.identity, entry.relpath, data=data, size=size, face_size=min(size))
            yield Scanned(row, data, image)
            continue
        landmarks, score = entry.landmarks, None
        if landmarks is None and detector is not None:
            try:
                landmarks, score, reason = detected_landmarks(image, entry.relpath, detector)
            except ImageError as err:
                landmarks, reason = None, err.reason
            if reason is not None:
                row = _row(entry.identity, entry.relpath, data=data, size=size, reason=reason)
                yield Scanned(row)
                continue
        if landmarks is None:
            row = _row(
                entry.identity, entry.relpath, data=data, size=size, reason=REASON_NO_LANDMARKS
            )
            yield Scanned(row)
            continue
        points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        reason, face_size, matrix = landmark_problem(points, size, config.align)
        row = _row(
            entry.identity,
            entry.relpath,
            data=data,
            size=size,
            landmarks=landmarks,
            face_size=face_size,
            reason=reason,
            detector_score=score,
        )
        yield Scanned(row, data, image, matrix)


def detected_landmarks(
    image: ImageHeader, name: str, detector
) -> tuple[tuple[float, ...] | None, float | None, str | None]:
    """(five points of the main face, its detector score, None) or (None, None, reject reason),
    in source pixels: the detector's box, then the 68-point predictor reduced to five."""
    width, height = image.size
    # Large JPEGs are detected on a reduced decode (libjpeg scaling); points are scaled back.
    shrink = min(1.0, DETECT_MAX_SIDE / max(width, height))
    rgb = decode_rgb(image.pil(), name, draft_size=(width * shrink, height * shrink))
    scale = width / rgb.width
    face, reason = detector.detect(np.asarray(rgb))
    if face is None:
        return None, None, reason
    # Pixel centres sit at integers in both images (OpenCV convention), so a reduced image's
    # point q is the source point scale * q + (scale - 1) / 2.
    points = face.points * scale + (scale - 1) / 2
    return tuple(points.ravel().tolist()), float(face.box.score), None


def landmark_problem(
    points: np.ndarray, size: tuple[int, int], template: str
) -> tuple[str | None, float | None, np.ndarray | None]:
    """(reject reason or None, face size in source pixels, alignment matrix) for five points."""
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    if min(left, top) < 0 or right > size[0] - 1 or bottom > size[1] - 1:
        return REASON_OUTSIDE, None, None
    try:
        matrix = alignment_matrix(points, template)
        scale = transform_scale(matrix)
    except (ValueError, np.linalg.LinAlgError):
        return REASON_DEGENERATE, None, None
    if not np.isfinite(scale) or scale <= 0:
        return REASON_DEGENERATE, None, None
    return None, get_template(template).size[0] / scale, matrix


def _scan_rec(chunk: RecChunk, config: PrepConfig):
    name = Path(chunk.rec_path).name
    offsets = dict(chunk.entries)
    with IndexedRecordFile(chunk.rec_path, offsets) as records:
        for index, offset in chunk.entries:
            source = f"{name}#{index}"
            try:
                record = records.read(index)
            except RecordIOError:
                yield Scanned(_row("", source, offset=offset, reason=REASON_BAD_RECORD))
                continue
            identity = rec_identity(record.label)
            try:
                image = read_header(record.payload, source, config.max_image_pixels)
            except ImageError as err:
                yield Scanned(_row(identity, source, offset=offset, reason=err.reason))
                continue
            row = _row(
                identity,
                source,
                offset=offset,
                data=record.payload,
                size=image.size,
                face_size=min(image.size),
            )
            yield Scanned(row, record.payload, image)


def rec_identity(label: float) -> str:
    """Zero-padded, so sorting names keeps the numeric order of the original labels."""
    return f"{int(label):08d}"
