"""Embedding files shared with other tools: Parquet (`key`, `embedding`) or `.npz` (`keys`, `embeddings`).

A key is the image path relative to the images root (`Aaron_Peirsol/Aaron_Peirsol_0001.jpg`);
`facetrain embed` writes this format and `--embeddings` reads it, so embeddings of any model
can be evaluated with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class EmbeddingTable:
    keys: list[str]
    embeddings: np.ndarray  # [N, D] float32
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.keys):
            raise ValueError(
                f"embeddings: {len(self.keys)} keys need an array [{len(self.keys)}, D], "
                f"got shape {list(self.embeddings.shape)}"
            )
        index = {key: row for row, key in enumerate(self.keys)}
        if len(index) != len(self.keys):
            duplicated = next(key for key in self.keys if self.keys.count(key) > 1)
            raise ValueError(f"embeddings: key {duplicated!r} appears more than once")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def rows(self, keys: list[str] | tuple[str, ...]) -> np.ndarray:
        """Embeddings of `keys`, in that order (every key must be present)."""
        return self.embeddings[[self._index[key] for key in keys]]


def write_embeddings(path: str | Path, table: EmbeddingTable) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    embeddings = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    if path.suffix == ".npz":
        np.savez(path, keys=np.asarray(table.keys, dtype=str), embeddings=embeddings)
        return path
    if path.suffix != ".parquet":
        raise ValueError(f"embeddings file {path}: expected a .parquet or .npz name")
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, table.dim) if table.dim else flat
    pq.write_table(
        pa.table({"key": pa.array(table.keys, type=pa.string()), "embedding": column}), path
    )
    return path


def read_embeddings(path: str | Path) -> EmbeddingTable:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path}: not found")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            missing = {"keys", "embeddings"} - set(archive.files)
            if missing:
                raise ValueError(
                    f"embeddings file {path}: missing array(s) {sorted(missing)}; "
                    f"expected 'keys' and 'embeddings'"
                )
            keys = [str(key) for key in archive["keys"]]
            embeddings = np.asarray(archive["embeddings"], dtype=np.float32)
        return EmbeddingTable(keys, embeddings)
    if path.suffix != ".parquet":
        raise ValueError(f"embeddings file {path}: expected a .parquet or .npz file")
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = {"key", "embedding"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"embeddings file {path}: missing column(s) {sorted(missing)}; "
            f"expected 'key' (string) and 'embedding' (list of floats)"
        )
    keys = [str(key) for key in table.column("key").to_pylist()]
    column = table.column("embedding").combine_chunks()
    if not (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        raise ValueError(
            f"embeddings file {path}: 'embedding' is {column.type}, expected a list of floats"
        )
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if column.null_count or len(set(lengths.tolist())) > 1:
        raise ValueError(
            f"embeddings file {path}: every 'embedding' must be a list of the same length, "
            f"found lengths {sorted(set(lengths.tolist()) - {None})} and {column.null_count} null(s)"
        )
    # flatten() honours list offsets (a sliced column), so rows stay aligned with keys.
    values = column.flatten().to_numpy(zero_copy_only=False)
    embeddings = np.asarray(values, dtype=np.float32).reshape(len(keys), -1)
    return EmbeddingTable(keys, embeddings)
