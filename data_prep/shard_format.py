"""The shard format `facetrain prep` writes and the pipeline reads: one definition for both.

An output directory holds `dataset.json` (this module's `DatasetManifest`) and `shards/*.tar`,
WebDataset tars in which a sample is the members `<key>.jpg` (the aligned face), `<key>.cls`
(the class index as ASCII digits) and `<key>.json` (provenance). data_prep owns the format;
the pipeline imports it from here (the dependency points from pipeline to data_prep).
"""

from __future__ import annotations

import json
from typing import Any

from facetrain.data_prep.errors import describe_validation_error
from pydantic import BaseModel, ConfigDict, ValidationError

FORMAT = "facetrain-shards/1"
DATASET_FILE = "dataset.json"
SHARDS_DIR = "shards"

IMAGE_KEY = "jpg"
LABEL_KEY = "cls"
PROVENANCE_KEY = "json"
SAMPLE_KEYS = (IMAGE_KEY, LABEL_KEY, PROVENANCE_KEY)  # the order prep writes them in

# `__key__` of a sample: `<split>_<class, 6 digits>_<position within the identity, 4 digits>`.
CLASS_DIGITS = 6
POSITION_DIGITS = 4


def sample_key(split: str, class_index: int, position: int) -> str:
    """The `__key__` prep gives image `position` of class `class_index` in `split`."""
    return f"{split}_{class_index:0{CLASS_DIGITS}d}_{position:0{POSITION_DIGITS}d}"


class _Model(BaseModel):
    # Unknown keys are kept: a newer prep may add fields that an older reader passes over.
    model_config = ConfigDict(extra="allow")


class ShardEntry(_Model):
    name: str  # file name under shards/
    samples: int
    identities: int
    bytes: int | None = None
    sha256: str | None = None


class SplitEntry(_Model):
    num_classes: int | None = None
    identities: int | None = None
    images: int | None = None
    shards: list[ShardEntry]


class Counts(_Model):
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]


class DatasetManifest(_Model):
    """dataset.json. The pipeline needs only `num_classes` and `splits`; prep writes them all.

    Field order is the file's key order: `to_json` writes what prep always wrote, and a
    manifest read from a file writes back the same keys it was given (unset ones stay out)."""

    format: str | None = None
    facetrain_version: str | None = None
    num_classes: int
    image_size: list[int] | None = None
    align: str | None = None
    splits: dict[str, SplitEntry]
    counts: Counts | None = None
    files: dict[str, str] | None = None
    config: dict[str, Any] | None = None
    fingerprint: str | None = None

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=indent)


class DatasetFormatError(ValueError):
    """A dataset.json that does not fit the format; the message names the file and the key."""


def parse_dataset_json(data: bytes | str, location: str) -> DatasetManifest:
    """Validate the text of a dataset.json read from `location` (named in every error)."""
    try:
        tree = json.loads(data)
    except ValueError as err:
        raise DatasetFormatError(f"{location}: not JSON ({err})") from None
    try:
        return DatasetManifest.model_validate(tree)
    except ValidationError as err:
        raise DatasetFormatError(f"{location}: {describe_validation_error(err)}") from None
