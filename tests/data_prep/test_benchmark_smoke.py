"""The throughput benchmark still runs (numbers are read from its full run, not asserted)."""

import importlib
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "prep_throughput.py"


@pytest.mark.slow
def test_prep_throughput_quick_run_reports_a_table(monkeypatch):
    # Importable by name: the benchmark's spawned Pool workers unpickle its functions.
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    module = importlib.import_module("prep_throughput")
    report = module.main(["--quick", "--workers", "2"])  # starts and stops its own local Ray
    assert "| images | method | count | median s | best s |" in report
    assert "facetrain run_prep on Ray (" in report and "run_prep time by phase" in report
    assert "run_prep vs the bare PIL Pool" in report
    assert "enlarged to 250x250" in report


def test_plan_memory_quick_run_reports_a_table(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    module = importlib.import_module("prep_plan_memory")
    report = module.main(["--quick"])
    assert "| images | identities | images per identity |" in report and "| 20,000 |" in report


def test_listing_memory_quick_run_reports_a_table(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    module = importlib.import_module("prep_listing_memory")
    report = module.main(["--quick"])
    assert "## Prep listing: peak driver memory" in report
    assert "| 20,000 |" in report and "| 20,020 |" in report  # every row and unlisted file
