"""Face embedding backbones, built by name from the config.

    from facetrain.pipeline.models import build_backbone
    net = build_backbone("iresnet50", embedding_size=512)   # [B,3,112,112] in [-1,1] -> [B,512]

Importing this package registers every backbone module below.
"""

from facetrain.pipeline.models import iresnet, mobilefacenet, tiny  # noqa: F401  (registration)
from facetrain.pipeline.models.head import EmbeddingHead
from facetrain.pipeline.models.registry import (
    available_backbones,
    backbone_from_config,
    build_backbone,
    prefers_channels_last,
    register,
)

__all__ = [
    "EmbeddingHead",
    "available_backbones",
    "backbone_from_config",
    "build_backbone",
    "prefers_channels_last",
    "register",
]
