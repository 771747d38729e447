"""Reading `facetrain prep` output: `dataset.json` and identity-grouped WebDataset shards.

A shard holds each identity's images contiguously (data_prep guarantees it), so a stream of
samples becomes a stream of whole identities by grouping consecutive samples on `.cls`.
Local shards are read with a plain tar loop (see `iter_tar_members`); URLs open through
`webdataset.gopen`, so `http(s)://`, `pipe:` and its other schemes work too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds
from facetrain.data_prep.shard_format import (
    DATASET_FILE,
    IMAGE_KEY,
    LABEL_KEY,
    SHARDS_DIR,
    parse_dataset_json,
)

# Prep writes IMAGE_KEY; shards made by other tools may hold another image type.
IMAGE_EXTENSIONS = (IMAGE_KEY, "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardInfo:
    """One shard as dataset.json lists it; `bytes` and `sha256` are None for shard sets
    written without them (the reader then checks only the sample count)."""

    url: str
    samples: int
    identities: int
    bytes: int | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


class ShardIntegrityError(ValueError):
    """A shard that differs from its dataset.json entry (size, sample count or SHA-256)."""


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

    def fingerprint(self, class_names: list[str] | None) -> dict:
        """What binds a run to this data: the dataset.json hash, the class count and a hash
        of the class -> identity map (None when the shard set has no identities.parquet)."""
        names = None
        if class_names is not None:
            names = hashlib.sha256("\n".join(class_names).encode()).hexdigest()
        return {
            "dataset_sha256": hashlib.sha256(
                json.dumps(self.manifest, sort_keys=True).encode()
            ).hexdigest(),
            "num_classes": self.num_classes,
            "classes_sha256": names,
        }


@dataclass
class Identity:
    """One identity's images from one shard: encoded bytes, decoded only when drawn."""

    label: int
    keys: list[str]
    images: list[bytes]
    shard: str = ""  # the shard's file name, for messages about its samples


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def read_dataset_index(root: str, split: str = "train") -> DatasetIndex:
    """Parse `<root>/dataset.json` (a directory or URL) into the shard list of `split`."""
    location = _join(root, DATASET_FILE)
    try:
        with wds.gopen(location) as stream:
            text = stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"data.shards {root!r}: no {DATASET_FILE} (expected the output dir of `facetrain prep`)"
        ) from None
    dataset = parse_dataset_json(text, location)
    if split not in dataset.splits:
        raise ValueError(
            f"{location}: missing key 'splits.{split}' (it lists {sorted(dataset.splits)})"
        )
    shards = tuple(
        ShardInfo(
            _join(root, SHARDS_DIR, entry.name),
            entry.samples,
            entry.identities,
            entry.bytes,
            entry.sha256,
        )
        for entry in dataset.splits[split].shards
    )
    if not shards:
        raise ValueError(f"{location}: split {split!r} lists no shards")
    # The file as written (not the model's dump): its hash is logged with every run.
    return DatasetIndex(dataset.num_classes, shards, json.loads(text))


def read_class_names(root: str, split: str = "train") -> list[str] | None:
    """The identity name of every class of `split`, in class order, from the
    identities.parquet that `facetrain prep` writes; None when the shard set has none."""
    import io

    import pyarrow.parquet as pq

    location = _join(root, DATASET_FILE)
    with wds.gopen(location) as stream:
        manifest = json.loads(stream.read())
    name = (manifest.get("files") or {}).get("identities")
    if not name:
        return None
    try:
        with wds.gopen(_join(root, name)) as stream:
            table = pq.read_table(io.BytesIO(stream.read()), columns=["split", "class", "identity"])
    except (OSError, ValueError) as err:
        raise ValueError(f"{_join(root, name)}: unreadable class list ({err})") from None
    rows = sorted(
        (klass, identity)
        for row_split, klass, identity in zip(
            *(table.column(c).to_pylist() for c in ("split", "class", "identity")), strict=True
        )
        if row_split == split
    )
    return [identity for _, identity in rows]


def _read_exact(stream, size: int) -> bytes:
    # Pipes and sockets (http://, pipe:) may return short reads.
    data = stream.read(size)
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if field[:1] == b"\x80":  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ValueError(f"{what}: not a tar file (bad header field {field[:12]!r})") from None


def iter_tar_members(stream, name: str) -> Iterator[tuple[str, bytes]]:
    """(path, data) of each regular file of a tar stream (ustar, pax and GNU long names).

    A plain loop over 512-byte headers: webdataset's iterator (Python's tarfile underneath)
    spends ~90 us per sample here, as long as decoding the 112x112 JPEG itself, and the
    loader benchmark is decided by exactly that."""
    pending_path: str | None = None
    pending_size: int | None = None
    while True:
        header = _read_exact(stream, 512)
        if len(header) < 512 or header == bytes(512):
            return
        typeflag = header[156:157]
        size = _octal(header[124:136], f"shard {name}")
        if pending_size is not None:
            size = pending_size
        data = _read_exact(stream, size)
        if len(data) < size:
            raise ValueError(
                f"shard {name}: truncated (a member ends after {len(data)} of {size} bytes)"
            )
        _read_exact(stream, (-size) % 512)
        if typeflag == b"x":  # pax extended header: "<len> key=value\n" records for the next member
            pending_size = None
            for record in data.decode("utf-8", "replace").splitlines():
                _, _, pair = record.partition(" ")
                key, _, value = pair.partition("=")
                if key == "path":
                    pending_path = value
                elif key == "size":
                    pending_size = int(value)
            continue
        if typeflag == b"L":  # GNU long name for the next member
            pending_path = data.rstrip(b"\0").decode()
            pending_size = None
            continue
        if typeflag in (b"0", b"\0", b"7"):
            path = header[:100].rstrip(b"\0").decode()
            if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
                path = header[345:500].rstrip(b"\0").decode() + "/" + path
            yield pending_path or path, data
        pending_path = pending_size = None


