"""Side effects attached around the training loop (TFace style): checkpoints, progress.

A hook sees the trainer at three moments; the loop in `loop.py` knows nothing about what
they do. MLflow tracking is a hook too (`tracking.MlflowHook`).
"""

from __future__ import annotations

import logging

from facetrain.pipeline.config import TrainConfig
from facetrain.pipeline.train import checkpoint
from facetrain.pipeline.train.trainer import StepOutput, Trainer
from tqdm import tqdm

log = logging.getLogger("facetrain.train")


class Hook:
    # Set by a hook that ends training early (validation patience); the loop stops after
    # the step on which it is set. Every rank must agree, or the collectives would hang.
    stop_requested: bool = False

    def on_start(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        pass

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        pass

    def on_stop(self, trainer: Trainer, signum: int) -> None:
        """Every rank stops at this step after SIGTERM/SIGINT (signals.py); on_end is not called."""


class CheckpointHook(Hook):
    """Saves every `checkpoint.every` steps and at the end; `restore` resumes a run."""

    def __init__(self, cfg: TrainConfig, dataset: dict | None = None):
        """`dataset`: the data fingerprint saved with every checkpoint and checked on resume."""
        self.cfg = cfg
        self.dataset = dataset
        self.last_saved: int | None = None

    def restore(self, trainer: Trainer) -> bool:
        """Load the newest checkpoint of checkpoint.dir that loads completely, if any (any
        world size); a checkpoint of other data is a DatasetMismatchError."""
        if checkpoint.resume(trainer, self.cfg, self.dataset) is None:
            return False
        self.last_saved = trainer.step
        return True

    def save(self, trainer: Trainer) -> None:
        checkpoint.save(trainer, self.cfg, self.dataset)
        self.last_saved = trainer.step

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if trainer.step % self.cfg.checkpoint.every == 0 and trainer.step < self.cfg.train.steps:
            self.save(trainer)

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        if self.last_saved != trainer.step:
            self.save(trainer)
        summary["checkpoint"] = str(checkpoint.find_checkpoint(self.cfg.checkpoint.dir))

    def on_stop(self, trainer: Trainer, signum: int) -> None:
        if self.last_saved != trainer.step:
            self.save(trainer)


class ProgressHook(Hook):
    """A progress bar with the loss on rank 0, and a warning for every skipped step."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total_steps = total_steps
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_start(self, trainer: Trainer) -> None:
        if self.enabled:
            self.bar = tqdm(
                total=self.total_steps,
                initial=trainer.step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.skipped and trainer.rank == 0:
            log.warning(
                "step %d skipped: %s (%d in a row)", out.step, out.reason, trainer.nonfinite_in_row
            )
        if self.bar is not None:
            self.bar.update(1)
            if not out.skipped:
                self.bar.set_postfix(loss=f"{out.loss:.4f}", lr=f"{out.lr:.3g}", refresh=False)

    def on_end(self, trainer: Trainer, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_stop(self, trainer: Trainer, signum: int) -> None:
        self.on_end(trainer, {})
