"""Collectives the losses need, made autograd-aware, and nothing when there is one rank.

Every distributed loss here follows one pattern: each rank all-gathers the global batch
(`gather_rows`), computes its *share* of the global loss (its classes, or its anchors), and
adds the shares up with `sum_across_ranks`. Because every rank then evaluates the same scalar,
each rank's backward only needs the derivative of its own share; `gather_rows` sums those
partial gradients back onto the rank that owns the rows. `scale_gradient` finally applies the
N x convention (insightface partial FC, pytorch-metric-learning) so that the data-parallel
engine's mean over N ranks hands the backbone the single-process gradient.

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


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, sizes: list[int], rank: int, group: ProcessGroup) -> Tensor:
        ctx.row_start = sum(sizes[:rank])
        ctx.num_rows = sizes[rank]
        ctx.group = group
        return _all_gather_padded(local, sizes, group)

    @staticmethod
    def backward(ctx, grad_all: Tensor):
        # Each rank's graph holds only its share of dL/d(rows_all); the sum over ranks is the
        # full gradient, of which this rank keeps the rows it owns.
        grad_all = grad_all.contiguous().clone()
        dist.all_reduce(grad_all, group=ctx.group)
        return grad_all[ctx.row_start : ctx.row_start + ctx.num_rows], None, None, None


def gather_rows(local: Tensor, sizes: list[int], group: ProcessGroup) -> Tensor:
    """Concatenate every rank's `local` rows in rank order; differentiable (see module doc)."""
    rank = dist.get_rank(group)
    if local.shape[0] != sizes[rank]:
        raise ValueError(
            f"gather_rows: rank {rank} has {local.shape[0]} rows, sizes say {sizes[rank]}"
        )
    if local.requires_grad:
        return _GatherRows.apply(local, sizes, rank, group)
    return _all_gather_padded(local, sizes, group)


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, share: Tensor, group: ProcessGroup) -> Tensor:
        total = share.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        # Identity, not a sum: every rank computes the same loss from `total`, so d(loss)/d(share)
        # on this rank is just grad_total; the cross-rank sum happens once, in gather_rows.
        return grad_total, None


def sum_across_ranks(share: Tensor, group: ProcessGroup | None) -> Tensor:
    """All-reduce sum whose backward hands each rank the gradient of its own share."""
    if rank_and_world(group)[1] == 1:
        return share
    return _SumAcrossRanks.apply(share, group)


def all_reduce_detached(values: Tensor, group: ProcessGroup | None, op=dist.ReduceOp.SUM) -> Tensor:
    """All-reduce of values that carry no gradient (counts, row maxima); a copy is returned."""
    values = values.detach().clone()
    if rank_and_world(group)[1] > 1:
        dist.all_reduce(values, op=op, group=group)
    return values


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_gradient(tensor: Tensor, factor: float) -> Tensor:
    """Identity forward; multiplies the incoming gradient by `factor` on the way back."""
    if factor == 1 or not tensor.requires_grad:
        return tensor
    return _ScaleGradient.apply(tensor, factor)


def gather_batch(
    embeddings: Tensor, labels: Tensor, group: ProcessGroup | None
) -> tuple[Tensor, Tensor, int]:
    """The global batch seen by every rank: (embeddings_all, labels_all, row_start).

    `row_start` is where this rank's rows sit in the gathered batch. Local embeddings receive
    N x the gradient of the global loss (the data-parallel convention in the module doc).
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return embeddings, labels, 0
    sizes = gather_sizes(embeddings.shape[0], group, embeddings.device)
    embeddings_all = gather_rows(scale_gradient(embeddings, float(world)), sizes, group)
    labels_all = gather_rows(labels, sizes, group)
    return embeddings_all, labels_all, sum(sizes[:rank])
