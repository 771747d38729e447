"""The contract every facetrain loss keeps, and what a trainer may ask of it.

A loss is an `nn.Module` with

    forward(embeddings [N, D], labels [N]) -> scalar   the mean over the (global) batch
    statistics() -> {name: float}                       figures worth logging (λ, active triplets)
    rng_state() / load_rng_state(state)                 the loss's own random stream (Partial FC
                                                        sampling), so a resume draws the same
    group                                               the process group it is exact over;
                                                        None means one process
    updates_state_in_forward                            True when forward moves state from
                                                        the embeddings (centres)

Losses that hold per-class rows (classifiers, centres) are also `ClassSharded`: they own the
rows of classes class_start … class_start+num_local_classes-1 and save/load them through
`shard_state()` / `load_class_rows()` under any world size (see `sharding`).

Nothing outside `losses/` reads a loss's private attributes: this is the whole interface.
There is no per-step hook: the one schedule (A-Softmax's λ) counts the training-mode forward
passes that ran, as SphereFace's Caffe code does, and that count is a buffer saved with the
module's state_dict, so a trainer has nothing to tell it.
"""

from __future__ import annotations

from torch import Tensor, nn


class EmbeddingLoss(nn.Module):
    """Base of every loss: `forward(embeddings, labels)` plus the optional parts above."""

    # True when a training-mode forward changes state from the embeddings it sees (the
    # centre loss moves its centres): a trainer must then check the embeddings are finite
    # before the forward, since undoing that update would mean copying every centre.
    updates_state_in_forward: bool = False

    def statistics(self) -> dict[str, float]:
        """Scalars about the latest forward besides the loss value; none by default."""
        return {}

    def rng_state(self) -> Tensor | None:
        """The state of the loss's own generator, or None when it draws nothing."""
        return None

    def load_rng_state(self, state: Tensor) -> None:
        """Restore what `rng_state` returned (only meaningful on the same rank layout)."""
        del state  # a loss without a generator has nothing to restore
