"""Partial class sampling (Partial FC, An et al. 2021/2022) for one rank's class shard."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sample_local_classes(
    target_cols: Tensor, num_local_classes: int, sample_rate: float, generator: torch.Generator
) -> Tensor:
    """Sorted local class indices to keep: every target, then random others up to the quota.

    `target_cols` holds, for each row of the global batch, the local column of its class or -1
    where another rank owns it. The quota is ceil(sample_rate · num_local_classes), raised to
    the number of distinct targets when those alone exceed it.
    """
    targets = torch.unique(target_cols[target_cols >= 0])
    num_keep = max(math.ceil(sample_rate * num_local_classes), targets.numel())
    scores = torch.rand(num_local_classes, generator=generator, device=generator.device)
    scores = scores.to(target_cols.device)
    scores[targets] = 2.0  # above any uniform draw: targets are always kept
    return torch.topk(scores, num_keep, sorted=False).indices.sort().values


def remap_target_cols(target_cols: Tensor, kept_cols: Tensor, num_local_classes: int) -> Tensor:
    """Target columns re-expressed as positions in `kept_cols` (-1 stays -1)."""
    position = torch.full((num_local_classes,), -1, dtype=torch.int64, device=target_cols.device)
    position[kept_cols] = torch.arange(kept_cols.numel(), device=target_cols.device)
    return torch.where(target_cols >= 0, position[target_cols.clamp_min(0)], target_cols)
