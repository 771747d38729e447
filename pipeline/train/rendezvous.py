"""Where the ranks of a run meet: the master address, each rank's number, and the network
interface that reaches the master.

Gloo binds to the address the host name resolves to. On many clusters (and in a network
namespace) that is 127.0.0.1 or an address off the cluster network, and the rendezvous then
hangs until it is killed; NCCL has the same trap (insightface #1905). So unless the user set
GLOO_SOCKET_IFNAME or NCCL_SOCKET_IFNAME, every rank picks the interface whose address the
kernel would use to reach the master, before its process group starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch.distributed as dist

DEFAULT_MASTER_PORT = 29500
SOCKET_IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


@dataclass(frozen=True)
class Rendezvous:
    """torchrun's semantics: `nnodes` hosts, `nproc_per_node` ranks each, global rank
    node_rank * nproc_per_node + local_rank, all meeting at master_addr:master_port."""

    master_addr: str
    master_port: int
    nnodes: int = 1
    node_rank: int = 0
    nproc_per_node: int = 1

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"--nnodes {self.nnodes}: expected at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(
                f"--node-rank {self.node_rank}: expected 0 <= node rank < --nnodes {self.nnodes}"
            )
        if self.nproc_per_node < 1:
            raise ValueError(f"--nproc {self.nproc_per_node}: expected at least 1")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"--master-port {self.master_port}: expected a TCP port (1-65535)")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def global_rank(self, local_rank: int) -> int:
        return self.node_rank * self.nproc_per_node + local_rank

    @property
    def init_method(self) -> str:
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"tcp://{host}:{self.master_port}"


@dataclass(frozen=True)
class LaunchedRank:
    """One rank started by torchrun or Slurm: its numbers come from the environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def rank_from_environment(env: Mapping[str, str]) -> LaunchedRank | None:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, or Slurm's
    SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID with MASTER_ADDR set by the batch script;
    None when this process was not started as one rank of a run. MASTER_ADDR is part of
    the test: torchrun always sets it, while a stray RANK/WORLD_SIZE (DeepSpeed sets them in
    a process that built an engine) does not make a rank."""
    if "MASTER_ADDR" not in env:
        return None
    if "RANK" in env and "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    else:
        return None
    try:
        rank, world, local = (int(env.get(name, "0")) for name in names)
        port = int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT))
    except ValueError as err:
        raise ValueError(f"launcher environment {', '.join(names)}, MASTER_PORT: {err}") from None
    if not 0 <= rank < world:
        raise ValueError(f"{names[0]}={rank}: expected 0 <= rank < {names[1]}={world}")
    return LaunchedRank(rank, world, local, env["MASTER_ADDR"], port)


def source_address(master_addr: str) -> str:
    """The local IPv4 address the kernel routes traffic to `master_addr` from. A UDP
    connect only consults the routing table: nothing is sent."""
    target = socket.gethostbyname(master_addr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((target, DEFAULT_MASTER_PORT))
        return probe.getsockname()[0]


def interface_with_address(address: str) -> str | None:
    """The name of the interface holding `address` (e.g. "eth0"), or None."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.family == socket.AF_INET and entry.address == address for entry in addresses):
            return name
    return None


def socket_interface_env(master_addr: str, env: Mapping[str, str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME naming the interface that reaches the master,
    unless the user set either (then theirs stand and nothing is added)."""
    if any(env.get(name) for name in SOCKET_IFNAME_VARIABLES):
        return {}
    interface = interface_with_address(source_address(master_addr))
    if interface is None:
        return {}
    return dict.fromkeys(SOCKET_IFNAME_VARIABLES, interface)


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set `variables` for the duration of a rank, then put the old values back, so an
    in-process rank leaves nothing behind for the processes its caller starts later."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def rank_host_address() -> str:
    """This rank's address on the run's network: the one that reaches MASTER_ADDR."""
    master = os.environ.get("MASTER_ADDR")
    return source_address(master) if master else "127.0.0.1"


def gather_rank_hosts(group: dist.ProcessGroup | None) -> list[str]:
    """Every rank's host address, in rank order (a collective call)."""
    mine = rank_host_address()
    if group is None:
        return [mine]
    hosts: list[str | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(hosts, mine, group=group)
    return [str(host) for host in hosts]
