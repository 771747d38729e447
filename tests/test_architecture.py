"""The layering rules of the project, checked on the source."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "losses", "pipeline", "jobs")
FORBIDDEN = {
    "losses": {"data_prep", "pipeline", "jobs"},
    "data_prep": {"pipeline", "jobs"},
    "pipeline": {"jobs"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package):
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(_imported_top_levels(path) & FORBIDDEN[package])}"
        for path in (ROOT / package).rglob("*.py")
        if _imported_top_levels(path) & FORBIDDEN[package]
    ]
    assert not offenders, offenders


def test_importing_losses_pulls_in_no_heavy_framework():
    code = (
        "import sys, losses\n"
        "heavy = {'ray', 'mlflow', 'deepspeed', 'webdataset'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
