"""`train.memory_format`: the layout the backbone runs in changes speed, never the training.

Reference: the same Trainer, seeds and batches with `memory_format: contiguous`. The two
runs differ only in the order oneDNN sums inside each convolution, so per-step losses and
final weights agree to float32 rounding, not bit for bit.
"""

import pytest
import torch
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.train.trainer import Trainer, backbone_memory_format

STEPS, CLASSES, P, K = 5, 6, 3, 2


def make_config(memory_format: str, backbone: str = "tiny") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "data": {"shards": "unused", "batch": {"p": P, "k": K}},
            "model": {"backbone": backbone, "embedding_size": 16},
            "loss": [{"type": "softmax"}, {"type": "center", "weight": 0.01}],
            "train": {
                "steps": STEPS,
                "lr": 0.05,
                "schedule": "constant",
                "device": "cpu",
                "precision": "fp32",
                "memory_format": memory_format,
                "seed": 3,
            },
        }
    )


@pytest.mark.parametrize(
    ("choice", "backbone", "device", "expected"),
    [
        ("auto", "mobilefacenet", "cpu", torch.channels_last),
        ("auto", "tiny", "cpu", torch.channels_last),
        ("auto", "iresnet50", "cpu", torch.contiguous_format),
        ("auto", "iresnet50", "cuda", torch.channels_last),
        ("contiguous", "mobilefacenet", "cuda", torch.contiguous_format),
        ("channels_last", "iresnet18", "cpu", torch.channels_last),
    ],
)
def test_auto_picks_the_measured_layout_per_backbone_and_device(choice, backbone, device, expected):
    cfg = make_config(choice, backbone)
    assert backbone_memory_format(cfg, torch.device(device)) == expected


def test_unknown_memory_format_is_refused_by_name():
    with pytest.raises(ValueError, match="memory_format"):
        make_config("nhwc")


def train(memory_format: str):
    trainer = Trainer(make_config(memory_format), CLASSES, None)
    layouts = []
    first_conv = next(m for m in trainer.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(
        lambda _m, _i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
    )
    generator = torch.Generator().manual_seed(5)
    colours = torch.rand(CLASSES, 3, 1, 1, generator=generator) * 1.6 - 0.8
    losses = []
    for _ in range(STEPS):
        labels = torch.randperm(CLASSES, generator=generator)[:P].repeat_interleave(K)
        images = (colours[labels] + torch.randn(P * K, 3, 112, 112, generator=generator) * 0.2).clamp(-1, 1)
        output = trainer.train_step(images, labels)
        assert not output.skipped
        losses.append(output.loss)
    state = {k: v.detach().clone() for k, v in trainer.backbone.state_dict().items()}
    return losses, state, layouts


def test_channels_last_trains_like_contiguous():
    reference_losses, reference_state, reference_layouts = train("contiguous")
    losses, state, layouts = train("channels_last")

    # The option takes effect: activations after the first convolution are NHWC only here
    # (a contiguous [B, C, H, W] tensor with C > 1 is never also channels_last).
    assert layouts == [True] * STEPS and reference_layouts == [False] * STEPS
    assert losses == pytest.approx(reference_losses, rel=1e-4)
    assert reference_losses[-1] < reference_losses[0]  # it trained, so the weights moved
    for name, value in state.items():
        # Weights and checkpoints keep the plain layout whatever the run used.
        assert value.is_contiguous(), name
        torch.testing.assert_close(value, reference_state[name], rtol=1e-4, atol=1e-5, msg=name)
