"""Mixed precision for the training step: autocast around the backbone, fp32 everywhere else.

The weights, the optimizer state, the BatchNorm statistics and the class-sharded layer all
stay fp32; only the backbone's forward (and so its backward) runs in bf16 or fp16 under
`torch.autocast`. DeepSpeed's own bf16 mode casts the parameters but leaves the BatchNorm
buffers fp32, and the first BatchNorm then fails on CPU; its fp16 mode does not exist on
DeepSpeed's CPU accelerator. Autocast behaves the same on both devices and keeps the
classifier logits (millions of classes, a softmax over them) out of low precision.

fp16 needs loss scaling: small gradients underflow in fp16 activations. `DynamicLossScale`
is the usual scheme (as torch.amp.GradScaler and DeepSpeed do): multiply the loss by S,
divide the gradients by S before clipping; on an inf/NaN gradient on any rank skip the step
and halve S, and after `growth_interval` clean steps double it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from facetrain.pipeline.train.collectives import all_ranks_true
from torch import Tensor, nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the backbone's forward runs in: autocast for bf16/fp16, nothing for fp32."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


class DynamicLossScale:
    """Loss scale for fp16; the same on every rank because every rank sees the same verdict."""

    def __init__(
        self,
        initial_scale: float = 2.0**16,
        growth_interval: int = 2000,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        min_scale: float = 1.0,
    ) -> None:
        self.scale = float(initial_scale)
        self.growth_interval = growth_interval
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.min_scale = min_scale
        self.clean_steps = 0

    def scaled(self, loss: Tensor) -> Tensor:
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, params: Iterable[nn.Parameter], device: torch.device, group) -> bool:
        """Divide every gradient by the scale; True when all of them, on all ranks, are finite."""
        grads = [p.grad for p in params if p.grad is not None]
        finite = True
        for grad in grads:
            grad.div_(self.scale)
            finite = finite and bool(torch.isfinite(grad).all())
        return all_ranks_true(finite, device, group)

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale = max(self.min_scale, self.scale * self.backoff_factor)
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.clean_steps = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
