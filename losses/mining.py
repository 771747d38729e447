"""Triplet mining over a block of anchors against a candidate set, in O(rows x candidates) memory.

Pure functions: distances, masks, and the choice of negatives for FaceNet's semi-hard
selection and batch-hard; batch-all is reduced analytically from sorted negatives. Nothing
here builds a [rows, candidates, candidates] tensor: every per-anchor choice is a sort plus
`searchsorted`, so a 4096 x 4096 batch stays at a few B² floats.

Rows are anchors; candidates are the (possibly all-gathered) batch; `anchor_cols` gives each
anchor's own column among the candidates so it is never its own positive.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def pairwise_squared_distances(rows: Tensor, candidates: Tensor) -> Tensor:
    """‖r_i − c_j‖² for all pairs, [rows, candidates], clamped at 0 against rounding."""
    squared = (
        rows.pow(2).sum(dim=1, keepdim=True)
        + candidates.pow(2).sum(dim=1)[None, :]
        - 2.0 * rows @ candidates.T
    )
    return squared.clamp_min(0.0)


def triplet_masks(
    anchor_labels: Tensor, candidate_labels: Tensor, anchor_cols: Tensor
) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean masks [rows, candidates]; an anchor is not its own positive."""
    same = anchor_labels[:, None] == candidate_labels[None, :]
    is_self = (
        anchor_cols[:, None] == torch.arange(candidate_labels.numel(), device=same.device)[None, :]
    )
    return same & ~is_self, ~same


def _sorted_negatives(distances: Tensor, negative: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: negative distances ascending (+inf after the last), their columns, their count."""
    masked = torch.where(negative, distances.detach(), torch.full_like(distances, float("inf")))
    values, cols = masked.sort(dim=1)
    return values, cols, negative.sum(dim=1)


def semihard_negative_cols(distances: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """For each (anchor, positive) pair, the column of FaceNet's semi-hard negative.

    The nearest negative strictly farther than the positive; if there is none, the farthest
    negative (TensorFlow `triplet_semihard_loss`). -1 where the pair is not valid (not a
    positive, or the anchor has no negative). Result [rows, candidates], entry (a, p).
    """
    sorted_values, sorted_cols, num_negatives = _sorted_negatives(distances, negative)
    first_farther = torch.searchsorted(sorted_values, distances.detach().contiguous(), right=True)
    farthest = (num_negatives - 1).clamp_min(0)[:, None].expand_as(first_farther)
    rank_in_sorted = torch.where(first_farther < num_negatives[:, None], first_farther, farthest)
    chosen = sorted_cols.gather(1, rank_in_sorted)
    valid = positive & (num_negatives > 0)[:, None]
    return torch.where(valid, chosen, torch.full_like(chosen, -1))


def hardest_cols(distances: Tensor, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Batch-hard: per anchor, the farthest positive's and nearest negative's column (-1 if none)."""
    detached = distances.detach()
    far_pos = torch.where(positive, detached, torch.full_like(detached, float("-inf"))).argmax(
        dim=1
    )
    near_neg = torch.where(negative, detached, torch.full_like(detached, float("inf"))).argmin(
        dim=1
    )
    has_both = positive.any(dim=1) & negative.any(dim=1)
    missing = torch.full_like(far_pos, -1)
    return torch.where(has_both, far_pos, missing), torch.where(has_both, near_neg, missing)


class TripletSums(NamedTuple):
    """Sums over one block of anchors; ranks add theirs before dividing."""

    loss_sum: Tensor  # differentiable
    num_terms: Tensor  # the denominator of the mean (int64)
    num_pairs: Tensor  # valid (anchor, positive) pairs: the anchor also has a negative
    num_triplets: Tensor  # triplets the mode considers
    num_active: Tensor  # of those, how many have a positive loss


def semihard_sums(
    distances: Tensor, positive: Tensor, negative: Tensor, margin: float
) -> TripletSums:
    """Mean over every valid (a, p) of [d(a,p) − d(a,n*) + margin]_+ with n* semi-hard."""
    negative_cols = semihard_negative_cols(distances, positive, negative)
    valid = negative_cols >= 0
    d_neg = distances.gather(1, negative_cols.clamp_min(0))
    per_pair = torch.relu(distances - d_neg + margin)
    per_pair = torch.where(valid, per_pair, torch.zeros_like(per_pair))
    num_pairs = valid.sum()
    return TripletSums(per_pair.sum(), num_pairs, num_pairs, num_pairs, (per_pair > 0).sum())


def hard_sums(distances: Tensor, positive: Tensor, negative: Tensor, margin: float) -> TripletSums:
    """Mean over anchors having both of [max_p d(a,p) − min_n d(a,n) + margin]_+."""
    pos_cols, neg_cols = hardest_cols(distances, positive, negative)
    valid = pos_cols >= 0
    d_pos = distances.gather(1, pos_cols.clamp_min(0)[:, None]).squeeze(1)
    d_neg = distances.gather(1, neg_cols.clamp_min(0)[:, None]).squeeze(1)
    per_anchor = torch.relu(d_pos - d_neg + margin)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    num_anchors = valid.sum()
    num_pairs = (positive & negative.any(dim=1)[:, None]).sum()
    return TripletSums(
        per_anchor.sum(), num_anchors, num_pairs, num_anchors, (per_anchor > 0).sum()
    )


def all_sums(distances: Tensor, positive: Tensor, negative: Tensor, margin: float) -> TripletSums:
    """Batch-all: mean over triplets with a positive loss of [d(a,p) − d(a,n) + margin]_+.

    For a pair with t = d(a,p) + margin the active negatives are those with d(a,n) < t, a
    prefix of the sorted negatives: their summed loss is count·t − (prefix sum), so no
    triplet tensor is needed.
    """
    sorted_values, sorted_cols, num_negatives = _sorted_negatives(distances, negative)
    num_rows, num_cols = distances.shape
    in_range = torch.arange(num_cols, device=distances.device)[None, :] < num_negatives[:, None]
    sorted_distances = torch.where(
        in_range, distances.gather(1, sorted_cols), torch.zeros_like(distances)
    )
    prefix = torch.cat([distances.new_zeros(num_rows, 1), sorted_distances.cumsum(dim=1)], dim=1)

    thresholds = distances + margin
    num_active = torch.searchsorted(sorted_values, thresholds.detach().contiguous(), right=False)
    valid = positive & (num_negatives > 0)[:, None]
    num_active = torch.where(valid, num_active, torch.zeros_like(num_active))
    per_pair = num_active.to(distances.dtype) * thresholds - prefix.gather(1, num_active)
    per_pair = torch.where(valid, per_pair, torch.zeros_like(per_pair))
    total_active = num_active.sum()
    num_triplets = (positive.sum(dim=1) * num_negatives).sum()
    return TripletSums(per_pair.sum(), total_active, valid.sum(), num_triplets, total_active)


MINING_MODES = {"semihard": semihard_sums, "hard": hard_sums, "all": all_sums}
