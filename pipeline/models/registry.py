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
_CHANNELS_LAST_ON_CPU: set[str] = set()


def register(
    name: str, *, channels_last_on_cpu: bool = False
) -> Callable[[BackboneFactory], BackboneFactory]:
    """`channels_last_on_cpu`: this backbone trains faster on CPU with NHWC activations
    (measured per backbone: oneDNN's depthwise and small convolutions gain, the ResNets'
    3x3 convolutions lose about 10 %); see `prefers_channels_last`."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = factory
        if channels_last_on_cpu:
            _CHANNELS_LAST_ON_CPU.add(name)
        return factory

    return add


def prefers_channels_last(name: str, device_type: str) -> bool:
    """Whether `train.memory_format: auto` runs backbone `name` in channels_last on this
    device type: always on CUDA (cuDNN's tensor-core kernels are NHWC), per backbone on CPU."""
    return device_type == "cuda" or name in _CHANNELS_LAST_ON_CPU


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
