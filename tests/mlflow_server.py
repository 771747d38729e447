"""A real `mlflow server` in a subprocess: SQLite or PostgreSQL backend, proxied artifacts
(`--artifacts-destination`), optionally MLflow's basic-auth app; stoppable and restartable
on the same port (what an outage looks like to a client)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from facetrain.pipeline.ports import free_port

ADMIN = ("admin", "facetrain-admin-password-1")


class MlflowServer:
    def __init__(self, root: Path, backend_uri: str | None = None, auth: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend_uri = backend_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.auth = auth
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> MlflowServer:
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
        ]  # fmt: skip
        env = {
            **os.environ,
            # mlflow execs uvicorn/gunicorn by name: the venv's bin must be on PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if self.auth:
            command += ["--app-name", "basic-auth"]
            config = self.root / "basic_auth.ini"
            config.write_text(
                "[mlflow]\n"
                "default_permission = READ\n"
                f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
                f"admin_username = {ADMIN[0]}\n"
                f"admin_password = {ADMIN[1]}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            # The auth app's CSRF protection refuses to start without a fixed secret.
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "facetrain-test-only-secret"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        # Its own session: stop() ends the server and the workers it forks, nothing else.
        self.process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self  # answering (e.g. 401 under auth) is up
            except OSError as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "server.log").read_text()[-3000:]
                    raise RuntimeError(f"mlflow server did not start:\n{tail}") from err
                time.sleep(1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


def postgres_available() -> str | None:
    """None when PostgreSQL's server binaries are here, else why the test skips."""
    if shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        return None
    return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
