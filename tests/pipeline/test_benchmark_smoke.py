"""The loader benchmark still runs (`--quick`); its figures come from the full run only."""

import importlib.util
from pathlib import Path

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
