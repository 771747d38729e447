"""Which classes a rank owns, how their rows are initialised, and how shards are re-cut.

Classes are split into contiguous blocks; the first `C mod N` ranks hold one extra class.
Row initialisation is keyed by (seed, class index) only, so N=1 and N=8 start from the same
full matrix, and no rank ever allocates more than its own rows (plus one small block).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

# Rows are drawn in blocks of this many classes, each block from its own generator seeded by
# (seed, block index): one generator per class would make a 1M-class init take minutes.
INIT_BLOCK_CLASSES = 1024


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(class_start, num_local_classes) of `rank` among `world_size` ranks."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: expected at least 1 class")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
    per_rank, extra = divmod(num_classes, world_size)
    num_local_classes = per_rank + (1 if rank < extra else 0)
    class_start = rank * per_rank + min(rank, extra)
    return class_start, num_local_classes


def _block_generator(seed: int, block: int) -> torch.Generator:
    # A fixed odd multiplier spreads (seed, block) pairs apart; both stay non-negative.
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + block) % (2**63))


def init_class_rows(
    seed: int, class_start: int, num_rows: int, dim: int, std: float, dtype=torch.float32
) -> Tensor:
    """Rows `class_start … class_start+num_rows-1` of a N(0, std²) matrix keyed by (seed, class)."""
    rows = torch.empty(num_rows, dim, dtype=dtype)
    class_end = class_start + num_rows
    first_block = class_start // INIT_BLOCK_CLASSES
    last_block = (class_end - 1) // INIT_BLOCK_CLASSES if num_rows else first_block - 1
    for block in range(first_block, last_block + 1):
        block_start = block * INIT_BLOCK_CLASSES
        values = torch.randn(
            INIT_BLOCK_CLASSES, dim, generator=_block_generator(seed, block), dtype=torch.float32
        )
        lo, hi = max(class_start, block_start), min(class_end, block_start + INIT_BLOCK_CLASSES)
        rows[lo - class_start : hi - class_start] = values[lo - block_start : hi - block_start]
    return rows.mul_(std)


def slice_rows(full: Tensor, class_start: int, num_local_classes: int) -> Tensor:
    """This rank's rows of a full per-class tensor (first dimension = classes), as a copy."""
    if class_start + num_local_classes > full.shape[0]:
        raise ValueError(
            f"slice_rows: classes {class_start}…{class_start + num_local_classes - 1} "
            f"outside a tensor of {full.shape[0]} classes"
        )
    return full[class_start : class_start + num_local_classes].clone()


def reshard(
    shard_states: Iterable[Mapping], class_start: int, num_local_classes: int
) -> dict[str, Tensor]:
    """Assemble a new rank's rows from shard states saved under any world size.

    `shard_states` are the dicts returned by the modules' `shard_state()` (one per old rank,
    any order); only rows overlapping `class_start … class_start+num_local_classes-1` are
    copied, so no full-size matrix is built. Returns {tensor name: rows}.
    """
    class_end = class_start + num_local_classes
    out: dict[str, Tensor] = {}
    covered = 0
    for state in shard_states:
        old_start, old_count = int(state["class_start"]), int(state["num_local_classes"])
        lo, hi = max(class_start, old_start), min(class_end, old_start + old_count)
        if lo >= hi:
            continue
        for name, rows in state["tensors"].items():
            if name not in out:
                out[name] = rows.new_empty((num_local_classes, *rows.shape[1:]))
            out[name][lo - class_start : hi - class_start] = rows[lo - old_start : hi - old_start]
        covered += hi - lo
    if covered != num_local_classes:
        raise ValueError(
            f"reshard: the shard states cover {covered} of the {num_local_classes} classes "
            f"{class_start}…{class_end - 1} (missing or overlapping shards)"
        )
    return out


def merge_shards(shard_states: Iterable[Mapping]) -> dict[str, Tensor]:
    """The full per-class tensors from all ranks' `shard_state()` dicts (e.g. for export)."""
    states = list(shard_states)
    if not states:
        raise ValueError("merge_shards: no shard states given")
    num_classes = int(states[0]["num_classes"])
    return reshard(states, 0, num_classes)


class ClassShardedMixin:
    """Save/restore helpers for modules that hold per-class rows for one class range.

    Subclasses set `num_classes`, `class_start`, `num_local_classes` and list the names of
    their per-class tensors in `_class_tensor_names`.
    """

    num_classes: int
    class_start: int
    num_local_classes: int
    _class_tensor_names: tuple[str, ...] = ()

    def _class_tensors(self) -> dict[str, Tensor]:
        tensors = {name: getattr(self, name) for name in self._class_tensor_names}
        return {name: t for name, t in tensors.items() if t is not None}

    @property
    def class_tensor_names(self) -> tuple[str, ...]:
        """Names of the per-class tensors this module holds, e.g. ("weight", "bias")."""
        return tuple(self._class_tensors())

    def shard_state(self) -> dict:
        """{"num_classes", "class_start", "num_local_classes", "tensors": {name: rows}} (CPU copies)."""
        return {
            "num_classes": self.num_classes,
            "class_start": self.class_start,
            "num_local_classes": self.num_local_classes,
            "tensors": {
                name: t.detach().cpu().clone() for name, t in self._class_tensors().items()
            },
        }

    def load_class_rows(self, rows: Mapping[str, Tensor]) -> None:
        """Copy this rank's rows (e.g. from `reshard`) into the module's tensors, in place."""
        for name, target in self._class_tensors().items():
            if name not in rows:
                raise KeyError(f"load_class_rows: no rows for {name!r}; got {sorted(rows)}")
            if tuple(rows[name].shape) != tuple(target.shape):
                raise ValueError(
                    f"load_class_rows: {name} rows have shape {tuple(rows[name].shape)}, expected "
                    f"{tuple(target.shape)} (classes {self.class_start}…"
                    f"{self.class_start + self.num_local_classes - 1})"
                )
            with torch.no_grad():
                target.copy_(rows[name])

    def load_shard_states(self, shard_states: Iterable[Mapping]) -> None:
        """Restore from the shard states of a run with any world size."""
        self.load_class_rows(reshard(shard_states, self.class_start, self.num_local_classes))
