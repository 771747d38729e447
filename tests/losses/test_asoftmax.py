import math

import pytest
import torch
from facetrain.losses import ASoftmaxLoss
from facetrain.losses.margins import cos_multiple_angle, sphereface_lambda, sphereface_psi

from tests.losses import references


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
def test_multiple_angle_polynomial_is_cos_m_theta(margin):
    theta = torch.linspace(0, math.pi, 1001, dtype=torch.float64)
    torch.testing.assert_close(
        cos_multiple_angle(torch.cos(theta), margin), torch.cos(margin * theta)
    )


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
def test_psi_is_continuous_and_decreasing_on_0_pi(margin):
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = sphereface_psi(torch.cos(theta), margin)
    steps = psi[1:] - psi[:-1]
    assert (steps < 0).all(), "psi must decrease strictly"
    # Continuity: no jump larger than the slope bound m * dθ allows (a sector error jumps by 2).
    assert steps.abs().max() <= margin * (theta[1] - theta[0]) * 1.01
    torch.testing.assert_close(psi[0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(psi[-1], torch.tensor(1.0 - 2 * margin, dtype=torch.float64))
    expected = torch.stack([references.sphereface_psi_by_angle(t, margin) for t in theta[::500]])
    torch.testing.assert_close(psi[::500], expected)


def test_lambda_schedule_values():
    assert sphereface_lambda(0, 1000.0, 0.12, 1.0, 5.0) == 1000.0
    assert sphereface_lambda(10, 1000.0, 0.12, 1.0, 5.0) == pytest.approx(1000.0 / 2.2)
    assert sphereface_lambda(100, 1000.0, 0.1, 2.0, 0.0) == pytest.approx(1000.0 / 11.0**2)
    assert sphereface_lambda(10**6, 1000.0, 0.12, 1.0, 5.0) == 5.0


def test_lambda_counts_training_forward_calls_and_resumes_from_state_dict():
    loss_fn = ASoftmaxLoss(4, 3).double()
    x, labels = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    for _ in range(3):
        loss_fn(x, labels)
    assert int(loss_fn.iteration) == 3
    assert loss_fn.current_lambda == pytest.approx(1000.0 / (1 + 0.12 * 3))
    loss_fn.eval()
    loss_fn(x, labels)
    assert int(loss_fn.iteration) == 3
    loss_fn.train()
    with pytest.raises(ValueError, match="label 7"):
        loss_fn(x, torch.tensor([0, 1, 2, 0, 7]))
    assert int(loss_fn.iteration) == 3  # a rejected batch is not a step
    resumed = ASoftmaxLoss(4, 3).double()
    resumed.load_state_dict(loss_fn.state_dict())
    assert resumed.current_lambda == loss_fn.current_lambda


@pytest.mark.parametrize(
    ("seed", "batch", "dim", "num_classes", "margin", "steps"),
    [(0, 6, 4, 5, 4, 0), (1, 5, 6, 3, 2, 7), (2, 8, 3, 7, 3, 40), (3, 4, 5, 4, 1, 2)],
)
def test_asoftmax_matches_reference_values_and_gradients(
    seed, batch, dim, num_classes, margin, steps
):
    loss_fn = ASoftmaxLoss(
        dim,
        num_classes,
        margin=margin,
        lambda_base=10.0,
        lambda_gamma=0.5,
        lambda_min=0.5,
        seed=seed,
    ).double()
    loss_fn.iteration.fill_(steps)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        loss_fn.weight.normal_(generator=gen)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    loss = loss_fn(x, labels)  # training call: iteration becomes steps + 1
    loss.backward()
    lam = sphereface_lambda(steps + 1, 10.0, 0.5, 1.0, 0.5)

    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = loss_fn.weight.detach().clone().requires_grad_(True)
    expected = references.asoftmax_loss(x_ref, w_ref, labels, margin, lam)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(loss_fn.weight.grad, w_ref.grad, rtol=1e-9, atol=1e-11)


def test_asoftmax_gradcheck():
    loss_fn = ASoftmaxLoss(4, 5, margin=4, lambda_base=3.0, seed=1).double().eval()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])

    def fn(x, weight):
        return torch.func.functional_call(loss_fn, {"weight": weight}, (x, labels))

    assert torch.autograd.gradcheck(fn, (x, weight))


def test_margin_lowers_the_target_logit():
    """The decision-margin property: for m=4, ψ-mixed target logit is below ‖x‖cos θ_y."""
    loss_fn = ASoftmaxLoss(8, 6, margin=4, lambda_base=0.0, lambda_min=0.0, seed=4).double().eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 6, (50,), generator=gen)
    with_margin = loss_fn.class_logits(x, None, labels)
    plain = x @ torch.nn.functional.normalize(loss_fn.weight.detach(), dim=1).T
    rows = torch.arange(50)
    target_with, target_plain = with_margin[rows, labels], plain[rows, labels]
    assert (target_with < target_plain).all()
    others = torch.ones_like(plain, dtype=torch.bool)
    others[rows, labels] = False
    # Not bit-equal: the lean layer scales x·W_j by 1/‖W_j‖ instead of normalising W first.
    torch.testing.assert_close(with_margin[others], plain[others], rtol=1e-13, atol=1e-15)
