"""Losses by their config name (`type:` in YAML), OpenSphere style: no if/elif ladder.

Each loss module registers its class with `@register_loss("name")`, as backbones do with
`pipeline.models.register`; importing `facetrain.losses` imports every loss module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from facetrain.losses.base import EmbeddingLoss

LOSS_TYPES: dict[str, type[EmbeddingLoss]] = {}

L = TypeVar("L", bound=type[EmbeddingLoss])


def register_loss(name: str) -> Callable[[L], L]:
    def add(cls: L) -> L:
        if name in LOSS_TYPES:
            raise ValueError(f"loss type {name!r} is registered twice")
        LOSS_TYPES[name] = cls
        return cls

    return add


def build_loss(loss_type: str, **kwargs: Any) -> EmbeddingLoss:
    """`build_loss("asoftmax", embedding_size=512, num_classes=10_000, margin=4, group=g)`."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss type {loss_type!r}: expected one of {sorted(LOSS_TYPES)}")
    return LOSS_TYPES[loss_type](**kwargs)
