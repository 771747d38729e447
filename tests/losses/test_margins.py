"""ArcFace, CosFace and the combined margin against float64 loops written from the papers.

Also the memory-lean normalised-weight layer they share with A-Softmax: its hand-written
backward against autograd through `normalize(W)`, and the batch × class tensors it saves.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from facetrain.losses import (
    ArcFaceLoss,
    ASoftmaxLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    SoftmaxLoss,
    build_loss,
    reshard,
    shard_range,
)
from facetrain.losses.margins import combined_margin_cos
from facetrain.losses.normalized import normalized_logits

from tests.losses import references


def _problem(seed, batch, dim, num_classes, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(num_classes, dim, generator=gen, dtype=dtype)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    return x, weight, labels


def _check_against_reference(loss_fn, margins, scale, seed, batch, dim, num_classes):
    x, weight, labels = _problem(seed, batch, dim, num_classes)
    with torch.no_grad():
        loss_fn.weight.copy_(weight)
    loss = loss_fn(x, labels)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = weight.clone().requires_grad_(True)
    expected = references.combined_margin_loss(x_ref, w_ref, labels, *margins, scale)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(loss_fn.weight.grad, w_ref.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    ("seed", "batch", "dim", "num_classes", "margin", "scale"),
    # margin 2.0 sends most targets past θ + m = π, onto the fallback.
    [(0, 6, 4, 5, 0.5, 64.0), (1, 9, 3, 4, 2.0, 4.0), (2, 7, 8, 11, 0.3, 10.0)],
)
def test_arcface_matches_reference_values_and_gradients(
    seed, batch, dim, num_classes, margin, scale
):
    loss_fn = ArcFaceLoss(dim, num_classes, margin=margin, scale=scale).double()
    _check_against_reference(loss_fn, (1.0, margin, 0.0), scale, seed, batch, dim, num_classes)


@pytest.mark.parametrize(
    ("seed", "batch", "dim", "num_classes", "margin", "scale"),
    [(3, 6, 4, 5, 0.35, 64.0), (4, 8, 5, 3, 0.2, 8.0)],
)
def test_cosface_matches_reference_values_and_gradients(
    seed, batch, dim, num_classes, margin, scale
):
    loss_fn = CosFaceLoss(dim, num_classes, margin=margin, scale=scale).double()
    _check_against_reference(loss_fn, (1.0, 0.0, margin), scale, seed, batch, dim, num_classes)


@pytest.mark.parametrize(
    ("seed", "margins", "scale"),
    [(5, (1.0, 0.3, 0.2), 16.0), (6, (1.35, 0.25, 0.1), 8.0), (7, (0.9, 0.0, 0.0), 5.0)],
)
def test_combined_matches_reference_values_and_gradients(seed, margins, scale):
    m1, m2, m3 = margins
    loss_fn = CombinedMarginLoss(5, 6, m1=m1, m2=m2, m3=m3, scale=scale).double()
    _check_against_reference(loss_fn, margins, scale, seed, 10, 5, 6)


@pytest.mark.parametrize(
    ("margins", "special"),
    [
        ((1.0, 0.5, 0.0), ArcFaceLoss),
        ((1.0, 1.5, 0.0), ArcFaceLoss),
        ((1.0, 0.0, 0.35), CosFaceLoss),
    ],
)
def test_combined_reduces_to_arcface_and_cosface(margins, special):
    m1, m2, m3 = margins
    margin = m2 if special is ArcFaceLoss else m3
    combined = CombinedMarginLoss(6, 9, m1=m1, m2=m2, m3=m3, scale=12.0, seed=3).double()
    single = special(6, 9, margin=margin, scale=12.0, seed=3).double()
    assert torch.equal(combined.weight, single.weight)
    x, _, labels = _problem(8, 12, 6, 9)
    x2 = x.detach().clone().requires_grad_(True)
    loss_c, loss_s = combined(x, labels), single(x2, labels)
    (loss_c + loss_s).backward()
    torch.testing.assert_close(loss_c, loss_s, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(combined.weight.grad, single.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    "loss_fn",
    [
        ArcFaceLoss(4, 5, margin=0.5, scale=3.0),
        CosFaceLoss(4, 5, margin=0.35, scale=3.0),
        CombinedMarginLoss(4, 5, m1=1.2, m2=0.2, m3=0.1, scale=3.0),
    ],
    ids=["arcface", "cosface", "combined"],
)
def test_margin_losses_gradcheck_away_from_the_kinks(loss_fn):
    loss_fn = loss_fn.double()
    gen = torch.Generator().manual_seed(21)
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    # Embeddings near their class row: θ stays well below the π − m turn and above 0.
    x = weight.detach()[labels] + 0.6 * torch.randn(6, 4, generator=gen, dtype=torch.float64)
    x.requires_grad_(True)
    cos = F.cosine_similarity(x, weight[labels], dim=1).detach()
    assert ((cos > -0.5) & (cos < 0.999)).all()

    def fn(x, weight):
        return torch.func.functional_call(loss_fn, {"weight": weight}, (x, labels))

    assert torch.autograd.gradcheck(fn, (x, weight))


def test_margin_function_against_the_angle():
    theta = torch.linspace(0.01, math.pi - 0.01, 2001, dtype=torch.float64)
    cos = torch.cos(theta)
    arc = combined_margin_cos(cos, 1.0, 0.5, 0.0)
    before = theta < math.pi - 0.5
    torch.testing.assert_close(arc[before], torch.cos(theta[before] + 0.5))
    torch.testing.assert_close(arc[~before], cos[~before] - 0.5 * math.sin(0.5))
    torch.testing.assert_close(combined_margin_cos(cos, 1.0, 0.0, 0.35), cos - 0.35)
    # The margin lowers every target cosine (what makes it a margin).
    for margins in [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.2, 0.3, 0.1)]:
        assert (combined_margin_cos(cos, *margins) < cos).all(), margins


def test_normalized_logits_backward_equals_autograd_through_normalize():
    gen = torch.Generator().manual_seed(31)
    features = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    rows, cols = torch.tensor([0, 2, 3, 6]), torch.tensor([4, 0, 4, 8])
    upstream = torch.randn(7, 9, generator=gen, dtype=torch.float64)
    upstream_dots = torch.randn(4, generator=gen, dtype=torch.float64)

    logits, dots = normalized_logits(features, weight, 3.5, rows, cols)
    plain = features @ F.normalize(weight, dim=1).T
    torch.testing.assert_close(logits, 3.5 * plain, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(dots, plain[rows, cols], rtol=1e-13, atol=1e-13)
    got = torch.autograd.grad((logits, dots), (features, weight), (upstream, upstream_dots))
    expected = torch.autograd.grad(
        (3.5 * plain, plain[rows, cols]), (features, weight), (upstream, upstream_dots)
    )
    for mine, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-13)
    assert torch.autograd.gradcheck(
        lambda f, w: normalized_logits(f, w, 3.5, rows, cols), (features, weight)
    )


def _saved_large_tensors(loss_fn, batch, num_classes, dim):
    """Distinct storages of >= batch × classes elements that autograd keeps for backward,
    other than the class-row parameter itself: {storage pointer: shape}."""
    x = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))
    parameter = loss_fn.weight.untyped_storage().data_ptr()
    saved = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() >= batch * num_classes and pointer != parameter:
            saved[pointer] = tuple(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(x, labels)
    return saved


@pytest.mark.parametrize("loss_type", [ASoftmaxLoss, ArcFaceLoss, CosFaceLoss, CombinedMarginLoss])
def test_normalized_layers_save_what_softmax_saves(loss_type):
    # D > batch, so a normalised copy of the [C, D] rows would be caught too.
    batch, num_classes, dim = 8, 300, 16
    softmax = _saved_large_tensors(SoftmaxLoss(dim, num_classes), batch, num_classes, dim)
    mine = _saved_large_tensors(loss_type(dim, num_classes), batch, num_classes, dim)
    # One batch × class tensor (the log-probabilities of the cross-entropy), nothing else.
    assert list(softmax.values()) == [(batch, num_classes)]
    assert list(mine.values()) == [(batch, num_classes)]


def test_margin_layers_reshard_like_softmax():
    # Saved on 3 ranks, restored on 2 and on 1: each class keeps its row, and the losses agree.
    num_classes, dim = 11, 4
    x, _, labels = _problem(9, 10, dim, num_classes)
    single = CombinedMarginLoss(dim, num_classes, m2=0.3, m3=0.1, scale=8.0, seed=2).double()
    old = []
    for rank in range(3):
        module = CombinedMarginLoss(dim, num_classes, m2=0.3, m3=0.1, scale=8.0).double()
        module.class_start, module.num_local_classes = shard_range(num_classes, rank, 3)
        module.weight = torch.nn.Parameter(
            single.weight.detach()[module.class_start :][: module.num_local_classes].clone()
        )
        old.append(module.shard_state())
    restored = CombinedMarginLoss(dim, num_classes, m2=0.3, m3=0.1, scale=8.0).double()
    restored.load_shard_states(reversed(old))
    assert torch.equal(restored.weight, single.weight)
    assert torch.equal(restored(x, labels), single(x, labels))
    half = reshard(old, *shard_range(num_classes, 1, 2))["weight"]
    assert torch.equal(half, single.weight.detach()[6:])


def test_margin_losses_are_registered_and_check_arguments():
    assert isinstance(build_loss("arcface", embedding_size=4, num_classes=3), ArcFaceLoss)
    assert isinstance(build_loss("cosface", embedding_size=4, num_classes=3), CosFaceLoss)
    combined = build_loss("combined", embedding_size=4, num_classes=3, m1=1.0, m2=0.3, m3=0.2)
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.3, 0.2)
    loss_fn = ArcFaceLoss(4, 10)
    assert (loss_fn.class_start, loss_fn.num_local_classes) == (0, 10)
    assert loss_fn.weight.shape == (10, 4) and loss_fn.class_tensor_names == ("weight",)
    with pytest.raises(ValueError, match="scale=0"):
        CosFaceLoss(4, 3, scale=0)
    with pytest.raises(ValueError, match="m2=4"):
        CombinedMarginLoss(4, 3, m2=4.0)
    with pytest.raises(ValueError, match="label 3 is outside"):
        ArcFaceLoss(4, 3)(torch.randn(2, 4), torch.tensor([0, 3]))
