"""The normalised-weight classifier layer (A-Softmax, ArcFace, CosFace, combined margins), lean.

Every logit is `scale · f_i · W_j / ‖W_j‖` and only the target logit of a row carries a
margin. Written naively (`f @ normalize(W).T`, then `acos`/`cos` on every logit, then a
scatter), autograd keeps a normalised copy of the class shard and several batch × class
tensors alive, which at a million classes costs 2.6× softmax's memory and 3–4× its time.
Here:

- `normalized_logits` scales `f @ Wᵀ` by the inverse row norms in place; its backward is
  written by hand, so no normalised copy of W exists in either pass and autograd saves no
  batch × class tensor;
- it also hands out the T target cosines, so the margin maths (`acos`, `cos`, ψ) runs on T
  values with ordinary autograd, and the result is added onto the target entries in place.
"""

from __future__ import annotations

import torch
from facetrain.losses.classifier import ShardedClassifierLoss
from torch import Tensor

# Rows of W per block when the backward takes row-wise dot products: a whole-matrix
# `(a * W).sum(1)` would allocate one more class-shard-sized temporary.
ROW_DOT_BLOCK = 8192


def _row_dots(a: Tensor, b: Tensor) -> Tensor:
    """Σ_d a[c, d] · b[c, d] per row c, in blocks so no [C, D] temporary is made."""
    out = a.new_empty(a.shape[0])
    for start in range(0, a.shape[0], ROW_DOT_BLOCK):
        stop = start + ROW_DOT_BLOCK
        out[start:stop] = (a[start:stop] * b[start:stop]).sum(dim=1)
    return out


class _NormalizedLogits(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        features: Tensor,
        weight: Tensor,
        target_rows: Tensor,
        target_cols: Tensor,
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        # linalg.vector_norm reduces rows without a [C, D] temporary.
        inv_norms = torch.linalg.vector_norm(weight, dim=1).clamp_min(1e-12).reciprocal()
        logits = features @ weight.T
        target_dots = logits[target_rows, target_cols] * inv_norms[target_cols]
        column_scale = inv_norms * scale
        logits.mul_(column_scale)
        ctx.save_for_backward(features, weight, inv_norms, column_scale, target_rows, target_cols)
        return logits, target_dots

    @staticmethod
    def backward(ctx, grad_logits: Tensor, grad_target_dots: Tensor):
        features, weight, inv_norms, column_scale, target_rows, target_cols = ctx.saved_tensors
        # g_ij = dL/d(f_i · W_j): every logit, plus the target dots handed out separately.
        grad_dots = grad_logits * column_scale
        if grad_target_dots is not None:
            grad_dots[target_rows, target_cols] += grad_target_dots * inv_norms[target_cols]
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = grad_dots @ weight
        if ctx.needs_input_grad[1]:
            # With u_j = W_j/‖W_j‖ and a_j = Σ_i g_ij f_i (g_ij already carries 1/‖W_j‖):
            # dL/dW_j = a_j − u_j (u_j · a_j), the projection off the row direction.
            grad_weight = grad_dots.T @ features
            del grad_dots
            radial = _row_dots(grad_weight, weight).mul_(inv_norms.square())
            grad_weight.addcmul_(weight, radial[:, None], value=-1.0)
        return grad_features, grad_weight, None, None, None


def normalized_logits(
    features: Tensor, weight: Tensor, scale: float, target_rows: Tensor, target_cols: Tensor
) -> tuple[Tensor, Tensor]:
    """(`scale · features @ (W / ‖W‖)ᵀ` [N, C], the unscaled target entries `f_i · W_j/‖W_j‖`
    at (target_rows, target_cols) [T]); both differentiable in features and weight.

    The target dots come out separately so the margin can be computed from them without a
    gather from W (whose backward would allocate a dense [C, D] gradient of zeros).
    """
    return _NormalizedLogits.apply(features, weight, target_rows, target_cols, scale)


class NormalizedClassifierLoss(ShardedClassifierLoss):
    """A class-sharded layer of unit-norm class rows whose target logit carries a margin.

    Subclasses say what multiplies the unit rows (`features`: the embedding itself, or its
    direction), by how much (`logit_scale`), and what the target logit becomes given its
    cosine and the feature norm (`target_logits`).
    """

    logit_scale: float = 1.0

    def features(self, embeddings_all: Tensor) -> Tensor:
        return embeddings_all

    def target_logits(self, cos_target: Tensor, feature_norms: Tensor) -> Tensor:
        raise NotImplementedError

    def class_logits(
        self, embeddings_all: Tensor, kept_cols: Tensor | None, target_cols: Tensor
    ) -> Tensor:
        weight = self.weight if kept_cols is None else self.weight[kept_cols]
        features = self.features(embeddings_all)
        target_rows = (target_cols >= 0).nonzero().squeeze(1)
        cols = target_cols[target_rows]
        logits, target_dots = normalized_logits(
            features, weight, self.logit_scale, target_rows, cols
        )
        feature_norms = torch.linalg.vector_norm(features[target_rows], dim=1)
        target_values = self.target_logits(target_dots / feature_norms, feature_norms)
        # Swap the plain target logit for the margined one as an in-place sum (its backward
        # passes the batch × class gradient through untouched, where an overwrite copies it).
        margin_shift = target_values.to(logits.dtype) - self.logit_scale * target_dots
        return logits.index_put_((target_rows, cols), margin_shift, accumulate=True)
