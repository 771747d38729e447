"""Verification pairs in LFW's `pairs.txt` format, drawn from an identity-per-folder tree.

First line `folds pairs_per_fold`; then, per fold, `pairs_per_fold` same-identity lines
`name i j` followed by `pairs_per_fold` different-identity lines `name1 i name2 j`, with image
numbers counted from 1 (file `name/name_000i.jpg`), as in LFW View 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def draw_pairs(
    counts: Mapping[str, int], folds: int, pairs_per_fold: int, seed: int = 0
) -> list[tuple[str, int, str, int]]:
    """`folds * pairs_per_fold` same then as many different pairs per fold, none repeated.

    `counts` maps identity name -> number of images (numbered 1..count).
    """
    names = sorted(counts)
    pairable = [name for name in names if counts[name] >= 2]
    if not pairable or len(names) < 2:
        raise ValueError(
            f"pairs: need an identity with >= 2 images and >= 2 identities, got {len(names)} "
            f"identities, {len(pairable)} with two images or more"
        )
    possible_same = sum(counts[name] * (counts[name] - 1) // 2 for name in pairable)
    wanted = folds * pairs_per_fold
    if possible_same < wanted:
        raise ValueError(f"pairs: {wanted} same-identity pairs wanted, only {possible_same} exist")
    rng = np.random.default_rng([seed, 0x9A125])
    seen: set[tuple[str, int, str, int]] = set()

    def fresh(draw) -> tuple[str, int, str, int]:
        while True:
            pair = draw()
            key = min(pair, (pair[2], pair[3], pair[0], pair[1]))
            if key not in seen:
                seen.add(key)
                return pair

    def same() -> tuple[str, int, str, int]:
        name = pairable[rng.integers(len(pairable))]
        first, second = sorted(rng.choice(counts[name], 2, replace=False) + 1)
        return name, int(first), name, int(second)

    def different() -> tuple[str, int, str, int]:
        first, second = rng.choice(len(names), 2, replace=False)
        a, b = names[first], names[second]
        return a, int(rng.integers(counts[a]) + 1), b, int(rng.integers(counts[b]) + 1)

    pairs = []
    for _ in range(folds):
        pairs += [fresh(same) for _ in range(pairs_per_fold)]
        pairs += [fresh(different) for _ in range(pairs_per_fold)]
    return pairs


def format_pairs(pairs: list[tuple[str, int, str, int]], folds: int, pairs_per_fold: int) -> str:
    lines = [f"{folds}\t{pairs_per_fold}"]
    for first, i, second, j in pairs:
        lines.append(f"{first}\t{i}\t{j}" if first == second else f"{first}\t{i}\t{second}\t{j}")
    return "\n".join(lines) + "\n"


def write_pairs(
    path: str | Path,
    counts: Mapping[str, int],
    folds: int = 10,
    pairs_per_fold: int = 30,
    seed: int = 0,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        format_pairs(draw_pairs(counts, folds, pairs_per_fold, seed), folds, pairs_per_fold)
    )
    return path
