"""Verification during training (the `eval:` section): a hook, shared by every rank.

Every `eval.every` steps and at the last step, each set of `eval.sets` is embedded and scored
with the LFW protocol (`pipeline.eval.verify`); the figures go into that step's metrics as
`val/<set>/<figure>`, which the MLflow hook logs at the training step.

Sharing the work: rank r of W decodes and aligns only its contiguous slice of a set's images,
once, when training starts; each evaluation embeds that slice and all-gathers the rows, so
the cost falls with W and no rank waits long at the gather. Every rank then scores the same
gathered rows, hence agrees on the best step and on early stopping without another message.

The backbone runs in eval mode (BatchNorm uses, and never updates, its running statistics)
and is put back in its previous mode afterwards. The best checkpoint on `eval.select` is
written to `<checkpoint.dir>/best`; `mlflow.register: best` logs and registers those weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.data.transforms import normalize_batch
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable
from facetrain.pipeline.eval.tracking import metric_prefix
from facetrain.pipeline.eval.valsets import (
    DecodedFaces,
    PairSet,
    decode_faces,
    pair_set,
    validation_metrics,
)
from facetrain.pipeline.eval.verify import Verification, verify_embeddings
from facetrain.pipeline.train import checkpoint
from facetrain.pipeline.train.hooks import Hook
from facetrain.pipeline.train.precision import autocast
from facetrain.pipeline.train.trainer import StepOutput, Trainer

log = logging.getLogger("facetrain.train")

STATE_KEY = "validation"  # in trainer.extra_state, hence in every checkpoint
BEST_DIR = "best"
DECODE_WORKERS = 4


@dataclass
class _RankSlice:
    """One set on this rank: its pairs, this rank's decoded faces, and the layout of the
    gathered rows (the keys every rank decoded, in rank order)."""

    pairs: PairSet
    local: DecodedFaces
    counts: list[int]  # rows decoded by each rank
    gathered_keys: list[str]
    failures: dict[str, str]


def slice_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous share of `count` items (sizes differ by at most 1)."""
    return count * rank // world_size, count * (rank + 1) // world_size


