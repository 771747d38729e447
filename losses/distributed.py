"""Collectives the losses need, made autograd-aware, and nothing when there is one rank.

Every distributed loss here follows one pattern: each rank all-gathers the global batch
(`gather_batch`), computes its *share* of the global loss (its classes, or its anchors), and
adds the shares up with `sum_across_ranks`. Because every rank then evaluates the same scalar,
each rank's backward only needs the derivative of its own share; `gather_batch` sums those
partial gradients back onto the rank that owns the rows, times N (the convention of
insightface's partial FC and pytorch-metric-learning), so that the data-parallel engine's
mean over N ranks hands the backbone the single-process gradient.

`group=None` (or a group of one rank) means "not distributed": no collective is ever issued.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

ProcessGroup = dist.ProcessGroup


def rank_and_world(group: ProcessGroup | None) -> tuple[int, int]:
    """(rank, world size) inside `group`; (0, 1) for `group=None`."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def gather_sizes(num_rows: int, group: ProcessGroup, device: torch.device) -> list[int]:
    """Every rank's local batch size, in rank order (one tiny all-gather)."""
    world = dist.get_world_size(group)
    mine = torch.tensor([num_rows], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(size.item()) for size in sizes]


def _all_gather_padded(local: Tensor, sizes: list[int], group: ProcessGroup) -> Tensor:
    # all_gather wants equal shapes: pad to the largest local batch, then cut each part back.
    max_rows = max(sizes)
    if local.shape[0] == max_rows:
        padded = local.contiguous()
    else:
        padded = local.new_zeros((max_rows, *local.shape[1:]))
        padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:rows] for part, rows in zip(parts, sizes, strict=True)])


def _gather_packed(
    embeddings: Tensor, labels: Tensor, sizes: list[int], group: ProcessGroup
) -> tuple[Tensor, Tensor]:
    # Labels ride along as one float64 column (exact below 2^53): one collective, not two.
    # Each collective costs a round of latency; the extra bytes are negligible at batch size.
    packed = torch.cat([embeddings.to(torch.float64), labels[:, None].to(torch.float64)], dim=1)
    packed_all = _all_gather_padded(packed, sizes, group)
    return packed_all[:, :-1].to(embeddings.dtype), packed_all[:, -1].to(labels.dtype)


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings, labels, sizes: list[int], rank: int, scale: float, group):
        ctx.row_start = sum(sizes[:rank])
        ctx.num_rows = sizes[rank]
        ctx.scale = scale
        ctx.group = group
        embeddings_all, labels_all = _gather_packed(embeddings, labels, sizes, group)
        ctx.mark_non_differentiable(labels_all)
        return embeddings_all, labels_all

    @staticmethod
    def backward(ctx, grad_all: Tensor, _grad_labels_all):
        # Each rank's graph holds only its share of dL/d(embeddings_all); the sum over ranks is
        # the full gradient, of which this rank keeps its own rows (times N, see module doc).
        grad_all = grad_all.contiguous().clone()
        dist.all_reduce(grad_all, group=ctx.group)
        rows = grad_all[ctx.row_start : ctx.row_start + ctx.num_rows] * ctx.scale
        return rows, None, None, None, None, None


def gather_batch(
    embeddings: Tensor, labels: Tensor, group: ProcessGroup | None
) -> tuple[Tensor, Tensor, int]:
    """The global batch seen by every rank: (embeddings_all, labels_all, row_start).

    Rows are in rank order; local batch sizes may differ. `row_start` is where this rank's
    rows sit. Backward: local embeddings receive N x the gradient of the global loss.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return embeddings, labels, 0
    sizes = gather_sizes(embeddings.shape[0], group, embeddings.device)
    if embeddings.requires_grad:
        embeddings_all, labels_all = _GatherBatch.apply(
            embeddings, labels, sizes, rank, float(world), group
        )
    else:
        embeddings_all, labels_all = _gather_packed(embeddings, labels, sizes, group)
    return embeddings_all, labels_all, sum(sizes[:rank])


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, share: Tensor, group: ProcessGroup) -> Tensor:
        total = share.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        # Identity, not a sum: every rank computes the same loss from `total`, so d(loss)/d(share)
        # on this rank is just grad_total; the cross-rank sum happens once, in gather_batch.
        return grad_total, None


def sum_across_ranks(share: Tensor, group: ProcessGroup | None) -> Tensor:
    """All-reduce sum whose backward hands each rank the gradient of its own share."""
    if rank_and_world(group)[1] == 1:
        return share
    return _SumAcrossRanks.apply(share, group)
