"""The hand-packed ustar writer against the standard library's tarfile, and webdataset reading it."""

import hashlib
import io
import tarfile

import pytest
import webdataset as wds
from facetrain.data_prep.tar_writer import ShardTarWriter, ustar_header


def _samples() -> list[tuple[str, dict[str, bytes]]]:
    sizes = [0, 1, 511, 512, 513, 1024, 9000]  # empty, block edges, several blocks
    return [
        (
            f"train_{index:06d}_{index % 7:04d}",
            {
                "jpg": bytes((index + n) % 251 for n in range(size)),
                "cls": str(index).encode(),
                "json": b'{"identity": "x"}',
            },
        )  # fmt: skip
        for index, size in enumerate(sizes)
    ]


def _tarfile_bytes(samples) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key, fields in samples:
            for extension, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                info.uname = info.gname = "facetrain"
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("count", [0, 1, 7])
def test_archive_is_byte_identical_to_tarfile_and_hashed_as_written(count):
    samples = _samples()[:count]
    buffer = io.BytesIO()
    writer = ShardTarWriter(buffer)
    for key, fields in samples:
        writer.write_sample(key, fields)
    writer.close()
    written = buffer.getvalue()
    assert written == _tarfile_bytes(samples)
    assert writer.bytes == len(written) and writer.sha256 == hashlib.sha256(written).hexdigest()


def test_webdataset_reads_every_sample_back(tmp_path):
    path = tmp_path / "shard.tar"
    with open(path, "wb") as handle:
        writer = ShardTarWriter(handle)
        for key, fields in _samples():
            writer.write_sample(key, fields)
        writer.close()
    read = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [sample["__key__"] for sample in read] == [key for key, _ in _samples()]
    for sample, (_, fields) in zip(read, _samples(), strict=True):
        assert {name: sample[name] for name in fields} == fields


def test_names_that_need_pax_headers_are_refused():
    assert len(ustar_header("x" * 100, 3)) == 512
    with pytest.raises(ValueError, match="over 100 bytes"):
        ustar_header("x" * 101, 3)
    with pytest.raises(UnicodeEncodeError):
        ustar_header("é.jpg", 3)
