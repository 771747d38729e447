"""The process step: faces the planner drops are never decoded, and chunk files resume safely."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from facetrain.data_prep import run_prep
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.process import chunk_folder, chunk_name, process_chunk
from facetrain.data_prep.sources import iter_chunks, open_source
from facetrain.data_prep.storage import OutputStore
from facetrain.jobs.demo.synthetic_faces import jpeg_bytes
from PIL import Image

from tests.data_prep.synth import make_folder_dataset, write_landmark_lines, write_rec


@pytest.fixture
def folder_with_duplicates(tmp_path) -> tuple[Path, Path]:
    """ann: 8 images, two of them byte-identical copies of a third; bob: 3; cat: 1."""
    landmarks = make_folder_dataset(tmp_path / "faces", {"ann": 6, "bob": 3, "cat": 1}, seed=4)
    for copy in ("ann/0006.png", "ann/0007.png"):
        shutil.copy(tmp_path / "faces" / "ann" / "0001.png", tmp_path / "faces" / copy)
        landmarks[copy] = landmarks["ann/0001.png"]
    return tmp_path / "faces", write_landmark_lines(tmp_path / "l.txt", landmarks)


def _expected_kept(root: Path, max_images: int) -> set[str]:
    """Plain reference: per identity, first copy of each content by path, then the
    `max_images` smallest SHA-1 digests."""
    kept = set()
    for folder in sorted(root.iterdir()):
        first_of: dict[bytes, str] = {}
        for path in sorted(folder.iterdir()):
            first_of.setdefault(
                hashlib.sha1(path.read_bytes()).digest(), f"{folder.name}/{path.name}"
            )
        kept |= {first_of[digest] for digest in sorted(first_of)[:max_images]}
    return kept


def test_process_task_encodes_only_the_faces_the_planner_keeps(folder_with_duplicates, tmp_path):
    root, landmarks_file = folder_with_duplicates
    config = PrepConfig(
        source=str(root), out=str(tmp_path / "out"), landmarks=str(landmarks_file),
        max_images=2, executor="inline", progress=False,
    )  # fmt: skip
    store = OutputStore(config.out)
    encoded = set()
    for index, chunk in enumerate(iter_chunks(open_source(config), config)):
        planner_columns = process_chunk(index, chunk, config)
        with store.fs.open_input_file(store.path(chunk_name(config, index))) as handle:
            table = ipc.open_file(handle).read_all()
        assert table.select(planner_columns.column_names).equals(planner_columns)
        encoded |= {
            row["source"] for row in table.select(["source", "jpg"]).to_pylist() if row["jpg"]
        }
    expected = _expected_kept(root, max_images=2)
    assert encoded == expected and len(expected) == 5  # ann 2, bob 2, cat 1

    summary = run_prep(config.model_copy(update={"out": str(tmp_path / "full")}))
    manifest = pq.read_table(tmp_path / "full" / "manifest.parquet")
    assert set(manifest.column("source").to_pylist()) == expected
    assert summary.rejected_by_reason == {
        "duplicate within identity": 2,
        "over max_images for identity": 5,  # ann 6 distinct - 2, bob 3 - 2
    }


def test_resume_with_another_chunk_size_equals_a_clean_run(
    folder_with_duplicates, tmp_path, monkeypatch
):
    root, landmarks_file = folder_with_duplicates
    config = PrepConfig(
        source=str(root), out=str(tmp_path / "resumed"), landmarks=str(landmarks_file),
        shard_size=3, images_per_scan_task=4, executor="inline", progress=False,
    )  # fmt: skip

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing shards")

    monkeypatch.setattr("facetrain.data_prep.run.write_shard", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_prep(config)
    monkeypatch.undo()
    assert list((tmp_path / "resumed" / chunk_folder(config)).glob("chunk-*.arrow"))

    # Another chunk size lists other chunks: the cached ones must not be taken for them.
    run_prep(config.model_copy(update={"images_per_scan_task": 2}))
    run_prep(config.model_copy(update={"out": str(tmp_path / "clean")}))
    for name in ("manifest.parquet", "identities.parquet", "rejects.parquet"):
        resumed = pq.read_table(tmp_path / "resumed" / name)
        assert resumed.equals(pq.read_table(tmp_path / "clean" / name)), name
    assert not (tmp_path / "resumed" / ".work").exists()


def test_an_unfinished_prep_of_another_facetrain_version_is_redone_not_mixed_in(
    folder_with_duplicates, tmp_path, monkeypatch, capsys
):
    root, landmarks_file = folder_with_duplicates
    out = tmp_path / "upgraded"
    config = PrepConfig(
        source=str(root), out=str(out), landmarks=str(landmarks_file),
        shard_size=3, executor="inline", progress=False,
    )  # fmt: skip

    monkeypatch.setattr("facetrain.data_prep.run._assemble", _raise_killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_prep(config)
    monkeypatch.undo()
    marker = out / ".work" / "fingerprint"
    fingerprint, made_by = marker.read_text().splitlines()
    assert made_by.startswith("facetrain ")
    # As left by an older release: its marker, and a shard its own plan cut that this one does not.
    marker.write_text(fingerprint + "\n")
    (out / "shards" / "train-000099.tar").write_bytes(b"an older plan's shard")

    summary = run_prep(config)
    assert summary.shards_skipped == 0 and summary.shards_written > 0
    assert "made by an older facetrain; starting afresh" in capsys.readouterr().err
    assert not (out / "shards" / "train-000099.tar").exists()
    run_prep(config.model_copy(update={"out": str(tmp_path / "clean")}))
    for name in ("manifest.parquet", "identities.parquet", "rejects.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(tmp_path / "clean" / name)), name


def test_an_unfinished_prep_of_the_same_version_resumes_its_shards(
    folder_with_duplicates, tmp_path, monkeypatch
):
    root, landmarks_file = folder_with_duplicates
    config = PrepConfig(
        source=str(root), out=str(tmp_path / "out"), landmarks=str(landmarks_file),
        shard_size=3, executor="inline", progress=False,
    )  # fmt: skip
    monkeypatch.setattr("facetrain.data_prep.run._assemble", _raise_killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_prep(config)
    monkeypatch.undo()
    summary = run_prep(config)
    assert summary.shards_written == 0 and summary.shards_skipped > 0


def _raise_killed(*args, **kwargs):
    raise RuntimeError("killed while writing the manifests")


def test_rec_identities_split_across_chunks_give_the_same_shards(tmp_path):
    rng = np.random.default_rng(1)
    faces = [
        jpeg_bytes(Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)))
        for _ in range(12)
    ]
    labels = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    items = [(label, faces[index]) for index, label in enumerate(labels)]
    items[3] = (0, faces[1])  # a duplicate inside identity 0, in another chunk than its copy
    rec = write_rec(tmp_path / "train", items)
    outputs = {}
    for per_task in (1000, 2, 3):
        out = tmp_path / f"out-{per_task}"
        run_prep(
            PrepConfig(
                source=str(rec),
                out=str(out),
                align="none",
                max_images=3,
                shard_size=4,
                images_per_scan_task=per_task,
                executor="inline",
                progress=False,
            )  # fmt: skip
        )
        outputs[per_task] = out
    for per_task in (2, 3):
        for name in ("manifest.parquet", "identities.parquet", "rejects.parquet"):
            table = pq.read_table(outputs[per_task] / name)
            assert table.equals(pq.read_table(outputs[1000] / name)), (per_task, name)
        for tar in (outputs[1000] / "shards").glob("*.tar"):
            assert (outputs[per_task] / "shards" / tar.name).read_bytes() == tar.read_bytes()
    rejects = pq.read_table(outputs[2] / "rejects.parquet").column("reason").to_pylist()
    assert sorted(rejects) == sorted(
        [
            "duplicate within identity",
            "over max_images for identity",
            "over max_images for identity",
        ]
    )
