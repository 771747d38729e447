"""The typed training config (`facetrain train --config ...`), one pydantic model per section.

Loaded from YAML by `jobs.config.load_config(TrainConfig, path, overrides)`; pipeline code
receives the built object and never reads files or environment for settings. Unknown keys
are errors (`extra="forbid"`), so a typo in a YAML never trains silently with a default.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchConfig(Section):
    p: int = Field(16, ge=1, description="identities per rank per step")
    k: int = Field(4, ge=1, description="images per identity (>= 2 for the P x K sampler)")

    @property
    def size(self) -> int:
        return self.p * self.k


class DataConfig(Section):
    shards: str = Field(description="a `facetrain prep` output dir or URL (holds dataset.json)")
    split: str = "train"
    batch: BatchConfig = BatchConfig()
    # pk: identity-balanced P x K batches; shuffle: plain shuffled batches of p*k images;
    # auto: pk when a triplet or centre term is in the loss, shuffle otherwise.
    sampler: Literal["auto", "pk", "shuffle"] = "auto"
    weighting: Literal["uniform", "instance", "sqrt"] = "uniform"
    buffer_identities: int = Field(256, ge=1, description="identities held per loader worker")
    shuffle_buffer: int = Field(2048, ge=1, description="images held per worker (shuffle sampler)")
    workers: int = Field(
        2, ge=0, description="loader processes per rank (0: in the training process)"
    )
    flip: bool = True
    landmark_jitter: float = Field(
        0.0,
        ge=0.0,
        le=8.0,
        description="pixels (112x112 template): re-align each training face as if its five "
        "points were off by this standard deviation, to train for detected landmarks; 0 = off",
    )
    max_bad_samples: int = Field(
        1000, ge=0, description="undecodable samples skipped (replaced) before the run stops"
    )


class ModelConfig(Section):
    backbone: str = "iresnet50"
    embedding_size: int = Field(512, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class LossTermBase(Section):
    weight: float = Field(1.0, ge=0.0)


class SoftmaxTerm(LossTermBase):
    type: Literal["softmax"]
    bias: bool = True
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)


class ASoftmaxTerm(LossTermBase):
    type: Literal["asoftmax"]
    margin: int = Field(4, ge=1, le=4)
    lambda_base: float = 1000.0
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)


class ArcFaceTerm(LossTermBase):
    type: Literal["arcface"]
    margin: float = Field(0.5, ge=0.0, lt=3.14159, description="additive angle m, radians")
    scale: float = Field(64.0, gt=0.0)
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)


class CosFaceTerm(LossTermBase):
    type: Literal["cosface"]
    margin: float = Field(0.35, ge=0.0, description="additive cosine margin m")
    scale: float = Field(64.0, gt=0.0)
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)


class CombinedTerm(LossTermBase):
    """insightface's combined margin: target logit s·(cos(m1·θ + m2) − m3)."""

    type: Literal["combined"]
    m1: float = Field(1.0, gt=0.0)
    m2: float = Field(0.5, ge=0.0, lt=3.14159)
    m3: float = Field(0.0)
    scale: float = Field(64.0, gt=0.0)
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)


class CenterTerm(LossTermBase):
    type: Literal["center"]
    weight: float = Field(0.003, ge=0.0)  # lambda of Wen et al. 2016
    alpha: float = Field(0.5, gt=0.0, le=1.0)


class OfflineSelectionConfig(Section):
    """FaceNet's offline selection: every `every` steps embed a sample, pick the next triplets."""

    every: int = Field(100, ge=1, description="steps per round (one sample embedded per round)")
    identities: int = Field(45, ge=2, description="identities in each round's sample")
    images_per_identity: int = Field(40, ge=2, description="at most this many images of each")
    negatives: Literal["semihard", "hard", "random-within-margin"] = "semihard"
    margin: float | None = Field(None, ge=0.0, description="selection margin; default: the term's")
    triplets_per_batch: int | None = Field(
        None, ge=1, description="per rank and step; default data.batch.p * k // 3"
    )


