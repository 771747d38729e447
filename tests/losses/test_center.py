import pytest
import torch
from facetrain.losses import CenterLoss

from tests.losses import references


@pytest.mark.parametrize(
    ("seed", "batch", "dim", "num_classes"), [(0, 8, 4, 3), (1, 5, 6, 9), (2, 12, 3, 2)]
)
def test_center_loss_value_gradient_and_update_match_reference(seed, batch, dim, num_classes):
    gen = torch.Generator().manual_seed(seed)
    loss_fn = CenterLoss(dim, num_classes, alpha=0.3).double()
    loss_fn.centers.copy_(torch.randn(num_classes, dim, generator=gen, dtype=torch.float64))
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    centers_before = loss_fn.centers.clone()

    loss = loss_fn(x, labels)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    expected = references.center_loss(x_ref, centers_before, labels)
    expected.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    expected_centers = references.center_update(x.detach(), centers_before, labels, 0.3)
    torch.testing.assert_close(loss_fn.centers, expected_centers, rtol=1e-12, atol=1e-12)
    assert int(loss_fn.num_updates) == 1


def test_centres_do_not_move_in_eval_mode_and_get_no_gradient():
    loss_fn = CenterLoss(3, 4).double().eval()
    loss_fn.centers.normal_()
    before = loss_fn.centers.clone()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss_fn(x, torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    assert torch.equal(loss_fn.centers, before)
    assert list(loss_fn.parameters()) == []


def test_centres_converge_to_class_means_over_repeated_steps():
    loss_fn = CenterLoss(2, 2, alpha=0.5).double()
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    for _ in range(60):
        loss_fn(x, labels)
    torch.testing.assert_close(
        loss_fn.centers, torch.tensor([[2.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    )


def test_center_gradcheck():
    loss_fn = CenterLoss(4, 3).double().eval()
    loss_fn.centers.normal_()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 1, 0])
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (x,))


def test_half_precision_embeddings_meet_float32_centres():
    loss_fn = CenterLoss(4, 3).eval()
    loss_fn.centers.normal_()
    x = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = loss_fn(x, labels)
    loss = loss_fn(x.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
