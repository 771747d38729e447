"""The loader's tar reader against webdataset's own iterator (the reference), every format."""

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
