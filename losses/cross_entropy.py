"""Softmax cross-entropy over classes that are split across ranks.

Each rank holds logits for the whole global batch against its own classes. The softmax is
made numerically safe across ranks (all-reduce of the row max, then of the exp-sums); the
target logit comes from the one rank that owns the class. Each rank's backward yields
exactly dL/d(its logits), which is what its weight shard and its share of the embedding
gradient need.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from facetrain.losses.distributed import ProcessGroup, rank_and_world
from torch import Tensor


class _ShardedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target_cols: Tensor, group: ProcessGroup) -> Tensor:
        num_rows = logits.shape[0]
        logits = logits.detach()
        if logits.shape[1] > 0:
            row_max = logits.max(dim=1).values
        else:  # a rank can own no (sampled) class when C < N
            row_max = logits.new_full((num_rows,), float("-inf"))
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)

        probs = (logits - row_max[:, None]).exp_()
        has_target = target_cols >= 0
        target_rows = has_target.nonzero().squeeze(1)
        # One all-reduce for both sums: row 0 the exp-sums, row 1 the (owner's) target logit.
        sums = logits.new_zeros((2, num_rows))
        sums[0] = probs.sum(dim=1)
        sums[1, target_rows] = logits[target_rows, target_cols[target_rows]]
        dist.all_reduce(sums, group=group)
        sum_exp, target_logit = sums[0], sums[1]

        loss = (sum_exp.log() + row_max - target_logit).mean()
        probs.div_(sum_exp[:, None])
        ctx.save_for_backward(probs, target_rows, target_cols[target_rows])
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        probs, target_rows, target_cols = ctx.saved_tensors
        scale = grad_loss / probs.shape[0]
        grad_logits = probs * scale
        grad_logits[target_rows, target_cols] -= scale
        return grad_logits, None, None


def sharded_cross_entropy(
    logits: Tensor, target_cols: Tensor, group: ProcessGroup | None
) -> Tensor:
    """Mean cross-entropy of the global batch; `target_cols` is -1 where another rank owns the class.

    With one rank this is `F.cross_entropy` and takes no collective. Half-precision logits
    are upcast: an fp16 exp-sum over a million classes would overflow.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if rank_and_world(group)[1] == 1:
        return F.cross_entropy(logits, target_cols)
    return _ShardedCrossEntropy.apply(logits, target_cols, group)
