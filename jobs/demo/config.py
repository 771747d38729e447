"""The typed config of `facetrain demo` (jobs/demo/demo.yaml holds the same values).

Four stages, one section each: the synthetic dataset, `prep`, the held-out pairs, and
`train` (a `pipeline.config.TrainConfig` tree whose paths the demo fills in: shards,
checkpoints, MLflow store). `quick` lists `--set`-style overrides that `--quick` applies, for
smoke runs and the end-to-end test.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticSection(Section):
    identities: int = Field(240, ge=4, description="identities generated (train + held out)")
    images: tuple[int, int] = Field((10, 20), description="images per identity: [low, high]")
    size: int = Field(128, ge=64, description="image side in pixels")
    seed: int = 0

    @model_validator(mode="after")
    def _check_images(self) -> SyntheticSection:
        low, high = self.images
        if not 2 <= low <= high:
            raise ValueError(
                f"images: expected [low, high] with 2 <= low <= high, got {list(self.images)}"
            )
        return self


class PrepSection(Section):
    val_identities: int = Field(
        40, ge=2, description="identities held out of training, for verification"
    )
    min_images: int = Field(2, ge=2, description="identities with fewer images are dropped")
    max_images: int | None = Field(None, ge=2)
    shard_size: int = Field(1000, ge=1)
    workers: int = Field(2, ge=1, description="CPUs of the embedded Ray")
    seed: int = 0


class PairsSection(Section):
    folds: int = Field(10, ge=2)
    pairs_per_fold: int = Field(30, ge=1, description="same pairs per fold (as many different)")
    seed: int = 0


class DemoConfig(Section):
    synthetic: SyntheticSection = SyntheticSection()
    prep: PrepSection = PrepSection()
    pairs: PairsSection = PairsSection()
    nproc: int = Field(2, ge=1, description="local training ranks")
    experiment: str = "facetrain-demo"
    train: dict[str, Any] = Field(
        description="TrainConfig tree (data.shards, checkpoint.dir, mlflow set by the demo)"
    )
    quick: list[str] = Field(default_factory=list, description="overrides applied by --quick")
