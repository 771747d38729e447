"""The weighted sum of loss terms named in the config, e.g. A-Softmax + 0.5 * triplet.

Terms are built from `losses.build_loss` by their `type:`; each gets the context arguments
its constructor takes (sizes, process group, seed), so there is no per-type branching here.
Classifier weights and centres live in these modules, sharded by class across ranks.
"""

from __future__ import annotations

import inspect

from facetrain.losses import LOSS_TYPES, ClassShardedMixin, build_loss
from facetrain.pipeline.config import LossTerm
from torch import Tensor, nn


class Objective(nn.Module):
    def __init__(
        self,
        terms: list[LossTerm],
        num_classes: int,
        embedding_size: int,
        group=None,
        seed: int = 0,
    ):
        super().__init__()
        context = {
            "num_classes": num_classes,
            "embedding_size": embedding_size,
            "group": group,
            "seed": seed,
        }
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for term in terms:
            accepted = inspect.signature(LOSS_TYPES[term.type]).parameters
            # `offline` configures the batch source (offline_triplets), not the loss.
            params = term.model_dump(exclude={"type", "weight", "offline"})
            params.update({key: value for key, value in context.items() if key in accepted})
            self.terms[term.type] = build_loss(term.type, **params)
            self.weights[term.type] = term.weight

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted total, {term type: unweighted value})."""
        values = {name: loss(embeddings, labels) for name, loss in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values

    def sharded_terms(self) -> dict[str, ClassShardedMixin]:
        """Terms that hold per-class rows for this rank's class range (classifier, centres)."""
        return {
            name: loss for name, loss in self.terms.items() if isinstance(loss, ClassShardedMixin)
        }

    def statistics(self) -> dict[str, float]:
        """Scalars worth logging besides the loss values: A-Softmax lambda, active triplets."""
        return {
            f"{name}/{key}": float(value)
            for name, loss in self.terms.items()
            for key, value in loss.statistics().items()
        }

    @property
    def updates_state_in_forward(self) -> bool:
        return any(loss.updates_state_in_forward for loss in self.terms.values())

    def class_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
