"""Verification pair lists: LFW `pairs.txt` files and the folds of the 10-fold protocol.

Header semantics (the first line):
- `F N` (View 2, `pairs.txt`): F folds, each N same-person lines then N different-person lines.
- `N` (View 1, `pairsDevTrain.txt` / `pairsDevTest.txt`): N same lines then N different lines,
  one block. Contiguous folds of such a file would hold one class each, so its folds for
  cross-validation are stratified: the k-th tenth of the same lines with the k-th tenth of the
  different lines.

Line kinds: `name i j` (same person, images i and j) and `name1 i name2 j` (different people).
Image numbers are 1-based and written with 4 digits in file names:
`Aaron_Peirsol 1` -> `Aaron_Peirsol/Aaron_Peirsol_0001.jpg` (the key, relative to the images root).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_FOLDS = 10


@dataclass(frozen=True)
class PairList:
    """Pairs of image keys with their truth and the fold each pair belongs to."""

    keys_a: tuple[str, ...]
    keys_b: tuple[str, ...]
    is_same: np.ndarray  # [P] bool
    folds: np.ndarray  # [P] int, fold index of each pair
    source: str = "pairs"

    def __len__(self) -> int:
        return len(self.keys_a)

    def subset(self, keep: np.ndarray) -> PairList:
        keep = np.asarray(keep, dtype=bool)
        return PairList(
            keys_a=tuple(k for k, kept in zip(self.keys_a, keep, strict=True) if kept),
            keys_b=tuple(k for k, kept in zip(self.keys_b, keep, strict=True) if kept),
            is_same=self.is_same[keep],
            folds=self.folds[keep],
            source=self.source,
        )

    def unique_keys(self) -> list[str]:
        """Every key once, in first-seen order (the images to embed)."""
        return list(dict.fromkeys(self.keys_a + self.keys_b))


def image_key(name: str, number: int, extension: str = ".jpg") -> str:
    return f"{name}/{name}_{number:04d}{extension}"


def read_pairs(path: str | Path, extension: str = ".jpg", n_folds: int = DEFAULT_FOLDS) -> PairList:
    """Parse an LFW pairs file; errors name the file, the line and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path}: not found")
    lines = [(number, line.split()) for number, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(number, fields) for number, fields in lines if fields]
    if not lines:
        raise ValueError(f"pairs file {path}: empty; expected a header like '10 300' or '500'")
    header_line, header = lines[0]
    if not (1 <= len(header) <= 2 and all(field.isdigit() for field in header)):
        raise ValueError(
            f"pairs file {path}: line {header_line}: expected a header 'folds pairs_per_fold' "
            f"(e.g. '10 300') or 'pairs_per_class' (e.g. '500'), got {' '.join(header)!r}"
        )
    num_blocks, per_class = (1, int(header[0])) if len(header) == 1 else map(int, header)
    body = lines[1:]
    expected = num_blocks * 2 * per_class
    if len(body) != expected:
        raise ValueError(
            f"pairs file {path}: header {' '.join(header)!r} promises {expected} pair lines, "
            f"found {len(body)}"
        )

    keys_a, keys_b, is_same = [], [], []
    for index, (number, fields) in enumerate(body):
        expect_same = (index // per_class) % 2 == 0
        try:
            if len(fields) == 3:
                name, first, second = fields
                pair = (
                    image_key(name, int(first), extension),
                    image_key(name, int(second), extension),
                )
                same = True
            elif len(fields) == 4:
                name_a, first, name_b, second = fields
                pair = (
                    image_key(name_a, int(first), extension),
                    image_key(name_b, int(second), extension),
                )
                same = False
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"pairs file {path}: line {number}: expected 'name i j' or 'name1 i name2 j' "
                f"with integer image numbers, got {' '.join(fields)!r}"
            ) from None
        if same != expect_same:
            kind = "same-person 'name i j'" if expect_same else "different-person 'name1 i name2 j'"
            raise ValueError(
                f"pairs file {path}: line {number}: header {' '.join(header)!r} puts a {kind} "
                f"line here, got {' '.join(fields)!r}"
            )
        keys_a.append(pair[0])
        keys_b.append(pair[1])
        is_same.append(same)

    is_same_array = np.asarray(is_same, dtype=bool)
    if num_blocks > 1:
        folds = np.arange(len(body)) // (2 * per_class)
    else:
        folds = stratified_folds(is_same_array, n_folds)
    return PairList(tuple(keys_a), tuple(keys_b), is_same_array, folds, source=str(path))


def stratified_folds(is_same: np.ndarray, n_folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """Fold k = the k-th contiguous n_folds-th of the same pairs plus that of the different pairs."""
    is_same = np.asarray(is_same, dtype=bool)
    folds = np.empty(is_same.size, dtype=np.int64)
    for mask in (is_same, ~is_same):
        count = int(mask.sum())
        folds[mask] = np.arange(count) * n_folds // max(count, 1)
    return folds


def contiguous_folds(is_same: np.ndarray, n_folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """insightface's KFold(shuffle=False) folds; stratified instead if one would hold one class."""
    is_same = np.asarray(is_same, dtype=bool)
    folds = np.arange(is_same.size) * n_folds // max(is_same.size, 1)
    for fold in range(n_folds):
        in_fold = is_same[folds == fold]
        if in_fold.size and (in_fold.all() or not in_fold.any()):
            return stratified_folds(is_same, n_folds)
    return folds
