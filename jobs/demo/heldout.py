"""Verification pairs over the identities `prep` held out of training.

The pairs come from the images prep accepted for the `val` split (manifest.parquet), so a
rejected or deduplicated image is never asked for. When every file follows LFW's naming
(`name/name_0003.jpg`) the pairs are also written as an LFW `pairs.txt`, which
`facetrain eval verify --pairs` reads back as is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from facetrain.jobs.demo.pairs import draw_pairs, format_pairs


@dataclass(frozen=True)
class HeldOutPairs:
    keys_a: tuple[str, ...]
    keys_b: tuple[str, ...]
    is_same: np.ndarray
    folds: np.ndarray
    identities: int
    images: int
    pairs_file: Path | None  # LFW-format copy, when the file names allow one

    def pair_list(self):
        from facetrain.pipeline.eval.pairs import PairList

        return PairList(
            self.keys_a, self.keys_b, self.is_same, self.folds, source="held-out identities"
        )


def heldout_sources(shards: str | Path, split: str = "val") -> dict[str, list[str]]:
    """identity -> its accepted source paths (relative to the images root), sorted."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest = pq.read_table(
        Path(shards) / "manifest.parquet", columns=["split", "identity", "source"]
    )
    rows = manifest.filter(pc.equal(manifest["split"], split)).to_pydict()
    sources: dict[str, list[str]] = defaultdict(list)
    for identity, source in zip(rows["identity"], rows["source"], strict=True):
        sources[identity].append(source)
    if not sources:
        raise ValueError(
            f"{shards}/manifest.parquet: no images in split {split!r}; was prep run with val_identities?"
        )
    return {identity: sorted(paths) for identity, paths in sorted(sources.items())}


def make_heldout_pairs(
    sources: dict[str, list[str]],
    folds: int,
    pairs_per_fold: int,
    seed: int,
    pairs_path: str | Path | None = None,
) -> HeldOutPairs:
    counts = {identity: len(paths) for identity, paths in sources.items()}
    possible_same = sum(count * (count - 1) // 2 for count in counts.values())
    # Real datasets hold out identities with few images: ask only for pairs that exist.
    pairs_per_fold = min(pairs_per_fold, possible_same // folds)
    if pairs_per_fold < 1:
        raise ValueError(
            f"held-out identities: {possible_same} same-identity pairs possible, fewer than "
            f"{folds} folds; hold out more identities (prep.val_identities) or fewer folds"
        )
    drawn = draw_pairs(counts, folds, pairs_per_fold, seed)
    keys_a = tuple(sources[name][number - 1] for name, number, _, _ in drawn)
    keys_b = tuple(sources[name][number - 1] for _, _, name, number in drawn)
    is_same = np.array([first == second for first, _, second, _ in drawn])
    fold_of = np.arange(len(drawn)) // (2 * pairs_per_fold)

    written = None
    lfw_named = all(
        key == f"{name}/{name}_{number:04d}{Path(key).suffix}"
        for (name, number, _, _), key in zip(drawn, keys_a, strict=True)
    ) and all(
        key == f"{name}/{name}_{number:04d}{Path(key).suffix}"
        for (_, _, name, number), key in zip(drawn, keys_b, strict=True)
    )
    if (
        pairs_path is not None
        and lfw_named
        and all(key.endswith(".jpg") for key in keys_a + keys_b)
    ):
        written = Path(pairs_path)
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(format_pairs(drawn, folds, pairs_per_fold))
    return HeldOutPairs(
        keys_a, keys_b, is_same, fold_of, identities=len(sources),
        images=sum(counts.values()), pairs_file=written,
    )  # fmt: skip
