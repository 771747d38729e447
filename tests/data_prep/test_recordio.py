"""The .rec/.idx reader against records written plainly in the test (no mxnet anywhere)."""

import struct

import numpy as np
import pytest
from facetrain.data_prep.recordio import MAGIC, IndexedRecordFile, RecordIOError, read_index, unpack
from facetrain.jobs.demo.synthetic_faces import jpeg_bytes
from PIL import Image

from tests.data_prep.synth import write_rec


def _faces(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        jpeg_bytes(Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)))
        for _ in range(count)
    ]


def test_records_read_back_with_labels_and_payloads(tmp_path):
    payloads = _faces(5)
    items = [
        (7, payloads[0]),
        (7, payloads[1]),
        (3, payloads[2]),
        (12, payloads[3]),
        (12, payloads[4]),
    ]
    rec = write_rec(tmp_path / "train", items)
    offsets = dict(read_index(rec.with_suffix(".idx")))
    assert len(offsets) == 1 + 5 + 3
    with IndexedRecordFile(rec, offsets) as records:
        header = records.read(0)
        assert header.flag == 2 and header.labels == (6.0, 9.0)
        for index, (label, payload) in enumerate(items, start=1):
            record = records.read(index)
            assert record.label == label and record.payload == payload
        identity_ranges = [records.read(i).labels for i in range(6, 9)]
    assert identity_ranges == [(3.0, 4.0), (1.0, 3.0), (4.0, 6.0)]


def test_payload_holding_the_magic_word_is_split_and_rejoined(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + magic + b"tail!"  # 4-byte aligned in the record
    rec = write_rec(tmp_path / "odd", [(1, payload)], identity_headers=False)
    raw = rec.read_bytes()
    assert raw.count(magic) == 4  # framing split it: the payload's own magics were cut out
    with IndexedRecordFile(rec, dict(read_index(rec.with_suffix(".idx")))) as records:
        assert records.read(0).payload == payload


def test_bad_records_are_named(tmp_path):
    with pytest.raises(RecordIOError, match="shorter than its 24-byte header"):
        unpack(b"\0" * 10)
    rec = tmp_path / "bad.rec"
    rec.write_bytes(b"\0" * 64)
    with (
        IndexedRecordFile(rec, {0: 0}) as records,
        pytest.raises(RecordIOError, match="no record magic at offset 0"),
    ):
        records.read(0)
    (tmp_path / "bad.idx").write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match=r"bad.idx:2"):
        list(read_index(tmp_path / "bad.idx"))


def test_multi_label_header_is_unpacked():
    data = struct.pack("<IfQQ", 3, 0.0, 1, 2) + struct.pack("<3f", 1.5, 2.5, 3.5) + b"JPEG"
    record = unpack(data)
    assert (
        record.labels == (1.5, 2.5, 3.5)
        and record.payload == b"JPEG"
        and (record.id, record.id2) == (1, 2)
    )
