"""MobileFaceNet (Chen et al. 2018): inverted residual bottlenecks and a global depthwise
convolution (GDConv) instead of global average pooling, so each of the 7x7 positions of
the last map gets its own learned weight (faces are aligned: position carries meaning).
"""

from __future__ import annotations

import torch
from facetrain.pipeline.models.registry import register
from torch import nn

# (expansion, output channels, repeats, stride of the first repeat), Table 1 of the paper.
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def conv_bn(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=kernel // 2 if kernel == 3 else 0,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            conv_bn(in_ch, hidden, 1),
            conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            conv_bn(hidden, out_ch, 1, act=False),  # linear bottleneck
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 128, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 3, stride=2), conv_bn(64, 64, 3, groups=64)]
        in_ch = 64
        for expansion, out_ch, repeats, stride in BOTTLENECKS:
            for index in range(repeats):
                layers.append(Bottleneck(in_ch, out_ch, expansion, stride if index == 0 else 1))
                in_ch = out_ch
        layers.append(conv_bn(in_ch, 512, 1))
        self.features = nn.Sequential(*layers)
        self.gdconv = conv_bn(512, 512, 7, groups=512, act=False)  # linear GDConv 7x7
        self.dropout = nn.Dropout(p=dropout)
        self.embedding = nn.Conv2d(512, embedding_size, 1, bias=False)
        self.bn_embedding = nn.BatchNorm1d(embedding_size)  # no ReLU after: see head.py

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.gdconv(self.features(images)))
        return self.bn_embedding(torch.flatten(self.embedding(x), 1))


@register("mobilefacenet", channels_last_on_cpu=True)
def mobilefacenet(embedding_size: int, **kwargs) -> nn.Module:
    return MobileFaceNet(embedding_size, **kwargs)
