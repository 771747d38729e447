"""FaceNet's offline triplet selection, and the triplet loss of triplets chosen beforehand.

Schroff et al. 2015 (§3.2) name two ways to find informative triplets: online, inside each
mini-batch (`TripletLoss`), and offline: every n steps, embed a sample of the data with the
latest weights and pick the triplets of the next n steps from it. `select_triplets` is that
pick; `given_triplet_loss` (the triplet term with selection: offline) trains on its
result, rows laid out as (a, p, n, a, p, n, ...).

Same semantics as the online loss: squared Euclidean distance on L2-normalised embeddings,
and for each (anchor, positive) pair one negative, chosen by `negatives`:

    semihard              the nearest n with d(a,p) < d(a,n) < d(a,p) + margin
    hard                  the anchor's nearest negative, if d(a,n) < d(a,p) + margin
    random-within-margin  uniform among the n with d(a,n) < d(a,p) + margin
                          (the rule of the widely used davidsandberg/facenet reimplementation)

Pairs without such a negative get no triplet: their loss is zero and a step spent on them
teaches nothing. The selection runs in float64 so every rank, given the same embeddings and
generator, picks the same triplets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from facetrain.losses.checks import check_batch
from facetrain.losses.distributed import ProcessGroup, rank_and_world
from facetrain.losses.mining import (
    pairwise_squared_distances,
    semihard_negative_cols,
    triplet_masks,
)
from torch import Generator, Tensor


class Selection(NamedTuple):
    triplets: Tensor  # int64 [T, 3]: (anchor, positive, negative) row indices, pair order
    losses: Tensor  # float64 [T]: d(a,p) - d(a,n) + margin at selection time
    num_pairs: int  # (anchor, positive) pairs whose anchor has a negative at all


# Each rule: (distances, positive, negative, margin, generator) -> [rows, candidates] with
# entry (a, p) the chosen negative's column, -1 where no negative qualifies.


def _semihard(
    distances: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float,
    generator: Generator | None,
) -> Tensor:
    # The online loss's choice (nearest negative farther than the positive, else the
    # farthest), kept only where it is truly semi-hard.
    cols = semihard_negative_cols(distances, positive, negative)
    d_neg = distances.gather(1, cols.clamp_min(0))
    keep = (cols >= 0) & (d_neg > distances) & (d_neg < distances + margin)
    return torch.where(keep, cols, torch.full_like(cols, -1))


def _hard(
    distances: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float,
    generator: Generator | None,
) -> Tensor:
    masked = torch.where(negative, distances, torch.full_like(distances, float("inf")))
    cols = masked.argmin(dim=1, keepdim=True).expand_as(distances)
    keep = positive & negative.any(dim=1, keepdim=True)
    keep &= distances.gather(1, cols) < distances + margin
    return torch.where(keep, cols, torch.full_like(cols, -1))


def _random_within_margin(
    distances: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float,
    generator: Generator | None,
) -> Tensor:
    # Negatives sorted by distance: the eligible ones (d(a,n) < d(a,p) + margin) are a
    # prefix, so a uniform position inside it is a uniform eligible negative.
    masked = torch.where(negative, distances, torch.full_like(distances, float("inf")))
    sorted_values, sorted_cols = masked.sort(dim=1, stable=True)
    eligible = torch.searchsorted(sorted_values, (distances + margin).contiguous(), right=False)
    draws = torch.rand(distances.shape, generator=generator, dtype=torch.float64)
    position = (draws.to(distances.device) * eligible).long().clamp_max(distances.shape[1] - 1)
    cols = sorted_cols.gather(1, position)
    return torch.where(positive & (eligible > 0), cols, torch.full_like(cols, -1))


NEGATIVE_RULES: dict[str, Callable[..., Tensor]] = {
    "semihard": _semihard,
    "hard": _hard,
    "random-within-margin": _random_within_margin,
}


def select_triplets(
    embeddings: Tensor,
    labels: Tensor,
    margin: float,
    negatives: str = "semihard",
    generator: torch.Generator | None = None,
    normalize: bool = True,
    block_rows: int = 1024,
) -> Selection:
    """One triplet per qualifying (anchor, positive) pair of the sample, in pair order.

    `generator` draws the random negatives (only `random-within-margin` uses it); anchors
    are processed in blocks of `block_rows`, so memory stays at block_rows x N.
    """
    check_batch(embeddings, labels, None, "select_triplets")
    if negatives not in NEGATIVE_RULES:
        raise ValueError(f"negatives={negatives!r}: expected one of {sorted(NEGATIVE_RULES)}")
    candidates = embeddings.detach().to(torch.float64)
    if normalize:
        candidates = F.normalize(candidates, dim=1)
    triplets, losses, num_pairs = [], [], 0
    for start in range(0, candidates.shape[0], block_rows):
        rows = torch.arange(start, min(start + block_rows, candidates.shape[0]))
        rows = rows.to(candidates.device)
        distances = pairwise_squared_distances(candidates[rows], candidates)
        positive, negative = triplet_masks(labels[rows], labels, rows)
        num_pairs += int((positive & negative.any(dim=1, keepdim=True)).sum())
        cols = NEGATIVE_RULES[negatives](distances, positive, negative, margin, generator)
        anchor_slot, positive_col = (cols >= 0).nonzero(as_tuple=True)
        negative_col = cols[anchor_slot, positive_col]
        triplets.append(torch.stack([rows[anchor_slot], positive_col, negative_col], dim=1))
        losses.append(
            distances[anchor_slot, positive_col] - distances[anchor_slot, negative_col] + margin
        )
    if not triplets:
        return Selection(torch.empty(0, 3, dtype=torch.int64), torch.empty(0), 0)
    return Selection(torch.cat(triplets).cpu(), torch.cat(losses).cpu(), num_pairs)


def given_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float,
    normalize: bool = True,
    group: ProcessGroup | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Mean of [d(a,p) - d(a,n) + margin]_+ over triplets given as rows (a, p, n, a, ...).

    No mining: the triplets were chosen beforehand (`select_triplets`). Each rank averages its
    own triplets; with the same number per rank the data-parallel mean of gradients is the
    global mean's. Returns (loss, statistics summed over `group`: num_triplets, num_active,
    active_fraction).
    """
    check_batch(embeddings, labels, None, "TripletLoss(selection=offline)")
    if embeddings.shape[0] % 3:
        raise ValueError(
            f"TripletLoss(selection=offline): batch of {embeddings.shape[0]} rows, expected "
            "whole triplets (a multiple of 3, rows anchor, positive, negative, ...)"
        )
    triplet_labels = labels.view(-1, 3)
    bad = (triplet_labels[:, 0] != triplet_labels[:, 1]) | (
        triplet_labels[:, 0] == triplet_labels[:, 2]
    )
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"TripletLoss(selection=offline): triplet {first} has labels "
            f"{triplet_labels[first].tolist()}, expected anchor == positive != negative"
        )
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
    anchor, positive, negative = embeddings.view(-1, 3, embeddings.shape[1]).unbind(dim=1)
    per_triplet = torch.relu(
        (anchor - positive).pow(2).sum(dim=1) - (anchor - negative).pow(2).sum(dim=1) + margin
    )
    counts = torch.tensor(
        [per_triplet.numel(), int((per_triplet > 0).sum())],
        dtype=torch.float64,
        device=embeddings.device,
    )
    if rank_and_world(group)[1] > 1:
        torch.distributed.all_reduce(counts, group=group)
    num_triplets, num_active = (int(v) for v in counts.tolist())
    stats = {
        "num_triplets": num_triplets,
        "num_active": num_active,
        "active_fraction": num_active / num_triplets if num_triplets else 0.0,
    }
    loss = per_triplet.mean() if per_triplet.numel() else embeddings.sum() * 0.0
    return loss, stats
