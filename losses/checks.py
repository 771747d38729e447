"""Input checks shared by the losses; errors name the bad input and what was expected."""

from __future__ import annotations

import torch
from torch import Tensor


def check_batch(embeddings: Tensor, labels: Tensor, embedding_size: int | None, owner: str) -> None:
    """Raise a ValueError naming the bad input when the batch does not fit the loss."""
    if embeddings.dim() != 2:
        raise ValueError(
            f"{owner}: embeddings have shape {tuple(embeddings.shape)}, expected [B, D]"
        )
    if embedding_size is not None and embeddings.shape[1] != embedding_size:
        raise ValueError(
            f"{owner}: embeddings have {embeddings.shape[1]} features, expected {embedding_size}"
        )
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"{owner}: labels have shape {tuple(labels.shape)}, expected [{embeddings.shape[0]}] "
            "(one class index per embedding)"
        )
    if labels.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ValueError(
            f"{owner}: labels have dtype {labels.dtype}, expected integer class indices"
        )


def check_label_range(labels: Tensor, num_classes: int, owner: str) -> None:
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{owner}: label {bad} is outside 0…{num_classes - 1} (num_classes={num_classes})"
        )