@torch.no_grad()
def embed_faces_batched(
    backbone: torch.nn.Module,
    faces: np.ndarray,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    flip: bool = True,
) -> torch.Tensor:
    """[N, 112, 112, 3] uint8 -> float32 [N, D] unit rows, model(x) + model(flip x) with flip.

    The backbone's mode is the caller's: eval mode for validation."""
    rows = []
    for start in range(0, len(faces), batch_size):
        pixels = torch.from_numpy(faces[start : start + batch_size])
        count = len(pixels)
        if flip:
            # Flip and stack the uint8 pixels (NHWC, width is dim 2), then convert once: a
            # float32 cat of the flipped batch costs as much as the tiny model's convolutions.
            pixels = torch.cat([pixels, pixels.flip(2)])
        batch = normalize_batch(pixels).to(device, non_blocking=True)
        with autocast(device, precision):
            output = backbone(batch).float()
        embeddings = output[:count] + output[count:] if flip else output
        rows.append(torch.nn.functional.normalize(embeddings, dim=1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def _gather_objects(value, group) -> list:
    if group is None:
        return [value]
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def _gather_rows(local: torch.Tensor, counts: list[int], dim: int, group) -> torch.Tensor:
    """Every rank's rows, in rank order (padded to the largest share for all_gather)."""
    if local.numel() == 0:
        local = torch.zeros(0, dim)
    if group is None:
        return local
    padded_rows = max(counts)
    padded = torch.zeros(padded_rows, dim, dtype=torch.float32)
    padded[: len(local)] = local
    # gloo gathers CPU tensors; NCCL needs them on this rank's GPU.
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl(group) else padded.device
    parts = [torch.empty_like(padded, device=device) for _ in counts]
    dist.all_gather(parts, padded.to(device), group=group)
    return torch.cat([part[:count].cpu() for part, count in zip(parts, counts, strict=True)])


def _nccl(group) -> bool:
    return dist.get_backend(group) == "nccl"


def best_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint.dir) / BEST_DIR


def save_best(trainer: Trainer, cfg: TrainConfig) -> None:
    """A checkpoint of the current step under `<checkpoint.dir>/best`, the only one kept
    there (a collective call: every rank, same step)."""
    best_checkpoints = cfg.checkpoint.model_copy(update={"dir": str(best_dir(cfg)), "keep": 1})
    checkpoint.save(trainer, cfg.model_copy(update={"checkpoint": best_checkpoints}))


class ValidationHook(Hook):
    """Evaluates `cfg.eval.sets` every `eval.every` steps and at the last step."""

    def __init__(self, cfg: TrainConfig, progress: bool = True):
        if cfg.eval is None:
            raise ValueError("ValidationHook needs a config with an eval section")
        self.cfg = cfg
        self.eval_cfg = cfg.eval
        self.progress = progress
        self.sets: list[_RankSlice] = []
        self.results: dict[str, Verification] = {}
        self.evaluations = 0

    # ------------------------------------------------------------------ set-up, once
    def on_start(self, trainer: Trainer) -> None:
        self.sets = [self._prepare(set_cfg, trainer) for set_cfg in self.eval_cfg.sets]

    def _prepare(self, set_cfg, trainer: Trainer) -> _RankSlice:
        pairs = pair_set(
            set_cfg.name,
            bin=set_cfg.bin,
            pairs=set_cfg.pairs,
            images=set_cfg.images,
            landmarks=set_cfg.landmarks,
            shards=set_cfg.shards,
            split=set_cfg.split,
            template=self.eval_cfg.template,
            folds=self.eval_cfg.folds,
        )
        start, end = slice_bounds(len(pairs.keys), trainer.rank, trainer.world_size)
        local = decode_faces(
            pairs.source,
            pairs.keys[start:end],
            workers=DECODE_WORKERS,
            progress=self.progress and trainer.rank == 0,
        )
        shares = _gather_objects((local.keys, local.failures), trainer.group)
        gathered_keys = [key for keys, _ in shares for key in keys]
        failures = {key: reason for _, found in shares for key, reason in found.items()}
        if not gathered_keys:
            first = next(iter(failures.items()), ("-", "the set is empty"))
            raise ValueError(
                f"eval set {set_cfg.name!r}: no image could be read (first: {first[0]}: {first[1]})"
            )
        if failures and trainer.rank == 0:
            log.warning(
                "eval set %s: %d of %d images unusable, their pairs are left out (first: %s: %s)",
                set_cfg.name,
                len(failures),
                len(pairs.keys),
                *next(iter(failures.items())),
            )
        return _RankSlice(pairs, local, [len(keys) for keys, _ in shares], gathered_keys, failures)

    # ------------------------------------------------------------------ each evaluation
    def evaluate(self, trainer: Trainer) -> dict[str, Verification]:
        """Every set's verification on the current weights (a collective call)."""
        backbone = trainer.backbone
        was_training = backbone.training
        backbone.eval()
        results = {}
        try:
            for prepared in self.sets:
                local = embed_faces_batched(
                    backbone,
                    prepared.local.faces,
                    self.eval_cfg.batch_size,
                    trainer.device,
                    trainer.precision,
                    self.eval_cfg.flip,
                )
                rows = _gather_rows(
                    local, prepared.counts, self.cfg.model.embedding_size, trainer.group
                )
                table = EmbeddingTable(prepared.gathered_keys, rows.numpy())
                results[prepared.pairs.name] = verify_embeddings(
                    table, prepared.pairs.pairs, failures=prepared.failures
                )
        finally:
            backbone.train(was_training)
        return results

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        last = trainer.step >= self.cfg.train.steps
        if trainer.step % self.eval_cfg.every != 0 and not last:
            return
        self.results = self.evaluate(trainer)
        self.evaluations += 1
        for name, verification in self.results.items():
            prefix = f"val/{metric_prefix(name)}"
            for figure, value in validation_metrics(verification.summary).items():
                out.stats[f"{prefix}/{figure}"] = value
        if trainer.rank == 0:
            log.info(
                "step %d: %s",
                trainer.step,
                ", ".join(f"{n} {v.summary['accuracy']:.4f}" for n, v in self.results.items()),
            )
        self._select(trainer)

    def _select(self, trainer: Trainer) -> None:
        set_name, metric = self.eval_cfg.selected
        figures = validation_metrics(self.results[set_name].summary)
        if metric not in figures:
            raise ValueError(
                f"eval.select={set_name}/{metric}: set {set_name!r} has no {metric} "
                f"(its figures: {', '.join(figures)}); too few different pairs for that FAR?"
            )
        value = figures[metric]
        state = trainer.extra_state.setdefault(
            STATE_KEY, {"select": f"{set_name}/{metric}", "best": None, "best_step": None,
                        "since_best": 0}
        )
        best = state["best"]
        lower_is_better = metric == "eer"
        improved = best is None or (value < best if lower_is_better else value > best)
        if improved:
            state.update(best=value, best_step=trainer.step, since_best=0)
            save_best(trainer, self.cfg)
        else:
            state["since_best"] += 1
            patience = self.eval_cfg.patience
            if patience is not None and state["since_best"] >= patience:
                self.stop_requested = True
                if trainer.rank == 0:
                    log.warning(
                        "early stop at step %d: %s has not improved on %.5f (step %d) for %d "
                        "evaluations",
                        trainer.step, state["select"], best, state["best_step"], patience,
                    )

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        summary["validation"] = {
            name: validation_metrics(verification.summary)
            for name, verification in self.results.items()
        }
        state = trainer.extra_state.get(STATE_KEY, {})
        summary["best"] = {
            "select": state.get("select"),
            "value": state.get("best"),
            "step": state.get("best_step"),
            "checkpoint": str(best_dir(self.cfg)),
        }
        summary["stopped_early"] = self.stop_requested


def weights_to_log(trainer: Trainer, cfg: TrainConfig) -> torch.nn.Module:
    """The backbone `mlflow.register` names: the best checkpoint's, or the last weights."""
    if cfg.register == "best" and checkpoint.find_checkpoint(best_dir(cfg)) is not None:
        return checkpoint.load_backbone(best_dir(cfg))
    return trainer.backbone


def model_version_tags(trainer: Trainer, cfg: TrainConfig) -> dict[str, str]:
    """Tags of the logged model (and its registered version): which weights, how good."""
    tags = {"facetrain.weights": cfg.register}
    state = trainer.extra_state.get(STATE_KEY)
    if cfg.register == "best" and state and state.get("best") is not None:
        tags.update(
            {
                "facetrain.select": state["select"],
                f"val/{state['select']}": f"{state['best']:.6g}",
                "facetrain.best_step": str(state["best_step"]),
            }
        )
    else:
        tags["facetrain.step"] = str(trainer.step)
    return tags
