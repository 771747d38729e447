"""The collectives of a training step that are not the losses' own: agreeing on a flag,
clipping class-sharded gradients by their global norm, and averaging BatchNorm statistics.
Each takes the process group explicitly, and `None` means one process, as in `losses/`:
then, or with a group of one rank, nothing is communicated.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def world_group() -> dist.ProcessGroup | None:
    """The group of all ranks when there are several, else None (one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _single(group) -> bool:
    return group is None or dist.get_world_size(group) == 1


def all_ranks_true(flag: bool, device: torch.device, group=None) -> bool:
    """True only when `flag` holds on every rank of `group`."""
    if _single(group):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item() > 0)


@torch.no_grad()
def clip_sharded_grad_norm_(params: list[nn.Parameter], max_norm: float, group=None) -> float:
    """Clip shards of one logical tensor set by their *global* norm (sum of squares across
    ranks), so N ranks clip exactly like one process holding every row. Returns the norm."""
    grads = [p.grad for p in params if p.grad is not None]
    # On the parameters' device: under NCCL a CPU tensor cannot be all-reduced.
    device = params[0].device if params else torch.device("cpu")
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for grad in grads:
        squares += grad.detach().double().pow(2).sum()
    if not _single(group):
        dist.all_reduce(squares, group=group)
    norm = math.sqrt(float(squares))
    if max_norm > 0 and grads:
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            for grad in grads:
                grad.mul_(scale)
    return norm


@torch.no_grad()
def average_buffers(module: nn.Module, group=None) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks, so every rank
    holds the same model and a checkpoint does not depend on which rank wrote it."""
    if _single(group):
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()
