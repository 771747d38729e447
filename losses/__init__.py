"""Pure-PyTorch metric-learning losses, exact in one process and across ranks.

Every loss has the contract `forward(embeddings, labels) -> scalar` and takes a `group`
(a torch.distributed process group, or None for one process). See docs/losses.md.
"""

from facetrain.losses.asoftmax import ASoftmaxLoss
from facetrain.losses.center import CenterLoss
from facetrain.losses.registry import LOSS_TYPES, build_loss
from facetrain.losses.sharding import merge_shards, reshard, shard_range, slice_rows
from facetrain.losses.softmax import SoftmaxLoss
from facetrain.losses.triplet import TripletLoss

__all__ = [
    "LOSS_TYPES",
    "ASoftmaxLoss",
    "CenterLoss",
    "SoftmaxLoss",
    "TripletLoss",
    "build_loss",
    "merge_shards",
    "reshard",
    "shard_range",
    "slice_rows",
]
