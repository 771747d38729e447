"""The dedupe and filter rules as pure, vectorised functions over scanned rows.

Two kinds, because of where they can run:
- per identity (`identity_rejects`): duplicates within an identity, small faces, the cap.
  They need only one identity's rows, so the process tasks apply them before decoding (no
  pixel work on a face that will be dropped) and the planner applies them again, identically.
- across identities (`conflicting_rows`): the same bytes under several identities. This needs
  every row with that hash, so the planner runs it over hash buckets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from facetrain.data_prep.config import PrepConfig

REASON_DUPLICATE = "duplicate within identity"
REASON_CONFLICT = "label conflict (same image under several identities)"
REASON_SMALL_FACE = "face smaller than min_face_size"
REASON_OVER_CAP = "over max_images for identity"
REASON_FEW_IMAGES = "identity below min_images"

KEEP, DUPLICATE, SMALL, OVER_CAP = 0, 1, 2, 3
IDENTITY_REASONS = {
    DUPLICATE: REASON_DUPLICATE,
    SMALL: REASON_SMALL_FACE,
    OVER_CAP: REASON_OVER_CAP,
}


def identity_rejects(
    codes: np.ndarray, sha1: pa.Array | pa.ChunkedArray, face_size: np.ndarray, config: PrepConfig
) -> np.ndarray:
    """KEEP / DUPLICATE / SMALL / OVER_CAP per row, for rows grouped by identity code (each
    identity's rows contiguous, in path order; the first copy of an image is kept).

    The cap keeps the `max_images` smallest content hashes: deterministic and blind to names.
    It is chosen before label conflicts are removed (they need the whole dataset), so an
    identity that loses a capped image to a conflict keeps one fewer.
    """
    count = len(codes)
    verdict = np.full(count, KEEP, dtype=np.int8)
    if count == 0:
        return verdict
    low, middle, high = hash_words(sha1)
    order = np.lexsort((np.arange(count), low, middle, high, codes))  # first copy first
    same = np.r_[
        False,
        (codes[order][1:] == codes[order][:-1])
        & (high[order][1:] == high[order][:-1])
        & (middle[order][1:] == middle[order][:-1])
        & (low[order][1:] == low[order][:-1]),
    ]
    verdict[order[same]] = DUPLICATE
    small = np.nan_to_num(face_size.astype(np.float64), nan=np.inf) < config.min_face_size
    verdict[(verdict == KEEP) & small] = SMALL
    if config.max_images is not None:
        candidates = np.flatnonzero(verdict == KEEP)
        ranked = candidates[
            np.lexsort((low[candidates], middle[candidates], high[candidates], codes[candidates]))
        ]
        verdict[ranked[rank_in_group(codes[ranked]) >= config.max_images]] = OVER_CAP
    return verdict


def conflicting_rows(
    words: tuple[np.ndarray, np.ndarray, np.ndarray], codes: np.ndarray
) -> np.ndarray:
    """Mask of rows whose hash appears under more than one identity code (every copy)."""
    low, middle, high = words
    count = len(codes)
    conflict = np.zeros(count, dtype=bool)
    if count == 0:
        return conflict
    order = np.lexsort((codes, low, middle, high))
    low, middle, high, codes = low[order], middle[order], high[order], codes[order]
    same_hash = np.r_[
        False, (low[1:] == low[:-1]) & (middle[1:] == middle[:-1]) & (high[1:] == high[:-1])
    ]
    group = np.cumsum(~same_hash) - 1  # one group per distinct digest
    other_code = same_hash & np.r_[False, codes[1:] != codes[:-1]]
    group_conflicts = np.zeros(int(group[-1]) + 1, dtype=bool)
    group_conflicts[group[other_code]] = True
    conflict[order] = group_conflicts[group]
    return conflict


def rank_in_group(sorted_codes: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal codes (the input is grouped by code)."""
    if len(sorted_codes) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_codes)])
    return np.arange(len(sorted_codes)) - np.repeat(starts, lengths)


def hash_words(sha1: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, middle, high) big-endian words of each 20-byte digest: integer sort keys."""
    array = sha1.combine_chunks() if isinstance(sha1, pa.ChunkedArray) else sha1
    if array.null_count:
        raise ValueError("hash_words: rows without a content hash")
    digests = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    digests = digests[array.offset * 20 :][: len(array) * 20].reshape(-1, 20)
    high = digests[:, :8].copy().view(">u8").ravel()
    middle = digests[:, 8:16].copy().view(">u8").ravel()
    low = digests[:, 16:].copy().view(">u4").ravel()
    return low, middle, high
