"""The loader and validation benchmarks still run (`--quick`); figures come from full runs only."""

import importlib.util
import re
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "loader_throughput.py"


def test_loader_benchmark_quick_returns_its_table():
    spec = importlib.util.spec_from_file_location("loader_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    section = module.main(["--quick", "--workers", "1"])
    assert section.startswith("## Loader throughput")
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| torch") or line.startswith("| facetrain")
    ]
    assert len(rows) == 2 and all(float(row.split("|")[2]) > 0 for row in rows)


@pytest.mark.slow
def test_validation_benchmark_quick_returns_its_table():
    path = BENCHMARK.parent / "validation_overhead.py"
    spec = importlib.util.spec_from_file_location("validation_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    section = module.main(["--quick"])
    assert section.startswith("## Validation during training")
    rates = [line for line in section.splitlines() if line.startswith("| ") and "images/s" not in line]
    assert len(rates) == 3 and all(float(row.split("|")[2]) > 0 for row in rates)
    assert re.search(r"takes \*\*\d+\.\d%\*\* of the training wall time", section)


@pytest.mark.slow
def test_train_step_benchmark_quick_reports_three_loops():
    import os
    import subprocess
    import sys

    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    script = BENCHMARK.parent / "train_step.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip().split(" ")[0] for row in rows[1:]] == ["hand-written", "facetrain", "for"]
    assert all(float(row.split("|")[2]) > 0 for row in rows[1:])
    assert re.search(r"\*\*\d\.\d\d \(\d\.\d\d-\d\.\d\d\)\*\* wall", done.stdout)
