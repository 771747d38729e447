"""One training step for one rank of a process group.

`Trainer` owns the DeepSpeed engine (backbone), the objective (loss terms holding this rank's
classifier/centre rows) and the head optimizer. It takes the process group explicitly (None:
one process, as in `losses/`); DeepSpeed still needs an initialised torch.distributed, which
a one-rank gloo group provides when there is none. The loop around it lives in `loop.py`,
and what a checkpoint holds of it in `checkpoint.RankState`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.models import backbone_from_config, prefers_channels_last
from facetrain.pipeline.train.collectives import (
    all_ranks_true,
    average_buffers,
    clip_sharded_grad_norm_,
)
from facetrain.pipeline.train.devices import training_device
from facetrain.pipeline.train.engine import (
    build_engine,
    ensure_process_group,
    make_optimizer,
    resolve_precision,
    set_lr,
    unwrapped,
)
from facetrain.pipeline.train.objective import Objective
from facetrain.pipeline.train.precision import DynamicLossScale, autocast
from facetrain.pipeline.train.schedule import lr_factor
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite embedding or loss."""


@dataclass
class StepOutput:
    step: int
    skipped: bool
    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    grad_norm: float | None = None
    head_grad_norm: float | None = None
    samples: int = 0
    seconds: float = 0.0
    reason: str = ""


def backbone_memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """`train.memory_format` resolved for this backbone on this device: the layout of the
    images the backbone sees. The weights stay contiguous (DeepSpeed broadcasts and flattens
    them as plain buffers); a convolution given an NHWC input runs NHWC all the same, and
    so does everything after it. Values, gradients and checkpoints do not depend on it."""
    choice = cfg.train.memory_format
    if choice == "auto":
        choice = (
            "channels_last"
            if prefers_channels_last(cfg.model.backbone, device.type)
            else "contiguous"
        )
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


