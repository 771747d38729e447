"""Two test hosts on this machine: network namespaces joined by a veth pair.

Each host has its own address (10.213.N.1 and 10.213.N.2) and its own loopback, and inside
it the machine's host name still resolves to 127.0.0.1, as on clusters where gloo's default
binding picks an address the other hosts cannot reach. Commands run in a host through
`ip netns exec`. Everything is named after this process, and removed by name afterwards.

    with TwoHosts() as hosts:
        proc = hosts.popen(0, ["facetrain", "train", ...])

Needs root and iproute2 (`ip netns`); `TwoHosts.unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

SOCKET_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class TwoHosts:
    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid() % 100_000)
        self.names = (f"ft{tag}a", f"ft{tag}b")
        subnet = int(tag) % 250 + 1
        self.addresses = (f"10.213.{subnet}.1", f"10.213.{subnet}.2")

    @staticmethod
    def unavailable() -> str | None:
        """Why two hosts cannot be made here, or None when they can."""
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed"
        if os.geteuid() != 0:
            return "network namespaces need root"
        probe = f"ftprobe{os.getpid() % 100_000}"
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        _ip("netns", "del", probe, check=False)
        return None

    def __enter__(self) -> TwoHosts:
        self.close()  # leftovers of an earlier run with the same names
        a, b = self.names
        try:
            _ip("netns", "add", a)
            _ip("netns", "add", b)
            _ip("link", "add", f"{a}0", "type", "veth", "peer", "name", f"{b}0")
            for name, address in zip(self.names, self.addresses, strict=True):
                _ip("link", "set", f"{name}0", "netns", name)
                _ip("-n", name, "addr", "add", f"{address}/24", "dev", f"{name}0")
                _ip("-n", name, "link", "set", f"{name}0", "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as err:
            self.close()
            raise RuntimeError(f"making the test hosts failed: {err.stderr}") from err
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for name in self.names:
            # Processes still running inside keep nothing alive: deleting the namespace
            # removes its veth end, which removes the pair.
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            _ip("netns", "del", name, check=False)

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[host], *argv]

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The caller's environment without the socket-interface variables: the code must
        find the interface itself."""
        env = {k: v for k, v in os.environ.items() if k not in SOCKET_VARIABLES}
        env.update(extra or {})
        return env

    def popen(self, host: int, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("env", self.environment())
        return subprocess.Popen(self.command(host, argv), **kwargs)
