"""The layering rules of the project, checked on the source."""

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "losses", "pipeline", "jobs")
FORBIDDEN = {
    "losses": {"data_prep", "pipeline", "jobs"},
    "data_prep": {"pipeline", "jobs"},
    "pipeline": {"jobs"},
    # Benchmarks measure the library and the `facetrain` command, never the jobs code itself.
    "benchmarks": {"jobs"},
}
SOURCE_DIRS = (*PACKAGES, "benchmarks", "tests", "facetrain", "configs")


def _python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for each absolute import; `import a.b` gives ("a.b", [])."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _project_packages(path: Path) -> set[str]:
    """The facetrain subpackages a file imports (`facetrain.pipeline.x` -> "pipeline")."""
    packages = set()
    for module, names in _imports(path):
        parts = module.split(".")
        if parts[0] != "facetrain":
            continue
        if len(parts) > 1:
            packages.add(parts[1])
        else:
            packages.update(names)
    return packages


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package):
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(_project_packages(path) & FORBIDDEN[package])}"
        for path in _python_files(package)
        if _project_packages(path) & FORBIDDEN[package]
    ]
    assert not offenders, offenders


def test_nothing_imports_the_old_top_level_names():
    """Installed, only `facetrain` exists: `import pipeline` would pick up PyPI's `pipeline`
    or a user's own module, so every import goes through facetrain.*."""
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _python_files(*SOURCE_DIRS)
        for module, _ in _imports(path)
        if module.split(".")[0] in PACKAGES
    ]
    assert not offenders, offenders


def _private_loss_attributes() -> set[str]:
    """Names of the private attributes and methods that losses/ defines."""
    names = set()
    for path in _python_files("losses"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef):
                names.add(node.name)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_outside_losses_reads_a_private_attribute_of_a_loss():
    private = _private_loss_attributes()
    assert private, "expected losses/ to hold some private state"
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno} reads .{node.attr}"
        for path in _python_files("pipeline", "jobs", "data_prep", "benchmarks")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in private
    ]
    assert not offenders, offenders


def test_training_modules_import_few_names_from_any_sibling():
    """pipeline/train/ files talk through small interfaces: at most 6 names from a sibling."""
    offenders = []
    for path in _python_files("pipeline/train"):
        counts = Counter()
        for module, names in _imports(path):
            if module.startswith("facetrain.pipeline.train."):
                counts[module] += len(names)
        offenders += [
            f"{path.name} imports {count} names from {module}"
            for module, count in counts.items()
            if count > 6
        ]
    assert not offenders, offenders


def test_importing_losses_pulls_in_no_heavy_framework():
    code = (
        "import sys, facetrain.losses\n"
        "heavy = {'ray', 'mlflow', 'deepspeed', 'webdataset'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
