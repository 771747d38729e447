"""Backbones by name: `build_backbone("iresnet50", 512)`.

Each backbone module registers its constructors with `@register("name")`; the config names
one and this registry builds it, so adding a backbone is one new file, never an if/elif.
Every backbone takes float images [B, 3, 112, 112] in [-1, 1] (RGB, pixel/127.5 - 1) and
returns embeddings [B, embedding_size] that end without a ReLU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from facetrain.pipeline.config import ModelConfig

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneFactory] = {}


def register(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def add(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(name: str, embedding_size: int, **kwargs) -> nn.Module:
    """Build the backbone registered as `name`, ending in an `embedding_size`-d embedding."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"model.backbone {name!r}: unknown backbone; expected one of {available_backbones()}"
        ) from None
    return factory(embedding_size=embedding_size, **kwargs)


def backbone_from_config(model: ModelConfig) -> nn.Module:
    """The backbone a config's `model:` section describes: the one place that reads it, so
    training, checkpoints and logged models build the same network."""
    return build_backbone(model.backbone, model.embedding_size, dropout=model.dropout)
