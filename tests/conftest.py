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
