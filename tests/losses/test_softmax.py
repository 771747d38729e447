import pytest
import torch
from facetrain.losses import ASoftmaxLoss, SoftmaxLoss

from tests.losses import references


def _batch(seed, batch, dim, num_classes):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    return x, labels


@pytest.mark.parametrize(
    ("seed", "batch", "dim", "num_classes", "bias"),
    [(0, 6, 4, 5, True), (1, 9, 7, 3, False), (2, 4, 3, 11, True)],
)
def test_softmax_matches_reference_values_and_gradients(seed, batch, dim, num_classes, bias):
    loss_fn = SoftmaxLoss(dim, num_classes, bias=bias, seed=seed).double()
    if bias:
        torch.nn.init.normal_(loss_fn.bias, std=0.5)
    x, labels = _batch(seed, batch, dim, num_classes)
    x.requires_grad_(True)
    loss = loss_fn(x, labels)
    loss.backward()

    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = loss_fn.weight.detach().clone().requires_grad_(True)
    b_ref = loss_fn.bias.detach().clone().requires_grad_(True) if bias else None
    expected = references.softmax_loss(x_ref, w_ref, b_ref, labels)
    expected.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss_fn.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-12)
    if bias:
        torch.testing.assert_close(loss_fn.bias.grad, b_ref.grad, rtol=1e-10, atol=1e-12)


def test_softmax_gradcheck():
    loss_fn = SoftmaxLoss(5, 4, seed=3).double()
    x, labels = _batch(3, 6, 5, 4)
    params = (loss_fn.weight, loss_fn.bias)

    def fn(x, weight, bias):
        return torch.func.functional_call(loss_fn, {"weight": weight, "bias": bias}, (x, labels))

    inputs = (x.requires_grad_(True), *(p.detach().clone().requires_grad_(True) for p in params))
    assert torch.autograd.gradcheck(fn, inputs)


def test_sample_rate_one_is_the_full_layer_bit_for_bit():
    x, labels = _batch(4, 8, 6, 20)
    full = SoftmaxLoss(6, 20, seed=7).double()
    sampled = SoftmaxLoss(6, 20, seed=7, sample_rate=1.0).double()
    assert torch.equal(full(x, labels), sampled(x, labels))


def test_sample_rate_keeps_targets_and_equals_restricted_softmax():
    x, labels = _batch(5, 6, 4, 40)
    loss_fn = SoftmaxLoss(4, 40, seed=1, sample_rate=0.25).double()
    loss = loss_fn(x, labels)
    kept = loss_fn.last_sampled_classes
    assert kept.numel() == 10
    assert set(labels.tolist()) <= set(kept.tolist())
    position = {int(c): i for i, c in enumerate(kept)}
    expected = references.softmax_loss(
        x,
        loss_fn.weight.detach()[kept],
        loss_fn.bias.detach()[kept],
        [position[int(v)] for v in labels],
    )
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_asoftmax_m1_is_normalised_weight_softmax():
    x, labels = _batch(6, 7, 5, 6)
    loss_fn = ASoftmaxLoss(5, 6, margin=1, seed=2).double()
    weight = loss_fn.weight.detach()
    normalised = weight / weight.norm(dim=1, keepdim=True)
    expected = references.softmax_loss(x, normalised, None, labels)
    torch.testing.assert_close(loss_fn(x, labels), expected, rtol=1e-12, atol=1e-12)


def test_errors_name_the_bad_input():
    loss_fn = SoftmaxLoss(4, 3)
    with pytest.raises(ValueError, match="label 3 is outside 0…2"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="5 features, expected 4"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sample_rate=0"):
        SoftmaxLoss(4, 3, sample_rate=0)


def test_half_precision_embeddings_meet_float32_rows():
    x, labels = _batch(9, 8, 6, 5)
    for loss_fn in (SoftmaxLoss(6, 5, seed=1), ASoftmaxLoss(6, 5, seed=1)):
        expected = loss_fn(x.float(), labels)
        x_half = x.to(torch.bfloat16).requires_grad_(True)
        loss = loss_fn(x_half, labels)
        loss.backward()
        assert loss.dtype == torch.float32 and x_half.grad.dtype == torch.bfloat16
        torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
