"""ArcFace (Deng et al. 2019): additive angular margin, target logit s·cos(θ + m).

The combined margin with (m1, m2, m3) = (1, m, 0); where θ + m passes π it falls back to
s·(cos θ − m·sin m), as the paper's code and arcface_torch do.
"""

from __future__ import annotations

from facetrain.losses.combined_margin import CombinedMarginLoss
from facetrain.losses.distributed import ProcessGroup
from facetrain.losses.registry import register_loss


@register_loss("arcface")
class ArcFaceLoss(CombinedMarginLoss):
    """ArcFace on a class-sharded layer; `margin` in radians (0.5 in the paper), `scale` s."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: float = 0.5,
        scale: float = 64.0,
        group: ProcessGroup | None = None,
        *,
        seed: int = 0,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(
            embedding_size,
            num_classes,
            m1=1.0,
            m2=margin,
            m3=0.0,
            scale=scale,
            group=group,
            seed=seed,
            sample_rate=sample_rate,
        )
        self.margin = float(margin)
