"""Plain softmax classifier loss on a class-sharded layer: logits x Wᵀ + b, mean cross-entropy."""

from __future__ import annotations

import torch
from facetrain.losses.classifier import ShardedClassifierLoss
from facetrain.losses.distributed import ProcessGroup
from facetrain.losses.registry import register_loss
from torch import Tensor, nn


@register_loss("softmax")
class SoftmaxLoss(ShardedClassifierLoss):
    """Softmax cross-entropy; `.weight`/`.bias` hold rows class_start…+num_local_classes-1."""

    _class_tensor_names = ("weight", "bias")

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        bias: bool = True,
        group: ProcessGroup | None = None,
        *,
        seed: int = 0,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(
            embedding_size, num_classes, group=group, seed=seed, sample_rate=sample_rate
        )
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.num_local_classes))
        else:
            self.register_parameter("bias", None)

    def class_logits(
        self, embeddings_all: Tensor, kept_cols: Tensor | None, target_cols: Tensor
    ) -> Tensor:
        weight = self.weight if kept_cols is None else self.weight[kept_cols]
        logits = embeddings_all @ weight.T
        if self.bias is not None:
            logits = logits + (self.bias if kept_cols is None else self.bias[kept_cols])
        return logits
