"""One training step, and the state a checkpoint needs, for one rank of a process group.

`Trainer` owns the DeepSpeed engine (backbone), the objective (loss terms holding this rank's
classifier/centre rows) and the head optimizer. It assumes `torch.distributed` is already
initialised (our local launcher, torchrun or Ray Train); with world size 1 the same code runs
without any collective in the losses. The loop around it lives in `pipeline.run`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.models import build_backbone
from facetrain.pipeline.train.engine import (
    OPTIMIZER_STATE_KEYS,
    average_buffers,
    backbone_optimizer_state,
    build_engine,
    clip_sharded_grad_norm_,
    ensure_process_group,
    load_backbone_optimizer_state,
    load_backbone_weights,
    make_optimizer,
    materialise_optimizer_state,
    resolve_device,
    resolve_precision,
    set_lr,
)
from facetrain.pipeline.train.objective import Objective
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


def _all_ranks_true(flag: bool, device: torch.device, group=None) -> bool:
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item() > 0)


class Trainer:
    def __init__(self, cfg: TrainConfig, num_classes: int, group=None):
        ensure_process_group()
        self.cfg = cfg
        if group is None and dist.is_initialized():
            group = dist.group.WORLD
        self.group = group
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.world_size = dist.get_world_size(group) if dist.is_initialized() else 1
        self.device = resolve_device(cfg)
        self.precision = resolve_precision(cfg, self.device)
        self.num_classes = num_classes

        # Same seed on every rank: the backbone starts identical everywhere; the class rows
        # are keyed by (seed, class) inside the losses, independent of the world size.
        torch.manual_seed(cfg.train.seed)
        backbone = build_backbone(
            cfg.model.backbone, cfg.model.embedding_size, dropout=cfg.model.dropout
        )
        loss_group = group if self.world_size > 1 else None
        self.objective = Objective(
            cfg.loss, num_classes, cfg.model.embedding_size, group=loss_group, seed=cfg.train.seed
        ).to(self.device)
        self.engine = build_engine(backbone.to(self.device), cfg, self.world_size, self.precision)
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
        return self.engine.module

    @property
    def head_lr(self) -> float:
        return self.cfg.train.head_lr or self.cfg.train.lr

    @property
    def input_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

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
        images = images.to(self.device, self.input_dtype, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)

        # A skipped step must leave no trace: the forward pass already moved BatchNorm's
        # running statistics and the losses' counters (A-Softmax lambda), so keep copies.
        # (Centres only move with finite embeddings, which are checked first.)
        saved_buffers = self._small_buffers()
        embeddings = self.engine(images).float()
        if not _all_ranks_true(bool(torch.isfinite(embeddings).all()), self.device, self.group):
            return self._skip("non-finite embeddings", started, saved_buffers)
        total, terms = self.objective(embeddings, labels)
        if not _all_ranks_true(bool(torch.isfinite(total)), self.device, self.group):
            detail = {k: float(v.detach()) for k, v in terms.items()}
            return self._skip(f"non-finite loss ({detail})", started, saved_buffers)

        self.engine.backward(total)
        grad_norm = self._backbone_grad_norm()
        head_norm = None
        if self.head_optimizer is not None:
            # fp16: DeepSpeed scaled the loss, so the shards' gradients carry its scale too.
            loss_scale = float(getattr(self.engine.optimizer, "loss_scale", 1.0) or 1.0)
            if self.precision == "fp16" and loss_scale != 1.0:
                for param in self.head_params:
                    if param.grad is not None:
                        param.grad.div_(loss_scale)
            head_norm = clip_sharded_grad_norm_(
                self.head_params, self.cfg.train.grad_clip, self.group
            )
        overflow_skips = self.engine.skipped_steps
        self.engine.step()
        if self.head_optimizer is not None:
            # An fp16 overflow makes DeepSpeed skip the backbone step: skip the shards too.
            if self.engine.skipped_steps == overflow_skips:
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

    def _backbone_grad_norm(self) -> float | None:
        """Global norm of the averaged backbone gradients when they sit in `.grad` (ZeRO 0)."""
        grads = [p.grad for p in self.backbone.parameters() if p.grad is not None]
        if self.cfg.train.zero_stage != 0 or not grads:
            return None
        return float(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
        )

    def _small_buffers(self) -> list[tuple[Tensor, Tensor]]:
        """(buffer, copy) for the backbone's buffers and the losses' scalar buffers."""
        buffers = list(self.backbone.buffers())
        buffers += [b for b in self.objective.buffers() if b.numel() == 1]
        return [(buffer, buffer.detach().clone()) for buffer in buffers]

    def _skip(
        self, reason: str, started: float, saved_buffers: list[tuple[Tensor, Tensor]]
    ) -> StepOutput:
        with torch.no_grad():
            for buffer, copy in saved_buffers:
                buffer.copy_(copy)
        self.step += 1
        self.skipped_steps += 1
        self.nonfinite_in_row += 1
        self.engine.zero_grad()
        if self.head_optimizer is not None:
            self.head_optimizer.zero_grad(set_to_none=True)
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

    # ------------------------------------------------------------------ checkpoint state
    def _sharded_names(self) -> dict[str, tuple[str, ...]]:
        return {
            name: tuple(loss.class_tensor_names)
            for name, loss in self.objective.sharded_terms().items()
        }

    def _head_param_names(self) -> dict[int, str]:
        return {id(p): name for name, p in self.objective.named_parameters() if p.requires_grad}

    def checkpoint_state(self) -> dict:
        """{"backbone", "replicated", "shard", "rank_local"}; a collective call (ZeRO 1/2)."""
        named = dict(self.backbone.named_parameters())
        optimizer_state = backbone_optimizer_state(self.engine, named, self.cfg.train.optimizer)
        sharded = {
            f"terms.{term}.{t}" for term, names in self._sharded_names().items() for t in names
        }
        objective_state = {
            k: v.cpu() for k, v in self.objective.state_dict().items() if k not in sharded
        }

        shard = None
        terms = self.objective.sharded_terms()
        if terms:
            first = next(iter(terms.values()))
            tensors = {}
            for term, loss in terms.items():
                for name, rows in loss.shard_state()["tensors"].items():
                    tensors[f"{term}.{name}"] = rows
            head_step = None
            if self.head_optimizer is not None:
                names = self._head_param_names()
                for param in self.head_params:
                    state = self.head_optimizer.state.get(param, {})
                    for key in OPTIMIZER_STATE_KEYS[self.cfg.train.optimizer]:
                        if key in state:
                            tensors[f"{names[id(param)].removeprefix('terms.')}@{key}"] = (
                                state[key].detach().cpu().clone()
                            )
                    if "step" in state:
                        head_step = float(state["step"])
            shard = {
                "num_classes": first.num_classes,
                "class_start": first.class_start,
                "num_local_classes": first.num_local_classes,
                "tensors": tensors,
                "head_optimizer_step": head_step,
            }
        rank_local = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "sampling": {
                term: loss._sampling_generator.get_state()
                for term, loss in terms.items()
                if getattr(loss, "_sampling_generator", None) is not None
            },
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            rank_local["cuda"] = torch.cuda.get_rng_state(self.device)
        replicated = {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_row": self.nonfinite_in_row,
            "backbone_optimizer": optimizer_state,
            "objective": objective_state,
            "extra": dict(self.extra_state),
        }
        backbone = {
            k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
            for k, v in self.backbone.state_dict().items()
        }
        return {
            "backbone": backbone,
            "replicated": replicated,
            "shard": shard,
            "rank_local": rank_local,
        }

    def load_checkpoint_state(
        self, backbone: dict, replicated: dict, shards: list[dict], rank_local: dict | None
    ) -> None:
        """Restore from a checkpoint written by any world size (RNG only if it matches)."""
        from facetrain.losses import reshard

        if self.cfg.train.zero_stage > 0 or self.precision != "fp32":
            materialise_optimizer_state(self.engine, (2, 3, 112, 112), self.input_dtype)
        load_backbone_weights(self.engine, backbone)
        named = dict(self.backbone.named_parameters())
        load_backbone_optimizer_state(self.engine, named, replicated["backbone_optimizer"])
        self.objective.load_state_dict(replicated["objective"], strict=False)
        self.step = int(replicated["step"])
        self.skipped_steps = int(replicated["skipped_steps"])
        self.nonfinite_in_row = int(replicated["nonfinite_in_row"])
        self.extra_state = dict(replicated.get("extra", {}))

        terms = self.objective.sharded_terms()
        if terms:
            first = next(iter(terms.values()))
            rows = reshard(shards, first.class_start, first.num_local_classes)
            for term, loss in terms.items():
                loss.load_class_rows(
                    {
                        name: rows[f"{term}.{name}"].to(self.device)
                        for name in loss.class_tensor_names
                        if f"{term}.{name}" in rows
                    }
                )
            if self.head_optimizer is not None:
                names = self._head_param_names()
                step = shards[0].get("head_optimizer_step") if shards else None
                for param in self.head_params:
                    prefix = names[id(param)].removeprefix("terms.")
                    for key in OPTIMIZER_STATE_KEYS[self.cfg.train.optimizer]:
                        if f"{prefix}@{key}" in rows:
                            self.head_optimizer.state[param][key] = rows[f"{prefix}@{key}"].to(
                                param.device, param.dtype
                            )
                    if step is not None:
                        self.head_optimizer.state[param]["step"] = torch.tensor(step)
        if rank_local is not None:
            torch.set_rng_state(rank_local["torch"])
            np.random.set_state(rank_local["numpy"])
            random.setstate(rank_local["python"])
            for term, state in rank_local.get("sampling", {}).items():
                loss = terms.get(term)
                if loss is not None:
                    loss._generator().set_state(state)
            if "cuda" in rank_local and self.device.type == "cuda":
                torch.cuda.set_rng_state(rank_local["cuda"], self.device)
