"""FaceNet triplet loss (Schroff et al. 2015): triplets mined online in the global batch, or
given (chosen offline beforehand by `selected_triplets.select_triplets`).

Online, each rank mines for its own anchors against the all-gathered batch, so negatives (and
positives) from every rank are candidates; the per-rank sums are added across ranks before
the mean, which makes the result equal to one process mining the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from facetrain.losses.base import EmbeddingLoss
from facetrain.losses.checks import check_batch
from facetrain.losses.distributed import (
    ProcessGroup,
    gather_batch,
    sum_across_ranks,
)
from facetrain.losses.mining import MINING_MODES, pairwise_squared_distances, triplet_masks
from facetrain.losses.registry import register_loss
from facetrain.losses.selected_triplets import given_triplet_loss
from torch import Tensor

SELECTIONS = ("online", "offline")


@register_loss("triplet")
class TripletLoss(EmbeddingLoss):
    """Triplet loss on squared Euclidean distances.

    `selection="online"` mines each batch (`mining`: "semihard", "hard" or "all");
    `selection="offline"` takes the batch as triplets already chosen, rows (a, p, n, a, ...).
    `statistics()` gives the latest call's global figures: num_triplets, num_active,
    active_fraction (active / considered triplets) and, online, valid_pairs.
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "semihard",
        normalize: bool = True,
        group: ProcessGroup | None = None,
        selection: str = "online",
    ) -> None:
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"TripletLoss: selection={selection!r}, expected one of {SELECTIONS}")
        if mining not in MINING_MODES:
            raise ValueError(
                f"TripletLoss: mining={mining!r}, expected one of {sorted(MINING_MODES)}"
            )
        self.margin = margin
        self.mining = mining
        self.normalize = normalize
        self.group = group
        self.selection = selection
        self._last_stats: dict[str, float] = {}

    def statistics(self) -> dict[str, float]:
        return dict(self._last_stats)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.selection == "offline":
            loss, self._last_stats = given_triplet_loss(
                embeddings, labels, self.margin, self.normalize, self.group
            )
            return loss
        check_batch(embeddings, labels, None, "TripletLoss")
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        embeddings_all, labels_all, row_start = gather_batch(embeddings, labels, self.group)
        num_rows = embeddings.shape[0]
        anchors = embeddings_all[row_start : row_start + num_rows]
        anchor_cols = torch.arange(row_start, row_start + num_rows, device=labels.device)

        distances = pairwise_squared_distances(anchors, embeddings_all)
        positive, negative = triplet_masks(labels, labels_all, anchor_cols)
        sums = MINING_MODES[self.mining](distances, positive, negative, self.margin)

        # One all-reduce for the loss sum and the counts: float64 holds counts exactly to 2^53.
        packed = torch.stack([value.to(torch.float64) for value in sums])
        totals = sum_across_ranks(packed, self.group)
        loss_sum = totals[0].to(sums.loss_sum.dtype)
        num_terms, num_pairs, num_triplets, num_active = (int(v) for v in totals[1:].tolist())
        self._last_stats = {
            "valid_pairs": num_pairs,
            "num_triplets": num_triplets,
            "num_active": num_active,
            "active_fraction": num_active / num_triplets if num_triplets else 0.0,
        }
        # An empty selection still returns a zero inside the graph, never 0/0.
        return loss_sum / max(num_terms, 1)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, normalize={self.normalize}, "
            f"selection={self.selection!r}"
        )
