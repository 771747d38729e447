"""Mixed precision through the real Trainer on CPU: bf16 and fp16 train like fp32.

Reference: the same trainer, seeds and batches in fp32. bf16 keeps 8 bits of mantissa and
triplet mining turns small differences into other triplets, so after 20 steps the runs are
close, not equal: measured here, the bf16 weights' update points the same way as fp32's
(cosine 0.99) and the per-step losses differ by 0.03 on average.
"""

import pytest
import torch
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.train.precision import DynamicLossScale

STEPS, CLASSES, P, K = 20, 8, 4, 2


def make_config(precision: str) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "data": {"shards": "unused", "batch": {"p": P, "k": K}},
            "model": {"backbone": "tiny", "embedding_size": 16},
            "loss": [
                {"type": "asoftmax", "margin": 2, "lambda_base": 5.0},
                {"type": "center", "weight": 0.01},
                {"type": "triplet", "weight": 0.5},
            ],
            "train": {
                "steps": STEPS,
                "lr": 0.02,
                "schedule": "constant",
                "precision": precision,
                "device": "cpu",
                "seed": 1,
            },
        }
    )


def batches():
    """Learnable faces: a flat colour per class plus noise, P classes x K images a batch."""
    generator = torch.Generator().manual_seed(4)
    colours = torch.rand(CLASSES, 3, 1, 1, generator=generator) * 1.6 - 0.8
    for _ in range(STEPS):
        labels = torch.randperm(CLASSES, generator=generator)[:P].repeat_interleave(K)
        noise = torch.randn(P * K, 3, 112, 112, generator=generator) * 0.2
        yield (colours[labels] + noise).clamp(-1, 1), labels


def train(precision: str):
    from facetrain.pipeline.train.trainer import Trainer

    trainer = Trainer(make_config(precision), CLASSES, None)
    outputs = [trainer.train_step(images, labels) for images, labels in batches()]
    weights = torch.cat([p.detach().flatten() for p in trainer.backbone.parameters()])
    return trainer, outputs, weights


@pytest.fixture(scope="module")
def fp32_run():
    return train("fp32")


def initial_weights():
    torch.manual_seed(1)
    from facetrain.pipeline.models import build_backbone

    return torch.cat([p.detach().flatten() for p in build_backbone("tiny", 16).parameters()])


def test_bf16_trains_like_fp32(fp32_run):
    _, reference, reference_weights = fp32_run
    trainer, outputs, weights = train("bf16")
    assert trainer.skipped_steps == 0 and not any(out.skipped for out in outputs)
    losses = [out.loss for out in outputs]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # the loss falls
    # Weights and parameters stay fp32; only the forward ran in bf16.
    assert all(p.dtype == torch.float32 for p in trainer.backbone.parameters())
    assert all(b.dtype != torch.bfloat16 for b in trainer.backbone.buffers())
    start = initial_weights()
    cosine = torch.nn.functional.cosine_similarity(weights - start, reference_weights - start, 0)
    assert cosine > 0.95
    gaps = [abs(out.loss - ref.loss) for out, ref in zip(outputs, reference, strict=True)]
    assert sum(gaps) / len(gaps) < 0.08


def test_fp16_trains_with_dynamic_loss_scaling(fp32_run):
    _, reference, reference_weights = fp32_run
    trainer, outputs, weights = train("fp16")
    overflowed = [out for out in outputs if out.skipped]
    # Overflows only while the scale comes down from 2^16, never counted as divergence.
    assert all("overflow" in out.reason for out in overflowed)
    assert trainer.nonfinite_in_row == 0
    assert trainer.loss_scale.scale == 2.0**16 / 2 ** len(overflowed)
    trained = [out.loss for out in outputs if not out.skipped]
    assert len(trained) >= STEPS - 3
    assert sum(trained[-5:]) / 5 < 0.8 * sum(trained[:5]) / 5


def test_loss_scale_halves_on_overflow_and_grows_after_clean_steps():
    scale = DynamicLossScale(initial_scale=8.0, growth_interval=3)
    scale.update(False)
    assert scale.scale == 4.0
    for _ in range(2):
        scale.update(True)
    assert scale.scale == 4.0
    scale.update(True)
    assert scale.scale == 8.0 and scale.clean_steps == 0
    restored = DynamicLossScale()
    restored.load_state_dict(scale.state_dict())
    assert restored.scale == 8.0 and restored.clean_steps == 0


def test_unscale_reports_an_infinite_gradient():
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.tensor([2.0, 4.0, 8.0])
    scale = DynamicLossScale(initial_scale=2.0)
    assert scale.unscale_([param], torch.device("cpu"), None)
    assert torch.equal(param.grad, torch.tensor([1.0, 2.0, 4.0]))
    param.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not scale.unscale_([param], torch.device("cpu"), None)
