"""Mining stays O(B²): no op in forward or backward produces a tensor of B³ elements."""

import pytest
import torch
from facetrain.losses import TripletLoss
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.max_numel = max(self.max_numel, value.numel())
        return out


@pytest.mark.parametrize(("mining", "batch"), [("semihard", 4096), ("hard", 512), ("all", 512)])
def test_mining_on_large_batch_stays_quadratic(mining, batch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 512 if batch == 4096 else 64, generator=gen, requires_grad=True)
    labels = torch.randint(0, batch // 8, (batch,), generator=gen)
    loss_fn = TripletLoss(mining=mining)
    with LargestTensor() as probe:
        loss = loss_fn(x, labels)
        loss.backward()
    assert torch.isfinite(loss) and loss_fn.statistics()["valid_pairs"] > 0
    # The largest tensors are [B, B] (+1 column for the prefix sums); B³ would be B times more.
    assert probe.max_numel <= batch * (batch + 1)
