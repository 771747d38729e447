"""Closed-set identification: rank-k accuracy of probes searched against a gallery.

Split: among identities with at least two images, `gallery_per_identity` seeded images go to the
gallery and the rest are probes, so every probe has a mate (closed set). Identities with a single
image join the gallery as distractors (unless disabled). An identity's score for a probe is its
best cosine similarity over its gallery images; the probe's rank is 1 + the number of other
identities scoring at least as high as the true one (ties count against the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from facetrain.pipeline.eval.cluster import identity_of
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable
from facetrain.pipeline.eval.metrics import l2_normalise

DEFAULT_RANKS = (1, 5)
PROBE_CHUNK = 1024


def split_gallery_probe(
    labels: Sequence[str], gallery_per_identity: int = 1, seed: int = 0, distractors: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery indices, probe indices)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    gallery, probes = [], []
    for name in np.unique(labels):
        members = np.flatnonzero(labels == name)
        if members.size <= gallery_per_identity:
            if distractors:
                gallery.extend(members)
            continue
        chosen = rng.permutation(members)
        gallery.extend(chosen[:gallery_per_identity])
        probes.extend(chosen[gallery_per_identity:])
    return np.sort(np.asarray(gallery, dtype=np.int64)), np.sort(np.asarray(probes, dtype=np.int64))


def probe_ranks(
    gallery_embeddings: np.ndarray,
    gallery_labels: Sequence[str],
    probe_embeddings: np.ndarray,
    probe_labels: Sequence[str],
) -> np.ndarray:
    """The 1-based rank of each probe's true identity among the gallery identities."""
    gallery_labels, probe_labels = np.asarray(gallery_labels), np.asarray(probe_labels)
    names, gallery_codes = np.unique(gallery_labels, return_inverse=True)
    missing = sorted(set(probe_labels) - set(names))
    if missing:
        raise ValueError(
            f"closed-set identification: probe identity {missing[0]!r} has no gallery image"
        )
    probe_codes = np.searchsorted(names, probe_labels)
    order = np.argsort(gallery_codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(gallery_codes[order]) != 0])
    gallery_unit = l2_normalise(gallery_embeddings)[order]
    probe_unit = l2_normalise(probe_embeddings)
    ranks = np.empty(len(probe_labels), dtype=np.int64)
    for start in range(0, len(probe_labels), PROBE_CHUNK):
        stop = start + PROBE_CHUNK
        similarities = probe_unit[start:stop] @ gallery_unit.T
        per_identity = np.maximum.reduceat(similarities, starts, axis=1)  # [chunk, identities]
        rows = np.arange(per_identity.shape[0])
        true_scores = per_identity[rows, probe_codes[start:stop]]
        at_least_as_high = (per_identity >= true_scores[:, None]).sum(axis=1)
        ranks[start:stop] = at_least_as_high  # counts the true identity itself: rank 1 = no rival
    return ranks


def evaluate_identification(
    table: EmbeddingTable,
    ranks: Sequence[int] = DEFAULT_RANKS,
    gallery_per_identity: int = 1,
    distractors: bool = True,
    seed: int = 0,
) -> dict:
    labels = np.asarray([identity_of(key) for key in table.keys])
    gallery, probes = split_gallery_probe(labels, gallery_per_identity, seed, distractors)
    if probes.size == 0:
        raise ValueError(
            f"identification needs identities with more than {gallery_per_identity} image(s); found none"
        )
    probe_rank = probe_ranks(
        table.embeddings[gallery], labels[gallery], table.embeddings[probes], labels[probes]
    )
    summary = {f"rank{k}": float(np.mean(probe_rank <= k)) for k in ranks}
    summary.update(
        probes=int(probes.size),
        gallery_images=int(gallery.size),
        gallery_identities=int(np.unique(labels[gallery]).size),
        gallery_per_identity=gallery_per_identity,
        distractors=distractors,
        mean_rank=float(probe_rank.mean()),
    )
    return summary
