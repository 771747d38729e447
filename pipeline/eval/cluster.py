"""Face clustering (FaceNet's second use): agglomerative clustering on cosine distance.

The merge threshold is given, or chosen on a labelled split: identities are divided in two
disjoint halves, the threshold that maximises pairwise F1 on the fit half is applied to the
other half, whose figures are reported. Metrics: pairwise precision / recall / F1 (over all
pairs of images: "same cluster" against "same identity") and NMI (arithmetic normalisation,
as scikit-learn's default).
"""

from __future__ import annotations

import numpy as np
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable

LINKAGES = ("average", "complete", "single")
MAX_CANDIDATE_THRESHOLDS = 256


def identity_of(key: str) -> str:
    """ROOT/<identity>/<image>: the first folder of a key names the identity."""
    parts = key.replace("\\", "/").split("/")
    if len(parts) < 2:
        raise ValueError(
            f"key {key!r}: expected <identity>/<image>, the identity folder is missing"
        )
    return parts[0]


def _contingency(true_labels: np.ndarray, predicted_labels: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) label combinations, as a flat array of non-zero cells."""
    _, true_codes = np.unique(true_labels, return_inverse=True)
    _, predicted_codes = np.unique(predicted_labels, return_inverse=True)
    combined = true_codes.astype(np.int64) * (predicted_codes.max() + 1) + predicted_codes
    _, cells = np.unique(combined, return_counts=True)
    return cells


def _pairs_within(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pairwise_precision_recall_f1(true_labels, predicted_labels) -> dict[str, float]:
    """Over every pair of items: precision = same identity among same-cluster pairs, etc."""
    true_labels, predicted_labels = np.asarray(true_labels), np.asarray(predicted_labels)
    both = _pairs_within(_contingency(true_labels, predicted_labels))
    same_cluster = _pairs_within(np.unique(predicted_labels, return_counts=True)[1])
    same_identity = _pairs_within(np.unique(true_labels, return_counts=True)[1])
    precision = both / same_cluster if same_cluster else 1.0
    recall = both / same_identity if same_identity else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _entropy(counts: np.ndarray) -> float:
    probabilities = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    return float(-(probabilities * np.log(probabilities)).sum())


def normalized_mutual_information(true_labels, predicted_labels) -> float:
    true_labels, predicted_labels = np.asarray(true_labels), np.asarray(predicted_labels)
    total = true_labels.size
    _, true_codes, true_counts = np.unique(true_labels, return_inverse=True, return_counts=True)
    _, predicted_codes, predicted_counts = np.unique(
        predicted_labels, return_inverse=True, return_counts=True
    )
    entropy_true, entropy_predicted = _entropy(true_counts), _entropy(predicted_counts)
    if entropy_true == 0 and entropy_predicted == 0:
        return 1.0  # one identity and one cluster: the labelling is perfect
    if entropy_true == 0 or entropy_predicted == 0:
        return 0.0
    combined = true_codes.astype(np.int64) * predicted_counts.size + predicted_codes
    cells, cell_counts = np.unique(combined, return_counts=True)
    joint = cell_counts / total
    marginal_true = true_counts[cells // predicted_counts.size] / total
    marginal_predicted = predicted_counts[cells % predicted_counts.size] / total
    mutual_information = float((joint * np.log(joint / (marginal_true * marginal_predicted))).sum())
    return max(0.0, mutual_information / ((entropy_true + entropy_predicted) / 2))


def cosine_linkage(embeddings: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy's linkage matrix of agglomerative clustering on cosine distance (1 - cos)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    if method not in LINKAGES:
        raise ValueError(f"linkage {method!r}: expected one of {', '.join(LINKAGES)}")
    if len(embeddings) < 2:
        raise ValueError(f"clustering needs at least 2 images, got {len(embeddings)}")
    distances = np.clip(pdist(np.asarray(embeddings, dtype=np.float64), "cosine"), 0.0, 2.0)
    return linkage(distances, method=method)


def clusters_at(linkage_matrix: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels when merging stops at cosine distance `threshold` (merges at <= it happen)."""
    from scipy.cluster.hierarchy import fcluster

    return fcluster(linkage_matrix, t=threshold, criterion="distance")


def fit_threshold(linkage_matrix: np.ndarray, true_labels) -> tuple[float, float]:
    """(threshold, F1): the cut between merge heights that maximises pairwise F1 on these labels."""
    heights = np.unique(linkage_matrix[:, 2])
    cuts = np.r_[0.0, (heights[:-1] + heights[1:]) / 2, heights[-1] + 1e-6]
    if cuts.size > MAX_CANDIDATE_THRESHOLDS:
        cuts = np.unique(np.quantile(cuts, np.linspace(0, 1, MAX_CANDIDATE_THRESHOLDS)))
    f1_per_cut = [
        pairwise_precision_recall_f1(true_labels, clusters_at(linkage_matrix, cut))["f1"]
        for cut in cuts
    ]
    best = int(np.argmax(f1_per_cut))
    return float(cuts[best]), float(f1_per_cut[best])


def select_identities(
    labels: np.ndarray, min_images: int = 1, max_identities: int | None = None, seed: int = 0
) -> np.ndarray:
    """Mask of items whose identity has >= min_images items; at most max_identities (seeded)."""
    names, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts >= min_images)
    if max_identities is not None and eligible.size > max_identities:
        eligible = np.sort(
            np.random.default_rng(seed).choice(eligible, max_identities, replace=False)
        )
    return np.isin(codes, eligible)


def split_identities(labels: np.ndarray, fit_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Mask of the items in the fit split: a seeded `fit_fraction` of the identities, disjoint."""
    names, codes = np.unique(labels, return_inverse=True)
    if names.size < 2:
        raise ValueError(f"a labelled split needs at least 2 identities, got {names.size}")
    order = np.random.default_rng(seed).permutation(names.size)
    fit_count = min(max(1, round(names.size * fit_fraction)), names.size - 1)
    return np.isin(codes, order[:fit_count])


def evaluate_clustering(
    table: EmbeddingTable,
    threshold: float | None = None,
    method: str = "average",
    fit_fraction: float = 0.5,
    min_images: int = 2,
    max_identities: int | None = None,
    seed: int = 0,
) -> dict:
    """Cluster the table's embeddings (identity = first folder of the key) and score the result."""
    labels = np.asarray([identity_of(key) for key in table.keys])
    selected = select_identities(labels, min_images, max_identities, seed)
    embeddings, labels = table.embeddings[selected], labels[selected]
    summary: dict = {"linkage": method, "min_images": min_images}
    if threshold is None:
        in_fit = split_identities(labels, fit_fraction, seed)
        threshold, fit_f1 = fit_threshold(
            cosine_linkage(embeddings[in_fit], method), labels[in_fit]
        )
        summary.update(
            threshold_source="fitted on a labelled split (disjoint identities)",
            fit_images=int(in_fit.sum()),
            fit_identities=int(np.unique(labels[in_fit]).size),
            fit_f1=fit_f1,
        )
        embeddings, labels = embeddings[~in_fit], labels[~in_fit]
    else:
        summary["threshold_source"] = "given"
    predicted = clusters_at(cosine_linkage(embeddings, method), threshold)
    summary.update(
        threshold=float(threshold),
        images=int(labels.size),
        identities=int(np.unique(labels).size),
        clusters=int(np.unique(predicted).size),
        **pairwise_precision_recall_f1(labels, predicted),
        nmi=normalized_mutual_information(labels, predicted),
    )
    return summary
