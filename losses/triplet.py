"""FaceNet triplet loss (Schroff et al. 2015) with online mining over the global batch.

Each rank mines for its own anchors against the all-gathered batch, so negatives (and
positives) from every rank are candidates; the per-rank sums are added across ranks before
the mean, which makes the result equal to one process mining the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from facetrain.losses.checks import check_batch
from facetrain.losses.distributed import (
    ProcessGroup,
    gather_batch,
    sum_across_ranks,
)
from facetrain.losses.mining import MINING_MODES, pairwise_squared_distances, triplet_masks
from torch import Tensor, nn


class TripletLoss(nn.Module):
    """Triplet loss on squared Euclidean distances; `mining` is "semihard", "hard" or "all".

    `.last_stats` holds the latest call's global statistics: valid_pairs, num_triplets,
    num_active and active_fraction (active / considered triplets).
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "semihard",
        normalize: bool = True,
        group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if mining not in MINING_MODES:
            raise ValueError(
                f"TripletLoss: mining={mining!r}, expected one of {sorted(MINING_MODES)}"
            )
        self.margin = margin
        self.mining = mining
        self.normalize = normalize
        self.group = group
        self.last_stats: dict[str, float] = {}

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
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
        self.last_stats = {
            "valid_pairs": num_pairs,
            "num_triplets": num_triplets,
            "num_active": num_active,
            "active_fraction": num_active / num_triplets if num_triplets else 0.0,
        }
        # An empty selection still returns a zero inside the graph, never 0/0.
        return loss_sum / max(num_terms, 1)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, normalize={self.normalize}"
