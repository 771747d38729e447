"""What travels with a submitted job: the project source, or nothing (an installed facetrain).

Shipping the source as Ray's `working_dir` lets a job run the exact code of the checkout it
was submitted from on a cluster whose image only carries the dependencies. The excludes keep
the upload small: virtualenvs, VCS data, MLflow stores and run outputs never belong in it,
and neither does any checkpoint folder, wherever its `checkpoint.dir` put it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from facetrain import jobs

# Patterns in Ray's working_dir `excludes` (gitignore syntax, relative to the working dir).
SHIP_EXCLUDES = (
    ".venv/",
    "venv/",
    ".git/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    "mlflow.db-journal",
    "outputs/",
    "/out/",
    "/demo-out/",
    "checkpoints/",
    "test-artifacts/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    "/build/",
    "/dist/",
    "*.tar",
    "*.parquet",
    "*.pt",
)

Ship = Literal["source", "installed"]


def project_root() -> Path | None:
    """The source checkout this facetrain runs from, or None for an installed wheel."""
    root = Path(jobs.__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "jobs" / "cli").is_dir():
        return root
    return None


# Folders never descended into when looking for checkpoint folders (big, and never hold one).
_NOT_SEARCHED = {".git", ".venv", "venv", "node_modules", "__pycache__", "mlruns", "mlartifacts"}


def checkpoint_folders(directory: Path) -> list[str]:
    """Each folder under `directory` that is a facetrain `checkpoint.dir` (a `latest` file or
    a `step-*/meta.json` in it), as an anchored exclude pattern `/rel/path/`."""
    found = []
    for current, subdirs, files in os.walk(directory):
        here = Path(current)
        is_checkpoint_dir = "latest" in files or any(
            name.startswith("step-") and (here / name / "meta.json").is_file() for name in subdirs
        )
        if is_checkpoint_dir and here != directory:
            found.append(f"/{here.relative_to(directory).as_posix()}/")
            subdirs.clear()
            continue
        subdirs[:] = [name for name in subdirs if name not in _NOT_SEARCHED]
    return sorted(found)


def build_runtime_env(
    ship: Ship,
    working_dir: Path | None = None,
    pip: Sequence[str] = (),
    env_vars: Mapping[str, str] | None = None,
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """Ray runtime_env for a facetrain job.

    `ship="source"` uploads `working_dir` (default: this checkout) without SHIP_EXCLUDES,
    checkpoint folders found in it, and the extra gitignore-style `excludes` (`--exclude`);
    `ship="installed"` uploads nothing and relies on facetrain in the cluster's image (or on
    `pip`, e.g. `facetrain==0.1.0`).
    """
    runtime_env: dict[str, Any] = {}
    if ship == "source":
        directory = working_dir or project_root()
        if directory is None:
            raise ValueError(
                "--ship source: facetrain is installed, not run from a checkout; pass "
                "--working-dir DIR or use --ship installed"
            )
        if not (directory / "jobs").is_dir():
            raise ValueError(
                f"--working-dir {directory}: expected a facetrain checkout (no jobs/ in it)"
            )
        runtime_env["working_dir"] = str(directory)
        runtime_env["excludes"] = [
            *SHIP_EXCLUDES,
            *checkpoint_folders(directory),
            *excludes,
        ]
    if pip:
        runtime_env["pip"] = list(pip)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def path_on_cluster(path: str, working_dir: Path | None) -> tuple[str, bool]:
    """How a job on the cluster reaches a local `path`, and whether it ships with the job.

    Inside the shipped working dir, a path becomes relative to it (the job's cwd there);
    elsewhere it is left as given and must exist at that path on the cluster.
    """
    if working_dir is None or "://" in path:
        return path, False
    resolved = Path(path).expanduser().resolve()
    try:
        return str(resolved.relative_to(working_dir.resolve())), True
    except ValueError:
        return path, False
