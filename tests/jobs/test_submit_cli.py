"""`facetrain submit` against stand-in heads on 127.0.0.1: auth header, 401/403 lines, status,
and the entrypoint a submitted job gets."""

import json
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from facetrain.jobs.cli import main

JOB = "raysubmit_test0001"


class _Head:
    """A minimal Jobs API: answers `status` for every request, records Authorization headers."""

    def __init__(self, status: int, want_token: str | None = None) -> None:
        self.status = status
        self.want_token = want_token
        self.seen_auth: list[str | None] = []
        self.submitted: list[dict] = []
        head = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                auth = self.headers.get("Authorization")
                head.seen_auth.append(auth)
                if head.status != 200:
                    self._reply(
                        head.status, "text/plain", b"Unauthorized: Missing authentication token"
                    )
                elif head.want_token and auth != f"Bearer {head.want_token}":
                    self._reply(403, "text/plain", b"Forbidden: Invalid authentication token")
                elif self.path == "/api/version":
                    body = {"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}
                    self._reply(200, "application/json", json.dumps(body).encode())
                elif self.path == f"/api/jobs/{JOB}":
                    body = {
                        "type": "SUBMISSION",
                        "submission_id": JOB,
                        "status": "FAILED",
                        "entrypoint": "python -m facetrain.jobs.ray.prep",
                        "driver_exit_code": 2,
                    }
                    self._reply(200, "application/json", json.dumps(body).encode())
                else:
                    self._reply(404, "text/plain", b"Job does not exist")

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                if self.path.rstrip("/") != "/api/jobs":
                    self._reply(404, "text/plain", b"Not found")
                    return
                head.submitted.append(json.loads(self.rfile.read(length)))
                body = {"submission_id": JOB, "job_id": None}
                self._reply(200, "application/json", json.dumps(body).encode())

            def _reply(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_token_env(tmp_path, monkeypatch) -> Iterator[None]:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # A client process as users start it: an earlier in-process `ray.init` in this test session
    # (prep tests) leaves Ray's C++ side in token mode, and its SDK would add its own token.
    from ray._private.authentication import authentication_utils

    monkeypatch.setattr(authentication_utils, "is_token_auth_enabled", lambda: False)
    yield


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_401_becomes_one_line_naming_what_was_tried(no_token_env, tmp_path, capsys):
    head = _Head(401)
    try:
        code, _, err = _run(["submit", "status", JOB, "--address", head.address], capsys)
    finally:
        head.close()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "HTTP 401" in lines[0] and "sent no token" in lines[0]
    assert str(tmp_path / "home" / ".ray" / "auth_token") in lines[0]
    assert "RAY_AUTH_TOKEN=<token>" in lines[0]
    assert head.seen_auth == [None]


def test_403_names_the_token_file_that_was_sent(no_token_env, tmp_path, monkeypatch, capsys):
    token_file = tmp_path / "cluster.token"
    token_file.write_text("wrong-token\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    head = _Head(200, want_token="right-token")
    try:
        code, _, err = _run(["submit", "status", JOB, "--address", head.address], capsys)
    finally:
        head.close()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "HTTP 403" in lines[0] and f"RAY_AUTH_TOKEN_PATH={token_file}" in lines[0]
    assert head.seen_auth == ["Bearer wrong-token"]


def test_token_from_default_file_is_sent_and_status_reports_the_outcome(
    no_token_env, tmp_path, capsys
):
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text("right-token")
    head = _Head(200, want_token="right-token")
    try:
        code, out, _ = _run(["submit", "status", JOB, "--address", head.address], capsys)
    finally:
        head.close()
    assert out.strip() == "FAILED"
    assert code == 2  # the driver's own exit code
    assert set(head.seen_auth) == {"Bearer right-token"}


def test_head_without_auth_gets_no_header(no_token_env, capsys):
    head = _Head(200)
    try:
        code, out, _ = _run(["submit", "status", JOB, "--address", head.address], capsys)
    finally:
        head.close()
    assert out.strip() == "FAILED" and code == 2
    assert set(head.seen_auth) == {None}


def test_unknown_job_and_unreachable_head_are_one_line_errors(no_token_env, capsys):
    head = _Head(200)
    try:
        code, _, err = _run(
            ["submit", "status", "raysubmit_nope", "--address", head.address], capsys
        )
    finally:
        head.close()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "404" in err
    code, _, err = _run(["submit", "stop", JOB, "--address", head.address], capsys)
    assert code == 1 and "cannot connect" in err and len(err.strip().splitlines()) == 1


def test_address_must_be_a_dashboard_url(no_token_env, capsys):
    code, _, err = _run(["submit", "status", JOB, "--address", "127.0.0.1:6379"], capsys)
    assert code == 2 and "http://HEAD:8265" in err


def test_submitted_job_runs_the_arguments_as_typed(no_token_env, tmp_path, capsys):
    typed = [
        "--config", str(tmp_path / "my configs" / "train.yaml"),
        "--set", "train.steps=10", "--set=train.lr=0.05", "--set", "mlflow.run_name=a b",
        "--nproc", "2",
    ]  # fmt: skip
    head = _Head(200)
    try:
        code, out, err = _run(
            ["submit", "train", "--address", head.address, "--no-wait", "--ship", "installed",
             *typed, "--env", "OMP_NUM_THREADS=1"],
            capsys,
        )  # fmt: skip
    finally:
        head.close()
    assert code == 0, err
    assert out.strip() == JOB
    (job,) = head.submitted
    assert shlex.split(job["entrypoint"]) == ["python", "-m", "facetrain.jobs.ray.train", *typed]
    assert job["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "1"}}
