"""benchmarks/run_all.py: finds every benchmark, runs each apart, keeps going past failures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = sys.modules["run_all"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKES = {
    "fast": 'def main(argv=None):\n    return "## fast\\n\\n| x | ratio |\\n|---|---|\\n| " + " ".join(argv or ["full"]) + " | 1.0 |"\n',
    "broken": 'def main(argv=None):\n    raise RuntimeError("disk full in shard 3")\n',
    "crashes": "import os\n\ndef main(argv=None):\n    os._exit(7)\n",
    "helper": "VALUE = 1  # no main(): not a benchmark\n",
    # Spawned workers must be able to import the benchmark's own functions by module name.
    "spawner": (
        "import multiprocessing\n\ndef square(x):\n    return x * x\n\n"
        "def main(argv=None):\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        return '## spawner ' + str(pool.map(square, [3]))\n"
    ),
    "lfw": 'def main(argv=None):\n    return "## lfw"\n',
}


def test_run_all_records_failures_and_keeps_going(tmp_path):
    run_all = _run_all()
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    for name, source in FAKES.items():
        (folder / f"{name}.py").write_text(source)
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(
        "# Benchmarks\n\n<!-- section:kept -->\nwritten by hand\n<!-- /section:kept -->\n"
    )

    assert run_all.discover(folder) == ["broken", "crashes", "fast", "lfw", "spawner"]
    summary = run_all.main(
        ["--quick", "--folder", str(folder), "--out", str(report), "--timeout", "120"]
    )

    text = report.read_text()
    assert "written by hand" in text  # other sections are left alone
    assert "| --quick | 1.0 |" in text  # --quick reached the benchmark, its table is in
    assert "disk full in shard 3" in text and "RuntimeError" in text
    assert "`crashes` | **failed**: exited with code 7" in summary
    assert "## lfw" not in text  # only when named
    assert "## spawner [9]" in text
    for key in ("CPU", "cores", "memory", "torch", "Python", "date (UTC)"):
        assert f"| {key} |" in text
    # A second run replaces its sections instead of appending new copies.
    run_all.main(["--only", "fast", "--folder", str(folder), "--out", str(report)])
    text = report.read_text()
    assert text.count("<!-- section:fast -->") == 1 and "| full | 1.0 |" in text
    assert "disk full in shard 3" in text  # untouched: not run this time


def _lfw_module():
    spec = importlib.util.spec_from_file_location("lfw_benchmark", REPO / "benchmarks" / "lfw.py")
    module = sys.modules["lfw_benchmark"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lfw_benchmark_sees_exactly_the_devtrain_people(lfw_root, tmp_path):
    lfw = _lfw_module()
    people = lfw.read_people(lfw_root / "peopleDevTrain.txt")
    header = int((lfw_root / "peopleDevTrain.txt").read_text().split()[0])
    assert len(people) == header
    chosen = dict(sorted(people.items())[:30])
    images, landmarks = lfw.devtrain_view(lfw_root, chosen, tmp_path / "view")
    assert sorted(p.name for p in images.iterdir()) == sorted(chosen)
    for name, count in chosen.items():
        assert len(list((images / name).iterdir())) == count  # the people file's counts
    rows = [line.split() for line in landmarks.read_text().splitlines()]
    assert {row[0].split("/")[0] for row in rows} == set(chosen)
    assert len(rows) == sum(chosen.values()) and all(len(row) == 11 for row in rows)
    # Nothing copied: the view links to the LFW folders.
    assert all((images / name).is_symlink() for name in chosen)


def test_lfw_sweep_keeps_earlier_points_and_trains_only_the_missing_ones(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    lfw = _lfw_module()
    earlier = [
        {"backbone": "tiny", "objective": "softmax", "minutes": 2.0, "steps": 20,
         "run_id": "old", "seconds": 1.0, "summary": {"accuracy": 0.8, "accuracy_std": 0.01}},
        {"backbone": "tiny", "objective": "arcface", "minutes": 2.0, "steps": 20,
         "error": "RuntimeError: crashed"},  # a failed point is trained again
    ]  # fmt: skip
    record = tmp_path / "record" / "lfw-sweep.json"  # not in --out: it outlives the work folder
    record.parent.mkdir()
    record.write_text(json.dumps(earlier))
    trained = []

    def train_one(run_args, name, shards, uri, loss):
        trained.append((name, run_args.steps))
        return f"run-{name}", 2.0

    summary = {"accuracy": 0.9, "accuracy_std": 0.02}
    monkeypatch.setattr(lfw, "train_one", train_one)
    monkeypatch.setattr(lfw, "evaluate", lambda *a: SimpleNamespace(summary=summary))
    args = lfw.parse_args(
        ["--out", str(tmp_path), "--backbones", "tiny", "--objectives", "softmax", "arcface",
         "--sweep", "2", "5", "--steps-per-minute", "tiny=10", "--no-report", "--record", str(record)]
    )  # fmt: skip
    rows = lfw.sweep(args, tmp_path / "shards", "sqlite:///unused.db")

    assert trained == [
        ("sweep-tiny-arcface-2min", 20),
        ("sweep-tiny-softmax-5min", 50),
        ("sweep-tiny-arcface-5min", 50),
    ]
    assert [(r["objective"], r["minutes"], r["run_id"]) for r in rows] == [
        ("softmax", 2.0, "old"),
        ("arcface", 2.0, "run-sweep-tiny-arcface-2min"),
        ("softmax", 5.0, "run-sweep-tiny-softmax-5min"),
        ("arcface", 5.0, "run-sweep-tiny-arcface-5min"),
    ]
    assert json.loads(record.read_text()) == rows


def test_lfw_sweep_table_reads_as_a_curve_per_backbone_whatever_order_points_ran(tmp_path):
    lfw = _lfw_module()
    summary = {"accuracy": 0.9, "accuracy_std": 0.02, "auc": 0.95}

    def point(backbone, objective, minutes):
        return {"backbone": backbone, "objective": objective, "minutes": minutes, "steps": 1,
                "run_id": f"{backbone}-{objective}-{minutes:g}", "seconds": 1.0, "summary": summary}  # fmt: skip

    ran = [point("tiny", "softmax", 2.0), point("mfn", "arcface", 20.0),
           point("mfn", "softmax", 20.0), point("tiny", "arcface", 10.0),
           point("tiny", "softmax", 10.0), point("mfn", "softmax", 2.0)]  # fmt: skip
    args = lfw.parse_args(
        ["--out", str(tmp_path), "--backbones", "tiny", "mfn", "--objectives", "softmax", "arcface",
         "--sweep", "2"]
    )  # fmt: skip
    text = lfw.sweep_markdown(ran, args, "prep line", tmp_path / "sweep.png")
    listed = [
        line.split("`")[1]
        for line in text.splitlines()
        if line.startswith("| tiny") or line.startswith("| mfn")
    ]
    assert listed == ["tiny-softmax-2", "tiny-softmax-10", "tiny-arcface-10",
                      "mfn-softmax-2", "mfn-softmax-20", "mfn-arcface-20"]  # fmt: skip


def test_lfw_sweep_refuses_a_damaged_record_by_name(tmp_path):
    lfw = _lfw_module()
    (tmp_path / "lfw-sweep.json").write_text("{not json")
    with pytest.raises(SystemExit, match="lfw-sweep.json: not a sweep record"):
        lfw.previous_sweep(tmp_path / "lfw-sweep.json")


def test_lfw_table_keeps_finished_objectives_of_the_same_command_only(tmp_path):
    lfw = _lfw_module()
    argv = ["--out", str(tmp_path), "--steps", "40", "--objectives", "softmax", "arcface"]
    args = lfw.parse_args(argv)
    rows = [
        {"objective": "softmax", "run_id": "a", "seconds": 3.0, "summary": {"accuracy": 0.8}},
        {"objective": "arcface", "error": "RuntimeError: crashed", "seconds": 1.0},
    ]
    lfw.write_table(args, "prep line", rows)
    kept = lfw.previous_table(args)
    assert list(kept) == ["softmax"] and kept["softmax"]["run_id"] == "a"  # the failure retrains
    # Another recipe (here a jitter) measured something else: nothing of it is kept.
    other = lfw.parse_args([*argv, "--landmark-jitter", "1.0"])
    assert lfw.previous_table(other) == {}
    (tmp_path / "results.json").write_text("{half written")
    assert lfw.previous_table(args) == {}


def test_lfw_benchmark_preps_from_detected_points_when_asked(tmp_path, monkeypatch):
    import facetrain.data_prep as data_prep

    lfw = _lfw_module()
    seen = []
    monkeypatch.setattr(data_prep, "run_prep", seen.append)
    lfw.prep(tmp_path / "images", tmp_path / "landmarks.txt", tmp_path / "shards", 2, 1)
    lfw.prep(tmp_path / "images", tmp_path / "landmarks.txt", tmp_path / "shards", 2, 1, "hog")
    from_file, detected = seen
    assert from_file.landmarks == str(tmp_path / "landmarks.txt") and not from_file.detect
    assert detected.landmarks is None and detected.detect and detected.detector == "hog"
    assert lfw.parse_args(["--detect", "cnn"]).detect == "cnn"
