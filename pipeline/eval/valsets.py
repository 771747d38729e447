"""Verification sets decoded once and evaluated many times (validation during training).

A set is a pair list plus an image source: an insightface `.bin`, an LFW pairs file over an
images root (raw faces aligned with a landmark file, or aligned 112x112 faces), or a pairs
file over the `val` split of a `facetrain prep` output, whose keys are the source paths
prep recorded. `decode_faces` turns a slice of the set's keys into uint8 faces once per run;
each evaluation then only runs the model (`pipeline/train/validation.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from facetrain.pipeline.eval.embed import FACE_SIZE, BinImages, ImageProblem, ImageSource
from facetrain.pipeline.eval.pairs import DEFAULT_FOLDS, PairList, read_pairs


@dataclass(frozen=True)
class PairSet:
    """What to evaluate: the pairs, every key once, and where the faces come from."""

    name: str
    pairs: PairList
    keys: list[str]
    source: ImageSource


@dataclass(frozen=True)
class DecodedFaces:
    """A slice of a set's keys as faces: the rows that decoded, and why the others did not."""

    keys: list[str]  # the keys of `faces`, in slice order
    faces: np.ndarray  # [n, 112, 112, 3] uint8 RGB
    failures: dict[str, str]


class ShardImages:
    """The aligned faces of one split of a `facetrain prep` output, keyed by source path."""

    def __init__(self, root: str | Path, split: str = "val") -> None:
        from facetrain.data_prep.shard_format import IMAGE_KEY, PROVENANCE_KEY
        from facetrain.pipeline.data.shards import iter_raw_samples, read_dataset_index

        index = read_dataset_index(str(root), split)
        self.images: dict[str, bytes] = {}
        for shard in index.shards:
            for sample in iter_raw_samples(shard.url):
                if IMAGE_KEY not in sample or PROVENANCE_KEY not in sample:
                    continue
                source = json.loads(sample[PROVENANCE_KEY]).get("source")
                if source:
                    self.images[source] = sample[IMAGE_KEY]

    def load(self, key: str):
        from facetrain.data_prep.images import ImageError, load_rgb

        data = self.images.get(key)
        if data is None:
            raise ImageProblem("not in the split's shards (rejected or deduplicated by prep?)")
        try:
            return load_rgb(data, name=key)
        except ImageError as err:
            raise ImageProblem(err.reason) from err


def pair_set(
    name: str,
    *,
    bin: str | Path | None = None,
    pairs: str | Path | None = None,
    images: str | Path | None = None,
    landmarks: str | Path | None = None,
    shards: str | Path | None = None,
    split: str = "val",
    template: str = "arcface",
    folds: int = DEFAULT_FOLDS,
) -> PairSet:
    """A `.bin`, or a pairs file over `images` (aligned with `landmarks` when given) or over
    the `split` of a prep output `shards`."""
    from facetrain.pipeline.eval.bin_format import read_bin
    from facetrain.pipeline.eval.evaluate import folder_source

    if bin is not None:
        packed = read_bin(bin)
        pair_list = packed.pairs(folds, source=str(bin))
        keys = [str(i) for i in range(len(packed.images))]
        return PairSet(name, pair_list, keys, BinImages(packed.images))
    if pairs is None:
        raise ValueError(f"eval set {name!r}: needs a .bin or a pairs file")
    pair_list = read_pairs(pairs, n_folds=folds)
    if shards is not None:
        source: ImageSource = ShardImages(shards, split)
    elif images is not None:
        source = folder_source(images, landmarks, template)
    else:
        raise ValueError(f"eval set {name!r}: pairs {pairs} need an images root or prep shards")
    return PairSet(name, pair_list, pair_list.unique_keys(), source)


def decode_faces(
    source: ImageSource, keys: Sequence[str], workers: int = 4, progress: bool = False
) -> DecodedFaces:
    """Decode (and align) `keys` once; an unusable image is a failure with its reason."""
    from tqdm import tqdm

    def load(key: str):
        try:
            image = source.load(key)
        except ImageProblem as problem:
            return problem
        face = np.asarray(image, dtype=np.uint8)
        if face.shape != (*FACE_SIZE[::-1], 3):
            raise ValueError(f"image {key}: {face.shape[1]}x{face.shape[0]}, expected 112x112")
        return face

    good_keys: list[str] = []
    faces: list[np.ndarray] = []
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        outcomes = pool.map(load, keys)
        for key, outcome in tqdm(
            zip(keys, outcomes, strict=True),
            total=len(keys),
            desc="decoding eval faces",
            unit="img",
            disable=not progress,
        ):
            if isinstance(outcome, ImageProblem):
                failures[key] = str(outcome)
            else:
                good_keys.append(key)
                faces.append(outcome)
    stacked = np.stack(faces) if faces else np.zeros((0, *FACE_SIZE[::-1], 3), dtype=np.uint8)
    return DecodedFaces(good_keys, stacked, failures)


def far_metric_name(far_key: str) -> str:
    """A `tar_at_far` key ("0.001", "1e-05") as a metric suffix: "1e-3", "1e-5"."""
    exponent = round(-np.log10(float(far_key)))
    return f"1e-{exponent}"


def validation_metrics(summary: dict) -> dict[str, float]:
    """The figures of one set that are charted during training, by their short names."""
    figures = {key: float(summary[key]) for key in ("accuracy", "accuracy_std", "auc", "eer")}
    for far, rate in summary["tar_at_far"].items():
        figures[f"tar_at_far_{far_metric_name(far)}"] = float(rate)
    return figures
