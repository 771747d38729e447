"""Centre loss (Wen et al. 2016) with class-sharded, synchronised centres.

L_c = (1/2m) Σ_i ‖x_i − c_{y_i}‖² over the m samples of the (global) batch, the batch mean
of the Caffe reference. Centres are buffers, never seen by an optimiser: each training-mode
forward, after computing L_c with the current centres, moves them towards the detached batch
with Δc_j = Σ_{i: y_i=j} (c_j − x_i) / (1 + n_j), c_j ← c_j − α Δc_j. Across ranks the owner
of class j applies that update from every sample of j in the global batch.
"""

from __future__ import annotations

import torch
from facetrain.losses.base import EmbeddingLoss
from facetrain.losses.checks import check_batch, check_label_range
from facetrain.losses.distributed import (
    ProcessGroup,
    gather_batch,
    rank_and_world,
    sum_across_ranks,
)
from facetrain.losses.registry import register_loss
from facetrain.losses.sharding import ClassShardedMixin, shard_range
from torch import Tensor


@register_loss("center")
class CenterLoss(ClassShardedMixin, EmbeddingLoss):
    """`.centers` holds rows class_start…+num_local_classes-1; add λ·L_c to a softmax loss."""

    _class_tensor_names = ("centers",)
    updates_state_in_forward = True

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        alpha: float = 0.5,
        group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"CenterLoss: alpha={alpha}, expected a value in [0, 1]")
        rank, world = rank_and_world(group)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.alpha = alpha
        self.group = group
        self.class_start, self.num_local_classes = shard_range(num_classes, rank, world)
        # Zero start as in the Caffe reference; trivially the same for every world size.
        self.register_buffer("centers", torch.zeros(self.num_local_classes, embedding_size))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_batch(embeddings, labels, self.embedding_size, "CenterLoss")
        check_label_range(labels, self.num_classes, "CenterLoss")
        embeddings_all, labels_all, _ = gather_batch(embeddings, labels, self.group)

        local_cols = labels_all - self.class_start
        rows = ((local_cols >= 0) & (local_cols < self.num_local_classes)).nonzero().squeeze(1)
        cols = local_cols[rows]
        features = embeddings_all[rows].to(self.centers.dtype)
        # This rank's share: the samples whose class it owns.
        share = (features - self.centers[cols]).pow(2).sum()
        loss = sum_across_ranks(share, self.group) / (2 * max(embeddings_all.shape[0], 1))

        if self.training:
            self._update_centers(features.detach(), cols)
        return loss

    @torch.no_grad()
    def _update_centers(self, features: Tensor, cols: Tensor) -> None:
        classes, position = torch.unique(cols, return_inverse=True)
        counts = torch.bincount(position, minlength=classes.numel()).to(features.dtype)
        offsets = torch.zeros(
            classes.numel(), self.embedding_size, dtype=features.dtype, device=features.device
        )
        offsets.index_add_(0, position, self.centers[cols] - features)
        self.centers[classes] -= self.alpha * offsets / (1.0 + counts)[:, None]
        self.num_updates += 1

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, alpha={self.alpha}, "
            f"class_start={self.class_start}, num_local_classes={self.num_local_classes}"
        )
