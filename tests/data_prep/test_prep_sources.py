"""Other sources end to end: an insightface .rec, a real LFW subset, the CLI, and kill -9."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from facetrain.data_prep import run_prep
from facetrain.data_prep.align import alignment_matrix
from facetrain.data_prep.config import PrepConfig
from facetrain.data_prep.landmarks import read_landmarks
from facetrain.jobs.cli import main
from facetrain.jobs.demo.synthetic_faces import jpeg_bytes
from PIL import Image

from tests.data_prep.synth import make_folder_dataset, write_landmark_lines, write_rec

REPO = Path(__file__).resolve().parents[2]


def _samples(out: Path) -> list[dict]:
    return [
        s
        for tar in sorted((out / "shards").glob("*.tar"))
        for s in wds.WebDataset(str(tar), shardshuffle=False)
    ]


def test_rec_source_keeps_aligned_jpegs_and_uses_record_labels(tmp_path):
    rng = np.random.default_rng(0)
    faces = [
        jpeg_bytes(Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)))
        for _ in range(9)
    ]
    items = [
        (0, faces[0]),
        (0, faces[1]),
        (0, faces[2]),
        (1, faces[3]),
        (1, faces[3]),
        (1, faces[4]),
        (2, faces[5]),
        (2, b"not a jpeg at all"),
        (10, faces[6]),
        (10, faces[7]),
    ]
    rec = write_rec(tmp_path / "train", items)
    out = tmp_path / "out"
    summary = run_prep(
        PrepConfig(source=str(rec), out=str(out), align="none", executor="inline", progress=False)
    )
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert summary.rejected_by_reason == {"duplicate within identity": 1, "not an image": 1}
    assert [row["identity"] for row in manifest if row["class"] == 3] == ["00000010", "00000010"]
    by_source = {f"train.rec#{index}": payload for index, (_, payload) in enumerate(items, start=1)}
    samples = _samples(out)
    assert len(samples) == len(manifest) == 8
    for sample in samples:
        source = json.loads(sample["json"])["source"]
        assert sample["jpg"] == by_source[source]  # passed through, not re-encoded
    assert json.loads((out / "dataset.json").read_text())["num_classes"] == 4


def test_rec_without_identity_records_reads_every_indexed_record(tmp_path):
    face = jpeg_bytes(Image.new("RGB", (112, 112), (9, 99, 199)))
    face2 = jpeg_bytes(Image.new("RGB", (112, 112), (19, 9, 1)))
    rec = write_rec(tmp_path / "plain", [(5, face), (6, face2)], identity_headers=False)
    summary = run_prep(
        PrepConfig(
            source=str(rec),
            out=str(tmp_path / "o"),
            align="none",
            executor="inline",
            progress=False,
        )
    )
    assert summary.accepted == 2 and summary.num_classes == 2


@pytest.mark.lfw
def test_real_lfw_subset(lfw_root, tmp_path):
    all_points = read_landmarks(lfw_root / "landmarks.txt")
    names = sorted({relpath.split("/")[0] for relpath in all_points})
    several = [n for n in names if len(list((lfw_root / "images" / n).glob("*.jpg"))) >= 4][:20]
    chosen = [*several, "Betsy_Coffin"]  # a landmark row whose image is missing from the set
    root = tmp_path / "lfw"
    root.mkdir()
    for name in several:
        (root / name).symlink_to(lfw_root / "images" / name)
    subset = {k: v for k, v in all_points.items() if k.split("/")[0] in chosen}
    landmarks_file = write_landmark_lines(tmp_path / "landmarks.txt", subset)
    out = tmp_path / "out"
    summary = run_prep(
        PrepConfig(
            source=str(root),
            out=str(out),
            landmarks=str(landmarks_file),
            val_identities=3,
            shard_size=30,
            executor="inline",
            progress=False,
        )
    )
    files = {f"{n}/{p.name}" for n in several for p in (lfw_root / "images" / n).glob("*.jpg")}
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {row["source"] for row in manifest} == files
    assert summary.rejected_by_reason == {"missing file": 1}
    # Each crop equals an independent float64 warp of the original (JPEG q95 noise only).
    for sample in _samples(out)[:25]:
        source = json.loads(sample["json"])["source"]
        original = np.asarray(Image.open(lfw_root / "images" / source).convert("RGB")).astype(float)
        matrix = alignment_matrix(all_points[source])
        inverse = np.linalg.inv(matrix[:, :2])
        ys, xs = np.mgrid[4:108, 4:108]
        src = (np.stack([xs.ravel(), ys.ravel()], 1) - matrix[:, 2]) @ inverse.T
        x0, y0 = np.floor(src[:, 0]).astype(int), np.floor(src[:, 1]).astype(int)
        fx, fy = (src[:, 0] - x0)[:, None], (src[:, 1] - y0)[:, None]
        ok = (x0 >= 0) & (y0 >= 0) & (x0 < 149) & (y0 < 149)
        x0, y0, fx, fy = x0[ok], y0[ok], fx[ok], fy[ok]
        reference = (original[y0, x0] * (1 - fx) + original[y0, x0 + 1] * fx) * (1 - fy) + (
            original[y0 + 1, x0] * (1 - fx) + original[y0 + 1, x0 + 1] * fx
        ) * fy
        ours = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")).astype(float)
        ours = ours[ys.ravel()[ok], xs.ravel()[ok]]
        assert np.abs(ours - reference).mean() < 3.0, source


def test_cli_exit_codes_and_dry_run(tmp_path, capsys):
    landmarks = make_folder_dataset(tmp_path / "faces", {"ann": 2, "bob": 3, "cat": 2}, seed=1)
    landmarks_file = write_landmark_lines(tmp_path / "l.txt", landmarks)
    base = [
        str(tmp_path / "faces"),
        "--landmarks",
        str(landmarks_file),
        "--no-progress",
        "--set",
        "executor=inline",
    ]
    assert main(["prep", *base, "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "bob" in printed and "shard plan" in printed and not (tmp_path / "dry").exists()
    assert (
        main(
            [
                "prep",
                *base,
                "--out",
                str(tmp_path / "o"),
                "--val-identities",
                "bob",
                "--shard-size",
                "2",
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert meta["splits"]["val"]["identities"] == 1 and meta["num_classes"] == 2
    assert meta["config"]["val_identities"] == ["bob"]
    assert "accepted 7 images" in capsys.readouterr().out
    assert main(["prep", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert main(["prep", *base, "--out", str(tmp_path / "x"), "--set", "shard_size=-1"]) == 2
    assert main(["prep", *base, "--out", str(tmp_path / "x"), "--val-identities", "zed"]) == 2
    assert "zed" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    landmarks = make_folder_dataset(tmp_path / "faces", {f"p{n:02d}": 8 for n in range(40)}, seed=2)
    landmarks_file = write_landmark_lines(tmp_path / "l.txt", landmarks)
    args = [
        str(tmp_path / "faces"),
        "--landmarks",
        str(landmarks_file),
        "--shard-size",
        "8",
        "--no-progress",
        "--set",
        "executor=inline",
    ]
    out = tmp_path / "crashed"
    code = (
        f"from facetrain.jobs.cli import main; raise SystemExit(main({['prep', *args, '--out', str(out)]!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(
        (out / ".work" / "done").glob("train-*.parquet")
    ):
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_at_kill = (
        len(list((out / ".work" / "done").glob("*.parquet")))
        if (out / ".work" / "done").exists()
        else 0
    )
    assert not (out / "dataset.json").exists() and 1 <= finished_at_kill < 40

    summary = run_prep(
        PrepConfig(
            source=str(tmp_path / "faces"),
            out=str(out),
            landmarks=str(landmarks_file),
            shard_size=8,
            executor="inline",
            progress=False,
        )
    )
    assert (
        summary.shards_skipped == finished_at_kill
        and summary.shards_written == 40 - finished_at_kill
    )
    assert not list(out.rglob(".*.tmp-*"))
    clean = tmp_path / "clean"
    run_prep(
        PrepConfig(
            source=str(tmp_path / "faces"),
            out=str(clean),
            landmarks=str(landmarks_file),
            shard_size=8,
            executor="inline",
            progress=False,
        )
    )
    for name in ("manifest.parquet", "identities.parquet", "rejects.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(clean / name)), name
    crashed_meta = json.loads((out / "dataset.json").read_text())
    clean_meta = json.loads((clean / "dataset.json").read_text())
    assert crashed_meta["splits"] == clean_meta["splits"]  # every shard byte-identical (sha256)


def test_default_config_file_validates_and_flags_override_it(tmp_path):
    from facetrain.jobs.cli import build_parser
    from facetrain.jobs.cli.prep import build_config

    args = build_parser().parse_args(
        [
            "prep",
            "SRC",
            "--out",
            "OUT",
            "--config",
            str(REPO / "configs" / "prep.yaml"),
            "--shard-size",
            "7",
            "--set",
            "seed=3",
        ]
    )
    config = build_config(args)
    assert (config.shard_size, config.seed, config.align, config.source) == (7, 3, "arcface", "SRC")


def test_csv_manifest_with_identities_points_and_boxes_and_sphereface(tmp_path):
    from facetrain.data_prep.align import TEMPLATES

    from tests.data_prep.synth import dot_centres

    landmarks = make_folder_dataset(tmp_path / "faces", {"a": 3, "b": 2}, seed=4)
    lines = ["path,identity,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5,left,top,width,height"]
    for relpath, points in landmarks.items():
        identity = "person_" + relpath.split("/")[0]  # the manifest names identities itself
        coords = ",".join(f"{v:.3f}" for v in points.ravel())
        lines.append(f"{relpath},{identity},{coords},,,,")
    lines.append("a/0000.png,box_only,,,,,,,,,,,10,20,100,100")  # a face box instead of points
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run_prep(
        PrepConfig(
            source=str(tmp_path / "faces"),
            out=str(out),
            landmarks=str(tmp_path / "m.csv"),
            align="sphereface",
            executor="inline",
            progress=False,
        )
    )
    identities = pq.read_table(out / "identities.parquet").column("identity").to_pylist()
    assert identities == ["person_a", "person_b"]
    # The box row repeats a/0000.png's bytes under another identity: a label conflict.
    assert summary.rejected_by_reason == {"label conflict (same image under several identities)": 2}
    template = TEMPLATES["sphereface"].points
    for sample in _samples(out):
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
        assert pixels.shape == (112, 96, 3)
        assert np.abs(dot_centres(pixels, template) - template).max() < 1.0


def test_listing_is_streamed_in_bounded_chunks(tmp_path):
    from facetrain.data_prep.sources import iter_chunks, open_source

    counts = {f"p{n}": 1 + n % 3 for n in range(12)}
    landmarks = make_folder_dataset(tmp_path / "faces", counts, seed=5, canvas=(120, 130))
    config = PrepConfig(
        source=str(tmp_path / "faces"),
        out=str(tmp_path / "o"),
        landmarks=str(write_landmark_lines(tmp_path / "l.txt", landmarks)),
        images_per_scan_task=4,
    )
    chunks = iter_chunks(open_source(config), config)
    assert not isinstance(chunks, list | tuple)  # a generator: nothing listed up front
    sizes = [len(chunk.entries) for chunk in chunks]
    # Cut at identity boundaries, before an identity that would take a chunk past 4 images
    # (identities hold at most 3), so every chunk but the last is 2 to 4 images.
    assert sum(sizes) == len(landmarks) and max(sizes) <= 4 and min(sizes[:-1]) >= 2
