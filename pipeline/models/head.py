"""The embedding head shared by the ResNet-style backbones: BN -> Dropout -> FC -> BN.

No activation at the end: SphereFace (Liu et al. 2017) and centre loss (Wen et al. 2016)
both note that a final ReLU confines features to the positive orthant, which wastes half
of the angular space the margin losses work in.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    def __init__(self, channels: int, spatial: int, embedding_size: int, dropout: float = 0.0):
        super().__init__()
        self.bn_features = nn.BatchNorm2d(channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_size)
        self.bn_embedding = nn.BatchNorm1d(embedding_size, eps=1e-5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.bn_features(features), 1))
        return self.bn_embedding(self.fc(x))
