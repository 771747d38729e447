"""A real Ray head on loopback for tests: started with `ray start --head --block` in its own
session, stopped by pid (SIGTERM, then SIGKILL: gcs_server may ignore SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from facetrain.pipeline.ports import free_port

VENV_BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@dataclass
class RayHead:
    root: Path
    token: str
    dashboard_port: int
    gcs_port: int
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def pids(self) -> set[int]:
        """Every live process of this head: the `ray start` process and its session."""
        session = self.process.pid
        found = set()
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == session and proc.status() != psutil.STATUS_ZOMBIE:
                    found.add(proc.pid)
            except (ProcessLookupError, psutil.Error, PermissionError):
                continue
        return found

    def non_loopback_sockets(self) -> list[str]:
        """Sockets of the head's processes bound to or talking to a non-loopback address."""
        bad = []
        for pid in self.pids():
            try:
                connections = psutil.Process(pid).net_connections(kind="inet")
            except psutil.Error:
                continue
            for conn in connections:
                if conn.laddr and conn.laddr.ip not in LOOPBACK:
                    bad.append(f"pid {pid}: local {conn.laddr} ({conn.status})")
                if conn.raddr and conn.raddr.ip not in LOOPBACK:
                    bad.append(f"pid {pid}: remote {conn.raddr} ({conn.status})")
        return bad

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_head(num_cpus: int = 2, auth: bool = True, timeout_s: float = 120.0) -> RayHead:
    """A head on 127.0.0.1 with token auth (`auth=True`, token in RayHead.token) or without."""
    # Short path: Ray's unix sockets live under the temp dir (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="ftray-", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # HOME moves (no stray ~/.ray/auth_token); compiled torch/DeepSpeed ops stay cached.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    env.update(
        # Ray's other servers bind the host's address unless told this is a single-node cluster.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token" if auth else "disabled",
        RAY_USAGE_STATS_ENABLED="0",
        HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
    )
    if auth:
        env["RAY_AUTH_TOKEN"] = token
    dashboard_port, gcs_port = free_port(), free_port()
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--num-cpus={num_cpus}",
        "--object-store-memory=100000000",
        f"--temp-dir={root / 'ray'}",
        "--disable-usage-stats",
    ]
    log_path = root / "head.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root
        )
    head = RayHead(root, token, dashboard_port, gcs_port, process, log_path, env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_head(head)
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{head.log_tail()}")
        try:
            urllib.request.urlopen(f"{head.address}/api/version", timeout=2)
            return head
        except urllib.error.HTTPError:
            return head  # 401: up, and asking for the token
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    stop_head(head)
    raise RuntimeError(
        f"Ray head did not answer on {head.address} in {timeout_s}s:\n{head.log_tail()}"
    )


def stop_head(head: RayHead, grace_s: float = 5.0) -> set[int]:
    """Stop every process of the head by pid; return the pids still alive (should be none)."""
    pids = head.pids() | {head.process.pid}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            head.process.poll()  # reap our direct child
            pids = head.pids()
            if not pids:
                break
            time.sleep(0.2)
        if not pids:
            break
    head.process.poll()
    left = head.pids()
    if not left:
        shutil.rmtree(head.root, ignore_errors=True)
    return left
