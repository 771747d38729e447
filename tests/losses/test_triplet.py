import pytest
import torch
from facetrain.losses import TripletLoss
from facetrain.losses.mining import (
    hardest_cols,
    pairwise_squared_distances,
    semihard_negative_cols,
    triplet_masks,
)

from tests.losses import references


def _points(*coords):
    return torch.tensor([[float(c), 0.0] for c in coords], dtype=torch.float64)


# On a line (normalize=False): anchor 0 at 0, its positive at 2 (d=4), negatives at 1 (d=1),
# 3 (d=9) and 5 (d=25). Class 1 and class 2 members sit far to the right.
LINE = _points(0, 2, 1, 3, 5, 10, 11)
LINE_LABELS = torch.tensor([0, 0, 1, 1, 2, 3, 3])


def test_hand_built_semihard_choice():
    distances = pairwise_squared_distances(LINE, LINE)
    positive, negative = triplet_masks(LINE_LABELS, LINE_LABELS, torch.arange(7))
    chosen = semihard_negative_cols(distances, positive, negative)
    # (0, 1): d(a,p)=4; negatives farther than 4 are 3 (d=9) and 5 (d=25): nearest is row 3.
    assert chosen[0, 1] == 3
    # (1, 0): anchor at 2, d(a,p)=4; negatives at 1,3,5,10,11 -> d=1,1,9,64,81: first > 4 is 5 (d=9).
    assert chosen[1, 0] == 4
    # (5, 6): anchor at 10, positive at 11 (d=1); every negative is farther; nearest is 5 (d=25).
    assert chosen[5, 6] == 4
    # Not a positive pair, or the anchor itself: -1.
    assert chosen[0, 2] == -1 and chosen[0, 0] == -1
    # Anchor 4 (class 2) has no positive at all.
    assert (chosen[4] == -1).all()


def test_hand_built_semihard_falls_back_to_farthest_negative():
    x = _points(0, 5, 1, 2)  # positive at d=25, negatives at d=1 and d=4: none is farther
    labels = torch.tensor([0, 0, 1, 1])
    distances = pairwise_squared_distances(x, x)
    positive, negative = triplet_masks(labels, labels, torch.arange(4))
    assert semihard_negative_cols(distances, positive, negative)[0, 1] == 3
    loss = TripletLoss(margin=0.5, normalize=False)(x, labels)
    expected, chosen = references.triplet_loss(x, labels, 0.5, "semihard", normalize=False)
    assert chosen[(0, 1)] == 3
    torch.testing.assert_close(loss, expected)


def test_hand_built_hard_choice():
    distances = pairwise_squared_distances(LINE, LINE)
    positive, negative = triplet_masks(LINE_LABELS, LINE_LABELS, torch.arange(7))
    pos_cols, neg_cols = hardest_cols(distances, positive, negative)
    assert (pos_cols[0], neg_cols[0]) == (1, 2)  # farthest positive 2, nearest negative at 1
    assert (pos_cols[3], neg_cols[3]) == (2, 1)  # anchor at 3: positive at 1, nearest negative at 2
    assert pos_cols[4] == -1 and neg_cols[4] == -1  # class 2 has one member
    _, chosen = references.triplet_loss(LINE, LINE_LABELS, 0.2, "hard", normalize=False)
    for anchor, (p, q) in chosen.items():
        assert (pos_cols[anchor], neg_cols[anchor]) == (p, q)


def test_hand_built_all_counts_active_triplets():
    loss_fn = TripletLoss(margin=0.5, mining="all", normalize=False)
    loss = loss_fn(LINE, LINE_LABELS)
    # Active (a,p,n) with d(a,p) - d(a,n) + 0.5 > 0, counted by hand from the line layout:
    # a=0,p=1 (4): n at 1 (1), 3 (9)? 4-9+.5<0 -> only n=2 -> 1; a=1,p=0 (4): n d=1,1 -> 2;
    # a=2,p=3 (4): n d=1 (pos 0), 1 (pos 2) -> 2; a=3,p=2 (4): n d=1 (pos 2), 4 (pos 5)? 4-4+.5>0 -> 2;
    # a=5,p=6 (1): nearest negative d=25 -> 0; a=6,p=5: 0.
    assert loss_fn.statistics()["num_active"] == 7
    expected, _ = references.triplet_loss(LINE, LINE_LABELS, 0.5, "all", normalize=False)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
@pytest.mark.parametrize(
    ("seed", "batch", "dim", "num_classes", "normalize"),
    [(0, 12, 4, 3, True), (1, 16, 3, 5, False), (2, 9, 6, 2, True)],
)
def test_triplet_matches_reference_values_and_gradients(
    mining, seed, batch, dim, num_classes, normalize
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    loss_fn = TripletLoss(margin=0.3, mining=mining, normalize=normalize)
    loss = loss_fn(x, labels)
    loss.backward()

    x_ref = x.detach().clone().requires_grad_(True)
    expected, _ = references.triplet_loss(x_ref, labels, 0.3, mining, normalize=normalize)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
def test_triplet_gradcheck(mining):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    loss_fn = TripletLoss(margin=0.4, mining=mining)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (x,))


@pytest.mark.parametrize("mining", ["semihard", "hard", "all"])
def test_batch_without_valid_pair_returns_a_zero_in_the_graph(mining):
    x = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss(mining=mining)(x, torch.tensor([0, 1, 2, 3]))  # no positives
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    single_class = TripletLoss(mining=mining)
    assert single_class(x, torch.zeros(4, dtype=torch.int64)).item() == 0.0  # no negatives
    assert single_class.statistics()["valid_pairs"] == 0


def test_stats_report_pairs_and_active_fraction():
    loss_fn = TripletLoss(margin=0.5, mining="semihard", normalize=False)
    loss_fn(LINE, LINE_LABELS)
    expected_pairs = 2 + 2 + 2  # classes 0, 1 and 3 each give two ordered pairs
    assert loss_fn.statistics()["valid_pairs"] == expected_pairs
    assert 0.0 <= loss_fn.statistics()["active_fraction"] <= 1.0


def test_unknown_mining_mode_is_named():
    with pytest.raises(ValueError, match="mining='easy'"):
        TripletLoss(mining="easy")
