"""Pure-PyTorch metric-learning losses, exact in one process and across ranks.

Every loss keeps the contract of `losses.base.EmbeddingLoss`: `forward(embeddings, labels)
-> scalar`, `statistics()`, its own RNG state, and a `group` (a torch.distributed process
group, or None for one process). Losses holding per-class rows are `ClassShardedMixin`s.
See docs/losses.md.
"""

from facetrain.losses.arcface import ArcFaceLoss
from facetrain.losses.asoftmax import ASoftmaxLoss
from facetrain.losses.base import EmbeddingLoss
from facetrain.losses.center import CenterLoss
from facetrain.losses.combined_margin import CombinedMarginLoss
from facetrain.losses.cosface import CosFaceLoss
from facetrain.losses.registry import LOSS_TYPES, build_loss, register_loss
from facetrain.losses.sharding import (
    ClassShardedMixin,
    merge_shards,
    reshard,
    shard_range,
    slice_rows,
)
from facetrain.losses.softmax import SoftmaxLoss
from facetrain.losses.triplet import TripletLoss

__all__ = [
    "LOSS_TYPES",
    "ASoftmaxLoss",
    "ArcFaceLoss",
    "CenterLoss",
    "ClassShardedMixin",
    "CombinedMarginLoss",
    "CosFaceLoss",
    "EmbeddingLoss",
    "SoftmaxLoss",
    "TripletLoss",
    "build_loss",
    "merge_shards",
    "register_loss",
    "reshard",
    "shard_range",
    "slice_rows",
]
