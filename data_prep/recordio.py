"""insightface's MXNet RecordIO (`train.rec` + `train.idx`) read without mxnet.

Framing (dmlc-core recordio): each record is `uint32 magic 0xced7230a`, `uint32 lrecord`
(top 3 bits: continuation flag, low 29: length), the payload, then zero padding to 4 bytes.
A payload that itself contains the magic word was split there by the writer (flags 1 start,
2 middle, 3 end); the reader puts the magic back between the parts.

Payload (mxnet.recordio.pack): header struct `<IfQQ` (flag, label, id, id2); when flag > 0,
`flag` float32 labels follow the header and `label` is unused. insightface layout: record 0's
labels are (first identity record, end of identity records), image records are
1 .. first identity record - 1, and identity record k's labels are its image range [a, b).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = 0xCED7230A
HEADER = struct.Struct("<IfQQ")
_FRAME = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    """A .rec/.idx that cannot be read; the message names the file and the offset."""


@dataclass(frozen=True)
class Record:
    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int
    payload: bytes  # the image bytes for image records

    @property
    def label(self) -> float:
        return self.labels[0]


def unpack(data: bytes) -> Record:
    if len(data) < HEADER.size:
        raise RecordIOError(
            f"record of {len(data)} bytes is shorter than its {HEADER.size}-byte header"
        )
    flag, label, id_, id2 = HEADER.unpack_from(data)
    body = data[HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordIOError(
                f"record declares {flag} labels but has {len(body)} bytes after its header"
            )
        labels = struct.unpack_from(f"<{flag}f", body)
        body = body[4 * flag :]
    else:
        labels = (label,)
    return Record(flag, tuple(labels), id_, id2, body)


def read_payload_at(handle: BinaryIO, offset: int, name: str = ".rec") -> bytes:
    """The payload of the record starting at `offset` (joining continuation parts)."""
    handle.seek(offset)
    parts: list[bytes] = []
    while True:
        frame = handle.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            raise RecordIOError(f"{name}: record at offset {offset} is truncated")
        magic, lrecord = _FRAME.unpack(frame)
        if magic != MAGIC:
            raise RecordIOError(
                f"{name}: no record magic at offset {handle.tell() - 8} (found {magic:#x})"
            )
        flag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        data = handle.read(length)
        if len(data) < length:
            raise RecordIOError(f"{name}: record at offset {offset} is truncated")
        handle.read((4 - length % 4) % 4)
        parts.append(data)
        if flag in (0, 3):
            break
        if flag not in (1, 2):
            raise RecordIOError(f"{name}: bad continuation flag {flag} at offset {offset}")
    return MAGIC.to_bytes(4, "little").join(parts)


def read_index(path: str | Path) -> Iterator[tuple[int, int]]:
    """Stream `(record index, byte offset)` from a .idx file (`index\\toffset` lines)."""
    with open(path, encoding="ascii") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                index, offset = line.split()
                yield int(index), int(offset)
            except ValueError:
                raise RecordIOError(
                    f"{path}:{line_number}: expected 'index<TAB>offset', got {line.strip()!r}"
                ) from None


class IndexedRecordFile:
    """Random access to records of a .rec by index, through its .idx offsets."""

    def __init__(self, rec_path: str | Path, offsets: dict[int, int]) -> None:
        self.rec_path = Path(rec_path)
        self.offsets = offsets
        self._handle: BinaryIO | None = None

    def __enter__(self) -> IndexedRecordFile:
        self._handle = open(self.rec_path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()

    def read(self, index: int) -> Record:
        if self._handle is None:
            raise RuntimeError("IndexedRecordFile used outside `with`")
        if index not in self.offsets:
            raise RecordIOError(f"{self.rec_path}: record {index} is not in the index")
        return self.read_at(self.offsets[index])

    def read_at(self, offset: int) -> Record:
        if self._handle is None:
            raise RuntimeError("IndexedRecordFile used outside `with`")
        return unpack(read_payload_at(self._handle, offset, str(self.rec_path)))


def index_path_for(rec_path: str | Path) -> Path:
    return Path(rec_path).with_suffix(".idx")
