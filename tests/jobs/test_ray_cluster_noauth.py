"""Against a head with authentication disabled, `facetrain submit` works unchanged, even
when the client has a token at hand (the head ignores it); `--ship installed` uploads nothing."""

from __future__ import annotations

import pytest
from facetrain.jobs.cli import main

from tests.jobs.ray_head import start_head, stop_head
from tests.jobs.test_ray_cluster import IDENTITIES, make_faces

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def open_head():
    head = start_head(auth=False)
    try:
        yield head
    finally:
        left = stop_head(head)
        assert not left, f"Ray head processes still alive after SIGKILL: {sorted(left)}"


def test_dry_run_prep_job_with_a_stray_token_and_installed_facetrain(
    open_head, monkeypatch, tmp_path, capsys
):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "token-of-another-cluster")
    source = make_faces(tmp_path / "faces")
    out = tmp_path / "out"
    code = main(
        [
            "submit",
            "prep",
            str(source),
            "--out",
            str(out),
            "--align",
            "none",
            "--dry-run",
            "--ship",
            "installed",
            "--address",
            open_head.address,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "python -m facetrain.jobs.ray.prep" in captured.err
    for identity in IDENTITIES:
        assert identity in captured.out  # the dry run's per-identity counts, from the job's logs
    assert not (out / "dataset.json").exists()  # a dry run writes nothing
    assert open_head.non_loopback_sockets() == []
