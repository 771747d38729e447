"""iResNet-18/34/50/100 (Deng et al., ArcFace; the "IR" block of insightface).

Improved residual block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, with a
stride-1 stem so a 112x112 face reaches the head as a 7x7 map after four stages.
"""

from __future__ import annotations

import torch
from facetrain.pipeline.models.head import EmbeddingHead
from facetrain.pipeline.models.registry import register
from torch import nn

STAGE_WIDTHS = (64, 128, 256, 512)


class IRBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class IResNet(nn.Module):
    def __init__(
        self, blocks_per_stage: tuple[int, ...], embedding_size: int = 512, dropout: float = 0.0
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64, eps=1e-5),
            nn.PReLU(64),
        )
        stages, in_channels = [], 64
        for width, num_blocks in zip(STAGE_WIDTHS, blocks_per_stage, strict=True):
            blocks = [IRBlock(in_channels, width, stride=2)]
            blocks += [IRBlock(width, width, stride=1) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = EmbeddingHead(in_channels, 7, embedding_size, dropout)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(images)))


def _factory(blocks_per_stage: tuple[int, ...]):
    def build(embedding_size: int, **kwargs) -> nn.Module:
        return IResNet(blocks_per_stage, embedding_size, **kwargs)

    return build


for _name, _blocks in {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}.items():
    register(_name)(_factory(_blocks))
