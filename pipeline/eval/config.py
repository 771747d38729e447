"""The knobs of evaluation (`facetrain eval|embed --config FILE --set key=value`).

Validation during training (the trainer's `eval:` section) embeds with the same
preprocessing, flip and alignment template, and scores with the same `verify_embeddings`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(128, ge=1, description="images per forward pass (x2 with flip)")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda:0', ...")
    workers: int = Field(4, ge=1, description="threads decoding and aligning images")
    flip: bool = Field(True, description="embedding = model(image) + model(flipped image)")
    folds: int = Field(10, ge=2, description="cross-validation folds of a pairs file without them")
    template: str = Field("arcface", description="alignment template, as used by `facetrain prep`")
    progress: bool = True

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
