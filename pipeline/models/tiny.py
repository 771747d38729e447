"""A few-thousand-parameter CNN for tests and smoke runs (not for real training)."""

from __future__ import annotations

import torch
from facetrain.pipeline.models.head import EmbeddingHead
from facetrain.pipeline.models.registry import register
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, embedding_size: int = 32, width: int = 8, dropout: float = 0.0):
        super().__init__()
        # 112 -> 28 -> 14 -> 7 with three strided convolutions.
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=4, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.PReLU(2 * width),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.PReLU(2 * width),
        )
        self.head = EmbeddingHead(2 * width, 7, embedding_size, dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@register("tiny", channels_last_on_cpu=True)
def tiny(embedding_size: int, **kwargs) -> nn.Module:
    return TinyCNN(embedding_size, **kwargs)
