"""run_prep end to end on the synthetic corpus: outputs, rejects, pixels, Ray == inline."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from facetrain.data_prep import run_prep
from facetrain.data_prep.align import TEMPLATES
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.errors import PrepInputError
from PIL import Image

from tests.data_prep.synth import dot_centres


def _config(synthetic, out: Path, **changes) -> PrepConfig:
    options = {
        "source": str(synthetic.root),
        "out": str(out),
        "landmarks": str(synthetic.landmarks_file),
        "shard_size": 9,
        "val_identities": 2,
        "max_image_pixels": synthetic.max_image_pixels,
        "executor": "inline",
        "progress": False,
    }
    options.update(changes)
    return PrepConfig(**options)


@pytest.fixture(scope="module")
def inline_run(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "out"
    summary = run_prep(_config(synthetic, out))
    return out, summary


def _samples(tar: Path) -> list[dict]:
    return list(wds.WebDataset(str(tar), shardshuffle=False))


def test_rejects_name_every_planted_bad_input(inline_run, synthetic):
    out, summary = inline_run
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    found = {row["source"]: row["reason"] for row in rejects}
    assert found == synthetic.expected_rejects
    assert summary.rejected_by_reason == {
        reason: list(synthetic.expected_rejects.values()).count(reason)
        for reason in set(synthetic.expected_rejects.values())
    }


def test_manifest_labels_and_dataset_json(inline_run, synthetic):
    out, summary = inline_run
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {row["source"] for row in manifest} == synthetic.good
    meta = json.loads((out / "dataset.json").read_text())
    identities = {row["identity"] for row in manifest}
    val = {row["identity"] for row in manifest if row["split"] == "val"}
    assert len(val) == 2
    for split, names in (("train", sorted(identities - val)), ("val", sorted(val))):
        for row in (r for r in manifest if r["split"] == split):
            assert names[row["class"]] == row["identity"]
        assert meta["splits"][split]["identities"] == len(names)
    assert meta["num_classes"] == len(identities) - 2
    assert meta["counts"]["accepted"] == len(manifest) == summary.accepted
    assert meta["config"]["shard_size"] == 9 and meta["facetrain_version"]
    table = pq.read_table(out / "identities.parquet").to_pylist()
    counts = {(r["split"], r["identity"]): r["count"] for r in table}
    for row in manifest:
        assert counts[(row["split"], row["identity"])] >= 1
    assert sum(counts.values()) == len(manifest)
    assert not (out / ".work").exists()


def test_shards_hold_what_dataset_json_says_identity_grouped(inline_run):
    out, _ = inline_run
    meta = json.loads((out / "dataset.json").read_text())
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    by_key = {row["key"]: row for row in manifest}
    seen_in_shard: dict[str, str] = {}
    for split, info in meta["splits"].items():
        for shard in info["shards"]:
            tar = out / "shards" / shard["name"]
            assert tar.name.startswith(f"{split}-")
            data = tar.read_bytes()
            assert (
                shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
            )
            samples = _samples(tar)
            assert shard["samples"] == len(samples)
            assert shard["identities"] == len({json.loads(s["json"])["identity"] for s in samples})
            previous = None
            for sample in samples:
                row = by_key[sample["__key__"]]
                meta_json = json.loads(sample["json"])
                assert (
                    int(sample["cls"]) == row["class"] and meta_json["identity"] == row["identity"]
                )
                assert meta_json["source"] == row["source"] and row["shard"] == tar.stem
                if meta_json["identity"] != previous:
                    assert meta_json["identity"] not in seen_in_shard, "identity not contiguous"
                    seen_in_shard[meta_json["identity"]] = tar.name
                    previous = meta_json["identity"]
                assert Image.open(io.BytesIO(sample["jpg"])).size == (112, 112)


def test_aligned_dots_land_on_the_template_including_reduced_decode(inline_run, synthetic):
    out, _ = inline_run
    template = TEMPLATES["arcface"].points
    checked = 0
    for tar in sorted((out / "shards").glob("*.tar")):
        for sample in _samples(tar):
            source = json.loads(sample["json"])["source"]
            pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
            # Where this test's own transform sends the known landmarks, and where the dots are.
            matrix = np.array(json.loads(sample["json"])["transform"])
            points = synthetic.landmarks[source]
            np.testing.assert_allclose(points @ matrix[:, :2].T + matrix[:, 2], template, atol=1.0)
            centres = dot_centres(pixels, template)
            assert np.abs(centres - template).max() < 1.0, source
            checked += 1
    assert checked == len(synthetic.good)


def test_second_run_is_a_no_op_and_another_config_is_refused(inline_run, synthetic):
    out, _ = inline_run
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run_prep(_config(synthetic, out))
    assert again.already_complete
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(PrepInputError, match="different config"):
        run_prep(_config(synthetic, out, shard_size=5))


def test_dry_run_writes_nothing_and_prints_the_plan(synthetic, tmp_path):
    summary = run_prep(_config(synthetic, tmp_path / "dry", dry_run=True))
    assert not (tmp_path / "dry").exists()
    assert "person_00" in summary.plan_text and "train-000000.tar" in summary.plan_text
    assert "shard plan" in summary.plan_text


def test_unusable_sources_are_input_errors(tmp_path, synthetic):
    with pytest.raises(PrepInputError, match="does not exist"):
        run_prep(_config(synthetic, tmp_path / "o", source=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepInputError, match="is empty"):
        run_prep(
            _config(
                synthetic,
                tmp_path / "o",
                source=str(tmp_path / "empty"),
                landmarks=None,
                align="none",
            )
        )
    with pytest.raises(PrepInputError, match="needs --landmarks"):
        run_prep(_config(synthetic, tmp_path / "o", landmarks=None))


@pytest.mark.slow
def test_ray_tasks_write_byte_identical_shards(ray_session, inline_run, synthetic, tmp_path):
    out_inline, _ = inline_run
    out_ray = tmp_path / "ray"
    summary = run_prep(_config(synthetic, out_ray, executor="ray"))
    assert summary.shards_written > 2
    inline_meta = json.loads((out_inline / "dataset.json").read_text())
    ray_meta = json.loads((out_ray / "dataset.json").read_text())
    assert ray_meta["splits"] == inline_meta["splits"]  # names, counts, sizes and sha256
    for name in ("manifest.parquet", "identities.parquet", "rejects.parquet"):
        assert pq.read_table(out_ray / name).equals(pq.read_table(out_inline / name)), name


def test_opencv_library_gives_the_same_samples_and_rejects(inline_run, synthetic, tmp_path):
    pytest.importorskip("cv2")
    out_default, _ = inline_run
    # The default (`auto`) is OpenCV once cv2 imports: compare against the other library.
    default = json.loads((out_default / "dataset.json").read_text())["config"]["image_library"]
    assert default == "opencv"
    out = tmp_path / "pil"
    run_prep(_config(synthetic, out, image_library="pil"))
    for name in ("manifest.parquet", "rejects.parquet"):
        ours = pq.read_table(out / name).drop_columns(
            ["bytes"] if name == "manifest.parquet" else []
        )
        theirs = pq.read_table(out_default / name).drop_columns(
            ["bytes"] if name == "manifest.parquet" else []
        )
        assert ours.equals(theirs), name
    template = TEMPLATES["arcface"].points
    for tar in sorted((out_default / "shards").glob("*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False):
            pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
            assert np.abs(dot_centres(pixels, template) - template).max() < 1.0


def test_output_to_an_fsspec_url_equals_the_local_output(inline_run, synthetic):
    fsspec = pytest.importorskip("fsspec")
    out_local, _ = inline_run
    url = "memory://prep-test/out"
    summary = run_prep(_config(synthetic, url))
    memory = fsspec.filesystem("memory")
    try:
        meta = json.loads(memory.cat_file("/prep-test/out/dataset.json"))
        assert meta["splits"] == json.loads((out_local / "dataset.json").read_text())["splits"]
        for name in ("manifest.parquet", "identities.parquet", "rejects.parquet"):
            with memory.open(f"/prep-test/out/{name}", "rb") as handle:
                assert pq.read_table(handle).equals(pq.read_table(out_local / name)), name
        for shard in meta["splits"]["train"]["shards"]:
            local = (out_local / "shards" / shard["name"]).read_bytes()
            assert memory.cat_file(f"/prep-test/out/shards/{shard['name']}") == local
        assert not memory.exists("/prep-test/out/.work")
        assert run_prep(_config(synthetic, url)).already_complete and summary.accepted > 0
    finally:
        memory.rm("/prep-test", recursive=True)


def test_prep_output_round_trips_through_the_shard_format(inline_run):
    from facetrain.data_prep.shard_format import SAMPLE_KEYS, parse_dataset_json
    from facetrain.pipeline.data.shards import iter_raw_samples, read_dataset_index

    out, _ = inline_run
    text = (out / "dataset.json").read_text()
    raw = json.loads(text)
    # The schema holds every key prep wrote: writing back what was read gives the same file.
    assert parse_dataset_json(text, "dataset.json").to_json(indent=2) + "\n" == text
    for split in ("train", "val"):
        index = read_dataset_index(str(out), split)
        assert index.num_classes == raw["num_classes"] and index.manifest == raw
        listed = raw["splits"][split]["shards"]
        assert [(s.url, s.samples, s.identities) for s in index.shards] == [
            (str(out / "shards" / e["name"]), e["samples"], e["identities"]) for e in listed
        ]
        for shard in index.shards:
            position, previous = 0, None
            for sample in iter_raw_samples(shard.url):
                assert set(sample) - {"__key__"} == set(SAMPLE_KEYS)
                label = int(sample["cls"])
                position = position + 1 if label == previous else 0
                previous = label
                assert sample["__key__"] == f"{split}_{label:06d}_{position:04d}"
