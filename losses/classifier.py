"""What the class-sharded classifier losses (softmax, A-Softmax) share.

A subclass only says how logits are made from the global batch and its (sampled) class rows
(`class_logits`); this base gathers the batch, owns the weight shard, samples classes
(Partial FC) and takes the distributed softmax cross-entropy.
"""

from __future__ import annotations

import torch
from facetrain.losses.base import EmbeddingLoss
from facetrain.losses.checks import check_batch, check_label_range
from facetrain.losses.cross_entropy import sharded_cross_entropy
from facetrain.losses.distributed import ProcessGroup, gather_batch, rank_and_world
from facetrain.losses.sampling import remap_target_cols, sample_local_classes
from facetrain.losses.sharding import ClassShardedMixin, init_class_rows, shard_range
from torch import Tensor, nn

# Partial FC's initialisation: small enough that the first logits are near zero.
WEIGHT_INIT_STD = 0.01


class ShardedClassifierLoss(ClassShardedMixin, EmbeddingLoss):
    """Base of the classifier losses: weight rows for classes class_start…+num_local_classes-1."""

    _class_tensor_names = ("weight",)

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        group: ProcessGroup | None = None,
        seed: int = 0,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if embedding_size < 1:
            raise ValueError(f"{name}: embedding_size={embedding_size}, expected >= 1")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"{name}: sample_rate={sample_rate}, expected a value in (0, 1]")
        rank, world = rank_and_world(group)
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.class_start, self.num_local_classes = shard_range(num_classes, rank, world)
        self.group = group
        self.seed = seed
        self.sample_rate = sample_rate
        self.weight = nn.Parameter(
            init_class_rows(
                seed, self.class_start, self.num_local_classes, embedding_size, WEIGHT_INIT_STD
            )
        )
        self._sampling_generator: torch.Generator | None = None
        # Global class indices that got logits in the last forward; None at rate 1.0 (all local).
        self.last_sampled_classes: Tensor | None = None

    def class_logits(
        self, embeddings_all: Tensor, kept_cols: Tensor | None, target_cols: Tensor
    ) -> Tensor:
        """Logits [global batch, kept classes]; `kept_cols=None` means every local class."""
        raise NotImplementedError

    def on_training_step(self) -> None:
        """Called once per training-mode forward, after the inputs are checked (schedules)."""

    def _generator(self) -> torch.Generator:
        device = self.weight.device
        if self._sampling_generator is None or self._sampling_generator.device != device:
            # Differs per rank (class_start) so shards do not draw in lockstep.
            self._sampling_generator = torch.Generator(device=device).manual_seed(
                (self.seed * 1_000_003 + self.class_start + 1) % (2**63)
            )
        return self._sampling_generator

    def rng_state(self) -> Tensor | None:
        """Partial FC's sampling stream (None until the first sampled forward)."""
        return None if self._sampling_generator is None else self._sampling_generator.get_state()

    def load_rng_state(self, state: Tensor) -> None:
        self._generator().set_state(state)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        name = type(self).__name__
        check_batch(embeddings, labels, self.embedding_size, name)
        check_label_range(labels, self.num_classes, name)
        if self.training:
            self.on_training_step()
        embeddings_all, labels_all, _ = gather_batch(embeddings, labels, self.group)
        # The head's dtype sets the precision (e.g. bf16 embeddings from a bf16 backbone
        # against float32 class rows), as insightface's partial FC does.
        embeddings_all = embeddings_all.to(self.weight.dtype)

        local_cols = labels_all - self.class_start
        is_local = (local_cols >= 0) & (local_cols < self.num_local_classes)
        target_cols = torch.where(is_local, local_cols, torch.full_like(local_cols, -1))

        kept_cols = None
        if self.sample_rate < 1.0:
            kept_cols = sample_local_classes(
                target_cols, self.num_local_classes, self.sample_rate, self._generator()
            )
            target_cols = remap_target_cols(target_cols, kept_cols, self.num_local_classes)
            self.last_sampled_classes = kept_cols + self.class_start
        else:
            self.last_sampled_classes = None

        logits = self.class_logits(embeddings_all, kept_cols, target_cols)
        return sharded_cross_entropy(logits, target_cols, self.group)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"class_start={self.class_start}, num_local_classes={self.num_local_classes}, "
            f"sample_rate={self.sample_rate}"
        )