def _split_key(path: str) -> tuple[str, str]:
    """WebDataset naming: the key is the path up to the first dot of the file name."""
    folder, _, filename = path.rpartition("/")
    stem, _, ext = filename.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class _HashingReader:
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, stream):
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data


def _as_shard(shard: str | ShardInfo) -> ShardInfo:
    return shard if isinstance(shard, ShardInfo) else ShardInfo(shard, -1, -1)


def _check_size_on_open(shard: ShardInfo, local: bool) -> None:
    if local and shard.bytes is not None:
        size = os.path.getsize(shard.url)
        if size != shard.bytes:
            raise ShardIntegrityError(
                f"shard {shard.url}: {size} bytes, dataset.json lists {shard.bytes} "
                "(truncated or replaced; re-run `facetrain prep` or restore the file)"
            )


def _check_at_end(shard: ShardInfo, samples: int, reader: _HashingReader) -> None:
    """Compare what was streamed with dataset.json. Hashing while reading costs little next
    to decoding the JPEGs (benchmarks/loader_throughput.py measures it)."""
    differences = []
    if shard.samples >= 0 and samples != shard.samples:
        differences.append(f"{samples} samples, dataset.json lists {shard.samples}")
    if shard.bytes is not None and reader.bytes != shard.bytes:
        differences.append(f"{reader.bytes} bytes, dataset.json lists {shard.bytes}")
    if shard.sha256 is not None and reader.sha256.hexdigest() != shard.sha256:
        differences.append(
            f"sha256 {reader.sha256.hexdigest()[:16]}..., dataset.json lists {shard.sha256[:16]}..."
        )
    if differences:
        raise ShardIntegrityError(
            f"shard {shard.url}: {'; '.join(differences)} "
            "(the file changed since `facetrain prep` wrote it)"
        )


def iter_raw_samples(shard: str | ShardInfo) -> Iterator[dict]:
    """WebDataset samples `{"__key__": ..., ext: bytes}` of one shard, in file order.

    Given a ShardInfo, the shard is checked against its dataset.json entry: the size when
    it opens (local files), the sample count, size and SHA-256 once it has been read to the
    end (ShardIntegrityError). A bare URL is read unchecked."""
    shard = _as_shard(shard)
    url, name = shard.url, shard.name
    local = "://" not in url and not url.startswith("pipe:")
    _check_size_on_open(shard, local)
    with open(url, "rb", buffering=1 << 20) if local else wds.gopen(url) as stream:
        reader = _HashingReader(stream)
        sample: dict = {}
        count = 0
        for path, data in iter_tar_members(reader, name):
            key, ext = _split_key(path)
            if sample and sample["__key__"] != key:
                count += 1
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext] = data
        if sample:
            count += 1
            yield sample
        while reader.read(1 << 20):  # the end-of-archive blocks belong to the hash too
            pass
        _check_at_end(shard, count, reader)


def iter_samples(shard: str | ShardInfo) -> Iterator[tuple[int, str, bytes]]:
    """(label, key, encoded image) of every sample of one shard, in file order."""
    name = _as_shard(shard).name
    for sample in iter_raw_samples(shard):
        key = sample["__key__"]
        if LABEL_KEY not in sample:
            raise ValueError(f"shard {name}: sample {key} has no .{LABEL_KEY} entry")
        image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if image is None:
            raise ValueError(f"shard {name}: sample {key} has no image (.jpg/.png/.webp)")
        try:
            label = int(sample[LABEL_KEY])
        except ValueError:
            raise ValueError(
                f"shard {name}: sample {key} has .{LABEL_KEY} {sample[LABEL_KEY][:20]!r}, not an integer"
            ) from None
        yield label, key, image


def iter_identities(shard: str | ShardInfo) -> Iterator[Identity]:
    """Group a shard's consecutive samples by label into whole identities (checked against
    dataset.json when given a ShardInfo)."""
    name = _as_shard(shard).name
    current: Identity | None = None
    for label, key, image in iter_samples(shard):
        if current is not None and current.label != label:
            yield current
            current = None
        if current is None:
            current = Identity(label, [], [], name)
        current.keys.append(key)
        current.images.append(image)
    if current is not None:
        yield current


def verify_shards(index: DatasetIndex, progress: bool = True) -> list[str]:
    """Read every shard of `index` to the end; one line per shard that differs from
    dataset.json (empty when all match)."""
    from tqdm import tqdm

    problems = []
    for shard in tqdm(index.shards, desc="verify", unit="shard", disable=not progress):
        try:
            for _ in iter_raw_samples(shard):
                pass
        except (OSError, ValueError) as err:
            problems.append(str(err))
    return problems