class TripletTerm(LossTermBase):
    type: Literal["triplet"]
    margin: float = Field(0.2, ge=0.0)
    mining: Literal["semihard", "hard", "all"] = "semihard"
    normalize: bool = True
    # online: mine inside each batch (`mining`); offline: train on triplets picked every
    # `offline.every` steps from an embedded sample (pipeline/train/offline_triplets.py).
    selection: Literal["online", "offline"] = "online"
    offline: OfflineSelectionConfig = OfflineSelectionConfig()


LossTerm = Annotated[
    SoftmaxTerm
    | ASoftmaxTerm
    | ArcFaceTerm
    | CosFaceTerm
    | CombinedTerm
    | CenterTerm
    | TripletTerm,
    Field(discriminator="type"),
]
CLASSIFIER_TYPES = ("softmax", "asoftmax", "arcface", "cosface", "combined")


class TrainSection(Section):
    steps: int = Field(1000, ge=1)
    lr: float = Field(0.1, gt=0.0)
    head_lr: float | None = Field(None, gt=0.0, description="classifier-shard LR; default train.lr")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "poly", "step", "constant"] = "cosine"
    poly_power: float = Field(2.0, gt=0.0)
    step_milestones: list[int] = Field(
        default_factory=list, description="steps where LR *= step_gamma"
    )
    step_gamma: float = Field(0.1, gt=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float = Field(5.0, ge=0.0, description="max global grad norm; 0 disables")
    zero_stage: Literal[0, 1, 2] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto",
        description="layout of the images and activations in the backbone; auto: channels_last "
        "on CUDA, and on CPU for the backbones measured faster with it (mobilefacenet, tiny)",
    )
    seed: int = 0
    max_nonfinite_in_row: int = Field(
        10, ge=1, description="stop after this many skipped steps in a row"
    )
    log_every: int = Field(10, ge=1)
    # Ray Train only (`facetrain submit train`, `python -m facetrain.jobs.ray.train`):
    workers: int | None = Field(
        None, ge=1, description="Ray Train workers; default --nproc, else one per GPU (or 1)"
    )
    resources_timeout: float = Field(
        600.0, gt=0, description="seconds to wait for the autoscaler to provide the workers"
    )
    max_failures: int = Field(
        3, ge=0, description="worker-group restarts (from the latest checkpoint) after a failure"
    )
    init_from: str | None = Field(
        None,
        description="a checkpoint (dir or step folder) a new run starts from: its backbone, "
        "and its classifier/centre rows of the identities both datasets hold",
    )


class CheckpointConfig(Section):
    dir: str = "checkpoints"
    every: int = Field(1000, ge=1)
    keep: int = Field(2, ge=1, description="complete checkpoints kept on disk")


class MlflowConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else MLflow's own default (./mlflow.db)"
    )
    experiment: str = "facetrain"
    run_name: str | None = None
    registered_model: str | None = "facetrain-embedder"
    log_model: bool = True
    required: bool = Field(
        True,
        description="a model that could not be logged or registered fails the run (exit 1, "
        "after the checkpoint is written); false: a warning",
    )
    # `register` in YAML; another name in Python, where BaseModel.register (ABC's) lives.
    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)
    # best: the checkpoint best on eval.select (checkpoint.dir/best); last: the final weights.
    registered_weights: Literal["best", "last"] | None = Field(
        None,
        alias="register",
        description="which weights are logged and registered; default best with eval",
    )


class ValSetConfig(Section):
    """One verification set evaluated during training: a `.bin` pack, or a pairs file over
    images (raw, aligned with `landmarks`, or already aligned 112x112 faces such as the
    `images/` of a `facetrain prep` output)."""

    name: str = Field(min_length=1, description="the MLflow key: val/<name>/accuracy")
    bin: str | None = Field(None, description="an insightface .bin (lfw.bin, cfp_fp.bin, ...)")
    pairs: str | None = Field(None, description="an LFW-format pairs file")
    images: str | None = Field(None, description="root the pair keys are relative to")
    landmarks: str | None = Field(None, description="5-point landmarks to align raw images")
    shards: str | None = Field(
        None, description="a `facetrain prep` output: pair keys are its samples' source paths"
    )
    split: str = Field("val", description="the split of `shards` the pairs are drawn from")

    @model_validator(mode="after")
    def _one_source(self) -> ValSetConfig:
        if (self.bin is None) == (self.pairs is None):
            raise ValueError(
                f"eval set {self.name!r}: give either `bin: FILE` or `pairs: FILE` with "
                "`images: DIR` (or `shards: DIR`)"
            )
        if self.pairs is not None and (self.images is None) == (self.shards is None):
            raise ValueError(
                f"eval set {self.name!r}: `pairs` needs exactly one of `images: DIR` and `shards: DIR`"
            )
        if self.bin is not None and (self.images or self.landmarks or self.shards):
            raise ValueError(
                f"eval set {self.name!r}: a .bin holds its own aligned images; "
                "drop `images`/`landmarks`/`shards`"
            )
        return self


