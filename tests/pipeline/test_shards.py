"""The loader's tar reader against webdataset's own iterator (the reference), every format."""

import dataclasses
import io
import tarfile

import pytest
from facetrain.pipeline.data.shards import iter_identities, iter_raw_samples
from webdataset.tariterators import tarfile_samples


def write_tar(path, members, tar_format):
    with tarfile.open(path, "w", format=tar_format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1.5  # a float mtime makes PAX write an extended header
            tar.addfile(info, io.BytesIO(data))


MEMBERS = [
    ("a/00001_0000.jpg", b"jpeg-bytes-1"),
    ("a/00001_0000.cls", b"1"),
    ("a/00001_0001.jpg", b"x" * 700),  # spans two blocks
    ("a/00001_0001.cls", b"1"),
    ("deep/" + "d" * 120 + "/00002_0000.jpg", b""),  # long path: prefix / pax / GNU long name
    ("deep/" + "d" * 120 + "/00002_0000.cls", b"2"),
    ("b/00003_0000.seg.png", b"png"),  # extension with a dot
    ("b/00003_0000.cls", b"3"),
]


@pytest.mark.parametrize(
    "tar_format", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]
)
def test_tar_reader_matches_webdataset(tmp_path, tar_format):
    members = (
        MEMBERS if tar_format != tarfile.USTAR_FORMAT else [m for m in MEMBERS if len(m[0]) < 100]
    )
    path = tmp_path / "train-000000.tar"
    write_tar(path, members, tar_format)
    expected = [
        {k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")}
        for sample in tarfile_samples([{"url": str(path)}])
    ]
    got = list(iter_raw_samples(str(path)))
    assert got == expected
    assert len(got) == (4 if tar_format != tarfile.USTAR_FORMAT else 3)


def test_errors_name_the_shard_and_sample(tmp_path):
    path = tmp_path / "train-000007.tar"
    write_tar(path, [("00001_0000.jpg", b"j"), ("00001_0000.json", b"{}")], tarfile.USTAR_FORMAT)
    with pytest.raises(
        ValueError, match=r"shard train-000007.tar: sample 00001_0000 has no .cls entry"
    ):
        list(iter_identities(str(path)))
    truncated = tmp_path / "train-000008.tar"
    write_tar(
        truncated, [("00001_0000.jpg", b"j" * 2000), ("00001_0000.cls", b"1")], tarfile.USTAR_FORMAT
    )
    truncated.write_bytes(truncated.read_bytes()[:1200])
    with pytest.raises(ValueError, match="train-000008.tar: truncated"):
        list(iter_identities(str(truncated)))


def test_urls_stream_through_webdataset_gopen(tmp_path):
    """`file://` and `pipe:` sources take the stream path (short reads included)."""
    from facetrain.pipeline.data.shards import read_dataset_index

    from tests.pipeline.shards import write_shards

    root = write_shards(tmp_path / "data", [2, 3, 1], num_shards=1, size=16)
    local = read_dataset_index(str(root))
    remote = read_dataset_index(f"file://{root}")
    assert remote.shards[0].url == f"file://{root}/shards/train-000000.tar"
    expected = [(i.label, i.keys, i.images) for i in iter_identities(local.shards[0].url)]
    for url in (remote.shards[0].url, f"pipe:cat {local.shards[0].url}"):
        assert [(i.label, i.keys, i.images) for i in iter_identities(url)] == expected
    assert sorted(len(keys) for _, keys, _ in expected) == [1, 2, 3]


def test_a_bad_dataset_json_names_the_file_and_the_key(tmp_path):
    import json
    import re

    from facetrain.data_prep.shard_format import DatasetFormatError
    from facetrain.pipeline.data.shards import read_dataset_index

    from tests.pipeline.shards import write_shards

    root = write_shards(tmp_path / "data", [2, 3], num_shards=1, size=16)
    location = re.escape(f"{root}/dataset.json")
    with pytest.raises(ValueError, match=f"^{location}: missing key 'splits.val' "):
        read_dataset_index(str(root), "val")
    tree = json.loads((root / "dataset.json").read_text())
    tree["splits"]["train"]["shards"][0]["identities"] = [2]
    (root / "dataset.json").write_text(json.dumps(tree))
    with pytest.raises(
        DatasetFormatError, match=f"^{location}: key 'splits.train.shards.0.identities': "
    ):
        read_dataset_index(str(root))
    tree["splits"]["train"]["shards"][0]["identities"] = 2
    del tree["num_classes"]
    (root / "dataset.json").write_text(json.dumps(tree))
    with pytest.raises(DatasetFormatError, match=f"^{location}: missing key 'num_classes'$"):
        read_dataset_index(str(root))


def _shard_bytes_at_member_boundary(data: bytes, keep_samples: int, members_per_sample: int = 3):
    """The first `keep_samples` samples of a tar, cut right after a member (no trailer)."""
    offset = 0
    for _ in range(keep_samples * members_per_sample):
        size = int(data[offset + 124 : offset + 136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + size + (-size) % 512
    return data[:offset]


@pytest.mark.parametrize("how", ["local", "url"])
def test_a_shard_cut_at_a_member_boundary_is_an_error_naming_it(tmp_path, how):
    from facetrain.pipeline.data.shards import ShardIntegrityError, read_dataset_index

    from tests.pipeline.shards import write_shards

    root = write_shards(tmp_path / "data", [4, 3, 5], num_shards=1, size=16)
    index = read_dataset_index(str(root))
    shard = index.shards[0]
    path = root / "shards" / "train-000000.tar"
    path.write_bytes(_shard_bytes_at_member_boundary(path.read_bytes(), keep_samples=6))
    if how == "url":  # no size on open: the count, size and hash at the end name it
        shard = dataclasses.replace(shard, url=f"pipe:cat {shard.url}")
        with pytest.raises(
            ShardIntegrityError,
            match=r"train-000000.tar: 6 samples, dataset.json lists 12; .* bytes",
        ):
            list(iter_identities(shard))
    else:
        with pytest.raises(ShardIntegrityError, match=r"train-000000.tar: \d+ bytes, dataset.json"):
            next(iter_identities(shard))


def test_a_changed_byte_of_the_same_size_fails_the_sha256(tmp_path):
    from facetrain.pipeline.data.shards import (
        ShardIntegrityError,
        read_dataset_index,
        verify_shards,
    )

    from tests.pipeline.shards import write_shards

    root = write_shards(tmp_path / "data", [4, 3, 5, 2], num_shards=2, size=16)
    index = read_dataset_index(str(root))
    assert verify_shards(index, progress=False) == []
    assert sum(len(i.images) for s in index.shards for i in iter_identities(s)) == 14
    path = root / "shards" / "train-000001.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside the first member's payload: still a valid tar
    path.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match=r"train-000001.tar: sha256 [0-9a-f]{16}\.\.\., "):
        list(iter_identities(index.shards[1]))
    problems = verify_shards(index, progress=False)
    assert len(problems) == 1 and "train-000001.tar: sha256" in problems[0]