class Trainer:
    def __init__(self, cfg: TrainConfig, num_classes: int, group: dist.ProcessGroup | None):
        """`group`: the ranks that train together (`collectives.world_group()` for all of
        them), or None for one process."""
        ensure_process_group()
        self.cfg = cfg
        self.group = group
        self.rank = 0 if group is None else dist.get_rank(group)
        self.world_size = 1 if group is None else dist.get_world_size(group)
        self.device = training_device(cfg.train.device)
        self.precision = resolve_precision(cfg, self.device)
        self.num_classes = num_classes

        # Same seed on every rank: the backbone starts identical everywhere; the class rows
        # are keyed by (seed, class) inside the losses, independent of the world size.
        torch.manual_seed(cfg.train.seed)
        backbone = backbone_from_config(cfg.model)
        self.memory_format = backbone_memory_format(cfg, self.device)
        loss_group = group if self.world_size > 1 else None
        self.objective = Objective(
            cfg.loss, num_classes, cfg.model.embedding_size, group=loss_group, seed=cfg.train.seed
        ).to(self.device)
        self.engine = build_engine(backbone.to(self.device), cfg, self.world_size)
        # fp16 gradients underflow without a loss scale; bf16 has fp32's exponent range.
        self.loss_scale = DynamicLossScale() if self.precision == "fp16" else None
        self.head_params = self.objective.class_parameters()
        self.head_optimizer = (
            make_optimizer(self.head_params, cfg, self.head_lr) if self.head_params else None
        )
        # Dropout and friends differ per rank, reproducibly.
        torch.manual_seed(cfg.train.seed * 100_003 + self.rank)
        self.step = 0
        self.skipped_steps = 0
        self.nonfinite_in_row = 0
        self.extra_state: dict = {}  # small replicated state for hooks (e.g. the MLflow run id)

    @property
    def backbone(self) -> torch.nn.Module:
        return unwrapped(self.engine.module)

    @property
    def head_lr(self) -> float:
        return self.cfg.train.head_lr or self.cfg.train.lr

    # ------------------------------------------------------------------ the step
    def train_step(self, images: Tensor, labels: Tensor) -> StepOutput:
        """One optimisation step on this rank's batch (float images in [-1, 1])."""
        started = time.perf_counter()
        factor = lr_factor(self.step, self.cfg.train)
        set_lr(self.engine.optimizer, self.cfg.train.lr * factor)
        if self.head_optimizer is not None:
            set_lr(self.head_optimizer, self.head_lr * factor)
        self.engine.train()
        self.objective.train()
        images = images.to(
            self.device, torch.float32, non_blocking=True, memory_format=self.memory_format
        )
        labels = labels.to(self.device, non_blocking=True)

        # A skipped step must leave no trace: the forward pass already moved BatchNorm's
        # running statistics and the losses' counters (A-Softmax lambda), so keep copies.
        saved_buffers = self._small_buffers()
        with autocast(self.device, self.precision):
            embeddings = self.engine(images)
        embeddings = embeddings.float()  # the losses and the class-sharded layer stay fp32
        embeddings_finite = bool(torch.isfinite(embeddings).all())
        # Centres move inside the forward: only finite embeddings may reach it.
        if self.objective.updates_state_in_forward and not all_ranks_true(
            embeddings_finite, self.device, self.group
        ):
            return self._skip("non-finite embeddings", started, saved_buffers)
        total, terms = self.objective(embeddings, labels)
        # Non-finite embeddings make a non-finite loss: one agreement covers both, which
        # saves a collective (a synchronisation of all ranks) per step.
        if not all_ranks_true(
            embeddings_finite and bool(torch.isfinite(total)), self.device, self.group
        ):
            if not embeddings_finite:
                return self._skip("non-finite embeddings", started, saved_buffers)
            detail = {k: float(v.detach()) for k, v in terms.items()}
            return self._skip(f"non-finite loss ({detail})", started, saved_buffers)

        if self.loss_scale is None:
            self.engine.backward(total)
        else:
            self.engine.backward(self.loss_scale.scaled(total))
            params = [*self.backbone.parameters(), *self.head_params]
            finite = self.loss_scale.unscale_(params, self.device, self.group)
            self.loss_scale.update(finite)
            if not finite:
                return self._skip_overflow(started, saved_buffers)
        grad_norm = self._clip_backbone_grads()
        head_norm = None
        if self.head_optimizer is not None:
            head_norm = clip_sharded_grad_norm_(
                self.head_params, self.cfg.train.grad_clip, self.group
            )
        self.engine.step()
        if self.head_optimizer is not None:
            self.head_optimizer.step()
            self.head_optimizer.zero_grad(set_to_none=True)
        average_buffers(self.backbone, self.group)
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        self.step += 1
        self.nonfinite_in_row = 0
        return StepOutput(
            step=self.step - 1,
            skipped=False,
            loss=float(total.detach()),
            terms={name: float(value.detach()) for name, value in terms.items()},
            stats=self.objective.statistics(),
            lr=self.cfg.train.lr * factor,
            grad_norm=None if grad_norm is None else float(grad_norm),
            head_grad_norm=head_norm,
            samples=int(labels.shape[0]) * self.world_size,
            seconds=time.perf_counter() - started,
        )

    def _clip_backbone_grads(self) -> float | None:
        """Under ZeRO 0, where the averaged backbone gradients sit in `.grad`: their global
        norm, and clipped to `train.grad_clip` (> 0) in the same pass, which DeepSpeed's own
        clipping would repeat (DeepSpeed clips by max_norm / (norm + 1e-6) as torch does).
        None under ZeRO 1/2: DeepSpeed clips the partitions and reports the norm."""
        params = [p for p in self.backbone.parameters() if p.grad is not None]
        if self.cfg.train.zero_stage != 0 or not params:
            return None
        clip = self.cfg.train.grad_clip
        if clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, clip))
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))

    def _small_buffers(self) -> list[tuple[Tensor, Tensor]]:
        """(buffer, copy) for the backbone's buffers and the losses' scalar buffers."""
        buffers = list(self.backbone.buffers())
        buffers += [b for b in self.objective.buffers() if b.numel() == 1]
        return [(buffer, buffer.detach().clone()) for buffer in buffers]

    def _undo(self, saved_buffers: list[tuple[Tensor, Tensor]]) -> None:
        with torch.no_grad():
            for buffer, copy in saved_buffers:
                buffer.copy_(copy)
        self.step += 1
        self.skipped_steps += 1
        self.engine.zero_grad()
        if self.head_optimizer is not None:
            self.head_optimizer.zero_grad(set_to_none=True)

    def _skip_overflow(
        self, started: float, saved_buffers: list[tuple[Tensor, Tensor]]
    ) -> StepOutput:
        """An fp16 gradient overflowed: the scale was halved; not a sign of divergence, so
        it does not count towards max_nonfinite_in_row."""
        self._undo(saved_buffers)
        return StepOutput(
            step=self.step - 1,
            skipped=True,
            loss=float("nan"),
            reason=f"fp16 gradient overflow (loss scale now {self.loss_scale.scale:g})",
            seconds=time.perf_counter() - started,
        )

    def _skip(
        self, reason: str, started: float, saved_buffers: list[tuple[Tensor, Tensor]]
    ) -> StepOutput:
        self._undo(saved_buffers)
        self.nonfinite_in_row += 1
        if self.nonfinite_in_row >= self.cfg.train.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"step {self.step - 1}: {reason}; {self.nonfinite_in_row} non-finite steps in a row "
                f"(train.max_nonfinite_in_row={self.cfg.train.max_nonfinite_in_row}); stopping. "
                "Lower train.lr, raise train.warmup_steps or check the data."
            )
        return StepOutput(
            step=self.step - 1,
            skipped=True,
            loss=float("nan"),
            reason=reason,
            seconds=time.perf_counter() - started,
        )