SELECTABLE_METRIC = re.compile(r"accuracy|auc|eer|tar_at_far_1e-[2-6]")


class EvalConfig(Section):
    """Verification during training: every `every` steps and at the end, on each of `sets`."""

    every: int = Field(1000, ge=1, description="steps between evaluations (and one at the end)")
    sets: list[ValSetConfig] = Field(min_length=1)
    batch_size: int = Field(64, ge=1, description="images per forward pass per rank (x2 with flip)")
    flip: bool = True
    folds: int = Field(10, ge=2, description="folds of a pairs file or .bin without its own")
    template: str = Field("arcface", description="alignment template of raw images, as in prep")
    select: str | None = Field(
        None,
        description="<set>/<metric> that picks the best checkpoint; default <first set>/accuracy",
    )
    patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations without a better `select`"
    )

    @model_validator(mode="after")
    def _check_select(self) -> EvalConfig:
        names = [s.name for s in self.sets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"eval.sets: name(s) {repeated} appear more than once")
        if self.select is not None:
            set_name, _, metric = self.select.partition("/")
            if set_name not in names or not SELECTABLE_METRIC.fullmatch(metric):
                raise ValueError(
                    f"eval.select={self.select!r}: expected <set>/<metric> with a set of "
                    f"eval.sets ({', '.join(names)}) and a metric accuracy|auc|eer|"
                    f"tar_at_far_1e-N, e.g. {names[0]}/accuracy"
                )
        return self

    @property
    def selected(self) -> tuple[str, str]:
        """(set name, metric) of `select`, by default the first set's accuracy."""
        set_name, _, metric = (self.select or f"{self.sets[0].name}/accuracy").partition("/")
        return set_name, metric


class TrainConfig(Section):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: list[LossTerm] = Field(min_length=1)
    train: TrainSection = TrainSection()
    checkpoint: CheckpointConfig = CheckpointConfig()
    mlflow: MlflowConfig = MlflowConfig()
    eval: EvalConfig | None = None

    @field_validator("loss")
    @classmethod
    def _check_combination(cls, terms: list[LossTerm]) -> list[LossTerm]:
        types = [term.type for term in terms]
        classifiers = [t for t in types if t in CLASSIFIER_TYPES]
        if len(classifiers) > 1:
            raise ValueError(
                f"at most one classifier term ({'|'.join(CLASSIFIER_TYPES)}), got {classifiers}"
            )
        if "center" in types and not classifiers:
            raise ValueError(
                f"a center term needs a classifier term ({'|'.join(CLASSIFIER_TYPES)}) next to it"
            )
        repeated = sorted({t for t in types if types.count(t) > 1})
        if repeated:
            raise ValueError(f"term type(s) {repeated} appear more than once")
        return terms

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        if self.sampler == "pk" and self.data.batch.k < 2:
            raise ValueError(
                f"data.batch.k={self.data.batch.k}: the P x K sampler needs k >= 2 so every anchor has a positive"
            )
        return self

    @model_validator(mode="after")
    def _check_register(self) -> TrainConfig:
        if self.mlflow.registered_weights == "best" and self.eval is None:
            raise ValueError("mlflow.register=best needs an eval section (the figure that picks it)")
        return self

    @property
    def register(self) -> Literal["best", "last"]:
        """The weights logged to MLflow: best on eval.select when there is one, else last."""
        if self.mlflow.registered_weights is not None:
            return self.mlflow.registered_weights
        return "best" if self.eval is not None else "last"

    @property
    def sampler(self) -> Literal["pk", "shuffle"]:
        if self.data.sampler != "auto":
            return self.data.sampler
        needs_identities = any(term.type in ("triplet", "center") for term in self.loss)
        return "pk" if needs_identities else "shuffle"
