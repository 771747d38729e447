"""The layer that turns backbone features into the embedding these losses consume."""

from __future__ import annotations

from torch import Tensor, nn


class EmbeddingHead(nn.Module):
    """Linear → BatchNorm1d with no activation after it.

    SphereFace and the centre-loss paper both end the embedding without a ReLU: a ReLU would
    confine features to the positive orthant and waste most of the angular space.
    """

    def __init__(self, in_features: int, embedding_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, embedding_size, bias=False)
        self.norm = nn.BatchNorm1d(embedding_size)

    def forward(self, features: Tensor) -> Tensor:
        return self.norm(self.linear(features.flatten(1)))
