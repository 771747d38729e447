"""CosFace / AM-Softmax (Wang et al. 2018): additive cosine margin, target logit s·(cos θ − m).

The combined margin with (m1, m2, m3) = (1, 0, m): no angle is ever taken.
"""

from __future__ import annotations

from facetrain.losses.combined_margin import CombinedMarginLoss
from facetrain.losses.distributed import ProcessGroup
from facetrain.losses.registry import register_loss


@register_loss("cosface")
class CosFaceLoss(CombinedMarginLoss):
    """CosFace on a class-sharded layer; `margin` m (0.35 in the paper), `scale` s."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: float = 0.35,
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
            m2=0.0,
            m3=margin,
            scale=scale,
            group=group,
            seed=seed,
            sample_rate=sample_rate,
        )
        self.margin = float(margin)
