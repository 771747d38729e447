"""insightface's combined margin on a class-sharded layer: target logit s·(cos(m1·θ + m2) − m3).

Embeddings and class rows are both L2-normalised inside the loss, so every logit is s·cos θ_j;
only the target logit carries the margin (`margins.combined_margin_cos`), on the rank that
owns the class. ArcFace (`arcface.py`) and CosFace (`cosface.py`) are its two common cases.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from facetrain.losses.distributed import ProcessGroup
from facetrain.losses.margins import combined_margin_cos
from facetrain.losses.normalized import NormalizedClassifierLoss
from facetrain.losses.registry import register_loss
from torch import Tensor


@register_loss("combined")
class CombinedMarginLoss(NormalizedClassifierLoss):
    """Mean cross-entropy of s·cos θ_j, the target's replaced by s·(cos(m1·θ + m2) − m3)."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        scale: float = 64.0,
        group: ProcessGroup | None = None,
        *,
        seed: int = 0,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(
            embedding_size, num_classes, group=group, seed=seed, sample_rate=sample_rate
        )
        name = type(self).__name__
        if m1 <= 0:
            raise ValueError(f"{name}: m1={m1}, expected a multiplicative angular margin > 0")
        if not 0.0 <= m2 < math.pi:
            raise ValueError(f"{name}: m2={m2}, expected an additive angle in [0, π) radians")
        if scale <= 0:
            raise ValueError(f"{name}: scale={scale}, expected > 0 (64 in ArcFace/CosFace)")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.logit_scale = float(scale)

    def features(self, embeddings_all: Tensor) -> Tensor:
        return F.normalize(embeddings_all, dim=1)

    def target_logits(self, cos_target: Tensor, feature_norms: Tensor) -> Tensor:
        del feature_norms  # unit features: s alone sets the logit scale
        return self.logit_scale * combined_margin_cos(cos_target, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m1={self.m1:g}, m2={self.m2:g}, m3={self.m3:g}, "
            f"scale={self.logit_scale:g}"
        )
