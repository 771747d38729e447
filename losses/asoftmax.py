"""A-Softmax (SphereFace, Liu et al. 2017) on a class-sharded layer.

Weights are normalised per class and there is no bias, so a logit is ‖x‖ cos θ_j. The
target logit becomes ‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ), applied on the rank that owns
class y only, through the memory-lean layer of `normalized.py`. λ anneals with the number
of training-mode forward calls, as in the Caffe reference: the counter is incremented
first, so the first training call uses iteration 1.
"""

from __future__ import annotations

import torch
from facetrain.losses.distributed import ProcessGroup
from facetrain.losses.margins import check_margin, sphereface_lambda, sphereface_psi
from facetrain.losses.normalized import NormalizedClassifierLoss
from facetrain.losses.registry import register_loss
from torch import Tensor


@register_loss("asoftmax")
class ASoftmaxLoss(NormalizedClassifierLoss):
    """SphereFace A-Softmax; `.current_lambda` is the λ of the latest training step."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        group: ProcessGroup | None = None,
        *,
        seed: int = 0,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(
            embedding_size, num_classes, group=group, seed=seed, sample_rate=sample_rate
        )
        check_margin(margin)
        self.margin = margin
        self.lambda_base = lambda_base
        self.lambda_gamma = lambda_gamma
        self.lambda_power = lambda_power
        self.lambda_min = lambda_min
        # Training-mode forward calls so far; a buffer so checkpoints resume the schedule.
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    @property
    def current_lambda(self) -> float:
        return sphereface_lambda(
            int(self.iteration),
            self.lambda_base,
            self.lambda_gamma,
            self.lambda_power,
            self.lambda_min,
        )

    def statistics(self) -> dict[str, float]:
        return {"lambda": self.current_lambda}

    def on_training_step(self) -> None:
        self.iteration += 1

    def target_logits(self, cos_target: Tensor, feature_norms: Tensor) -> Tensor:
        # Unnormalised embeddings: every logit is ‖x‖ cos θ_j (logit_scale 1).
        lam = self.current_lambda
        psi = sphereface_psi(cos_target, self.margin)
        return feature_norms * (lam * cos_target + psi) / (1.0 + lam)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, lambda={self.current_lambda:.4g}"
