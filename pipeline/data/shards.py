"""Reading `facetrain prep` output: `dataset.json` and identity-grouped WebDataset shards.

A shard holds each identity's images contiguously (data_prep guarantees it), so a stream of
samples becomes a stream of whole identities by grouping consecutive samples on `.cls`.
Shards are read with webdataset's tar iterators, so local paths, `http(s)://`, `pipe:` and
the other schemes of `webdataset.gopen` all work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds
from webdataset.tariterators import tarfile_samples

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardInfo:
    url: str
    samples: int
    identities: int


@dataclass(frozen=True)
class DatasetIndex:
    num_classes: int
    shards: tuple[ShardInfo, ...]
    manifest: dict

    @property
    def samples(self) -> int:
        return sum(shard.samples for shard in self.shards)

    @property
    def identities(self) -> int:
        return sum(shard.identities for shard in self.shards)


@dataclass
class Identity:
    """One identity's images from one shard: encoded bytes, decoded only when drawn."""

    label: int
    keys: list[str]
    images: list[bytes]


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def read_dataset_index(root: str, split: str = "train") -> DatasetIndex:
    """Parse `<root>/dataset.json` (a directory or URL) into the shard list of `split`."""
    location = _join(root, "dataset.json")
    try:
        with wds.gopen(location) as stream:
            manifest = json.loads(stream.read())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"data.shards {root!r}: no dataset.json (expected the output dir of `facetrain prep`)"
        ) from None
    try:
        entries = manifest["splits"][split]["shards"]
        num_classes = int(manifest["num_classes"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{location}: missing {err} (expected num_classes and splits.{split}.shards)"
        ) from None
    shards = tuple(
        ShardInfo(
            _join(root, "shards", entry["name"]), int(entry["samples"]), int(entry["identities"])
        )
        for entry in entries
    )
    if not shards:
        raise ValueError(f"{location}: split {split!r} lists no shards")
    return DatasetIndex(num_classes, shards, manifest)


def iter_samples(url: str) -> Iterator[tuple[int, str, bytes]]:
    """(label, key, encoded image) of every sample of one shard, in file order."""
    name = url.rsplit("/", 1)[-1]
    for sample in tarfile_samples([{"url": url}]):
        key = sample.get("__key__", "?")
        if "cls" not in sample:
            raise ValueError(f"shard {name}: sample {key} has no .cls entry")
        image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if image is None:
            raise ValueError(f"shard {name}: sample {key} has no image (.jpg/.png/.webp)")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise ValueError(
                f"shard {name}: sample {key} has .cls {sample['cls'][:20]!r}, not an integer"
            ) from None
        yield label, key, image


def iter_identities(url: str) -> Iterator[Identity]:
    """Group a shard's consecutive samples by label into whole identities."""
    current: Identity | None = None
    for label, key, image in iter_samples(url):
        if current is not None and current.label != label:
            yield current
            current = None
        if current is None:
            current = Identity(label, [], [])
        current.keys.append(key)
        current.images.append(image)
    if current is not None:
        yield current
