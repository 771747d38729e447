"""Learning rate as a pure function of the step: linear warm-up, then cosine, poly or step.

A function of the step (not a scheduler object with hidden counters) means a checkpoint only
needs the step to resume the schedule, and skipped (non-finite) steps cannot desynchronise it.
"""

from __future__ import annotations

import bisect
import math

from facetrain.pipeline.config import TrainSection


def lr_factor(step: int, train: TrainSection) -> float:
    """Multiplier of the base LR at `step` (0-based): warm-up to 1, then decay to min_lr_ratio."""
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "step":
        return train.step_gamma ** bisect.bisect_right(train.step_milestones, step)
    decay_steps = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / decay_steps)
    if train.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif train.schedule == "poly":
        shape = (1.0 - progress) ** train.poly_power
    else:  # constant
        shape = 1.0
    return train.min_lr_ratio + (1.0 - train.min_lr_ratio) * shape
