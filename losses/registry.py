"""Build a loss from its config name (`type:` in YAML), OpenSphere style: no if/elif ladder."""

from __future__ import annotations

from typing import Any

from facetrain.losses.asoftmax import ASoftmaxLoss
from facetrain.losses.center import CenterLoss
from facetrain.losses.softmax import SoftmaxLoss
from facetrain.losses.triplet import TripletLoss
from torch import nn

LOSS_TYPES: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxLoss,
    "asoftmax": ASoftmaxLoss,
    "center": CenterLoss,
    "triplet": TripletLoss,
}


def build_loss(loss_type: str, **kwargs: Any) -> nn.Module:
    """`build_loss("asoftmax", embedding_size=512, num_classes=10_000, margin=4, group=g)`."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss type {loss_type!r}: expected one of {sorted(LOSS_TYPES)}")
    return LOSS_TYPES[loss_type](**kwargs)
