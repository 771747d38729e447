from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    """../shared/data/lfw (real LFW faces); tests that use it skip cleanly where it is absent."""
    root = SHARED / "data" / "lfw"
    if not (root / "images").is_dir():
        pytest.skip(f"LFW not available at {root}")
    return root


@pytest.fixture(scope="session")
def k8s_crds() -> Path:
    """../shared/k8s-crds (KubeRay CRDs); skipped cleanly where absent."""
    root = SHARED / "k8s-crds"
    if not (root / "ray.io_rayclusters.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not available at {root}")
    return root


@pytest.fixture(autouse=True)
def _fresh_mlflow_state(monkeypatch):
    """MLflow keeps the active experiment (and run) per process: a test that set one would
    hand its id to the next test's fresh store ("No Experiment with id=1 exists")."""
    import sys

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        while fluent.active_run() is not None:
            fluent.end_run()
        fluent._active_experiment_id = None
    yield
