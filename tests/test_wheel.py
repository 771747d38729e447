"""The wheel installs one package, `facetrain`, that works without the checkout.

Built from a copy of the checkout (a stale build/ folder in the checkout could carry deleted
modules into the wheel), installed with --no-deps into a fresh venv that sees the project's
dependencies through a .pth line naming the project venv's site-packages. Python does not
process .pth files inside a directory added that way, so the editable install's finder
(`__editable__.facetrain-*.pth` there) stays inactive: only the wheel's facetrain can answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = (".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
              ".ruff_cache", "mlruns", "mlartifacts", "demo-out", "out", "test-artifacts")  # fmt: skip

pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(wheel, the fresh venv's python, a working directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", wheels, ".", cwd=source)  # fmt: skip
    (wheel,) = wheels.glob("facetrain-*.whl")

    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         wheel, cwd=tmp)  # fmt: skip
    fresh_site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp)
        .strip()
    )
    project_site = sysconfig.get_paths()["purelib"]
    (fresh_site / "facetrain_test_deps.pth").write_text(project_site + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return wheel, python, elsewhere


def test_wheel_holds_only_the_facetrain_package(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
    dist_info = [name for name in top_level if name.endswith(".dist-info")]
    assert len(dist_info) == 1 and dist_info[0].startswith("facetrain-")
    assert top_level - set(dist_info) == {"facetrain"}


def test_installed_package_imports_without_the_checkout(installed):
    _, python, elsewhere = installed
    probe = """
import importlib, json, sys
found = {}
for name in ("facetrain.losses", "facetrain.pipeline.train.loop", "facetrain.jobs.cli"):
    found[name] = importlib.import_module(name).__file__
missing = {}
for name in ("pipeline", "jobs", "losses", "data_prep"):
    try:
        importlib.import_module(name)
        missing[name] = False
    except ModuleNotFoundError:
        missing[name] = True
finders = [type(finder).__module__ + "." + type(finder).__name__ for finder in sys.meta_path]
print(json.dumps({"found": found, "missing": missing, "finders": finders, "path": sys.path}))
"""
    report = json.loads(_run(python, "-c", probe, cwd=elsewhere, timeout=600))
    fresh_venv = python.parent.parent
    assert all(Path(file).is_relative_to(fresh_venv) for file in report["found"].values()), report
    assert report["missing"] == {"pipeline": True, "jobs": True, "losses": True, "data_prep": True}
    # The editable install's finder is not active: the test checks the wheel, not the checkout.
    assert not any("editable" in finder for finder in report["finders"]), report["finders"]
    assert str(ROOT) not in report["path"]


def test_installed_recipes_are_package_data(installed):
    _, python, elsewhere = installed
    shipped = sorted(path.name for path in (ROOT / "configs").glob("*.yaml"))
    probe = (
        "import json; from importlib import resources; "
        "folder = resources.files('facetrain.configs'); "
        "print(json.dumps([str(folder), sorted(p.name for p in folder.iterdir() "
        "if p.name.endswith('.yaml'))]))"
    )
    folder, names = json.loads(_run(python, "-c", probe, cwd=elsewhere))
    assert names == shipped
    assert Path(folder).is_relative_to(python.parent.parent)
    assert all((Path(folder) / name).read_text() == (ROOT / "configs" / name).read_text()
               for name in shipped)  # fmt: skip


def test_installed_cli_lists_the_shipped_recipes(installed):
    _, python, elsewhere = installed
    script = python.parent / "facetrain"  # the console script the wheel installed
    out = subprocess.run(
        [str(python), str(script), "configs", "list"], cwd=elsewhere, capture_output=True, text=True,
        timeout=120, env={"PATH": str(python.parent), "COLUMNS": "300"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    listed = {line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()}
    assert listed == {path.stem for path in (ROOT / "configs").glob("*.yaml")}
