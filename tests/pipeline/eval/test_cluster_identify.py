"""Clustering metrics vs scikit-learn and brute force; rank-k identification vs brute force."""

import itertools

import numpy as np
import pytest
from facetrain.pipeline.eval import EmbeddingTable, evaluate_clustering, evaluate_identification
from facetrain.pipeline.eval.cluster import (
    clusters_at,
    cosine_linkage,
    normalized_mutual_information,
    pairwise_precision_recall_f1,
)
from facetrain.pipeline.eval.identify import probe_ranks, split_gallery_probe
from sklearn.metrics import normalized_mutual_info_score


def brute_pairwise(true_labels, predicted_labels):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(true_labels)), 2):
        same_true = true_labels[i] == true_labels[j]
        same_predicted = predicted_labels[i] == predicted_labels[j]
        tp += same_true and same_predicted
        fp += same_predicted and not same_true
        fn += same_true and not same_predicted
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return precision, recall, 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustering_metrics_match_references(seed):
    rng = np.random.default_rng(seed)
    true_labels = rng.integers(0, 6, 80)
    predicted_labels = np.where(rng.random(80) < 0.7, true_labels, rng.integers(0, 9, 80))
    got = pairwise_precision_recall_f1(true_labels, predicted_labels)
    precision, recall, f1 = brute_pairwise(true_labels, predicted_labels)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1))
    assert normalized_mutual_information(true_labels, predicted_labels) == pytest.approx(
        normalized_mutual_info_score(true_labels, predicted_labels)
    )
    # String labels (identity names) and edge cases agree with scikit-learn too.
    names = np.asarray([f"id{label}" for label in true_labels])
    assert normalized_mutual_information(names, np.zeros(80)) == pytest.approx(
        normalized_mutual_info_score(names, np.zeros(80))
    )
    assert normalized_mutual_information(np.zeros(5), np.zeros(5)) == normalized_mutual_info_score(
        np.zeros(5), np.zeros(5)
    )


def blobs(rng, identities, per_identity, spread, dim=16, prefix="P"):
    centres = rng.normal(size=(identities, dim))
    keys, vectors = [], []
    for person in range(identities):
        for number in range(per_identity):
            keys.append(f"{prefix}{person}/{prefix}{person}_{number:04d}.jpg")
            vectors.append(centres[person] + spread * rng.normal(size=dim))
    return EmbeddingTable(keys, np.asarray(vectors, dtype=np.float32))


def test_agglomerative_clustering_matches_scikit_learn():
    from sklearn.cluster import AgglomerativeClustering

    rng = np.random.default_rng(3)
    table = blobs(rng, 8, 5, 0.6)
    ours = clusters_at(cosine_linkage(table.embeddings, "average"), 0.4)
    theirs = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=0.4
    ).fit_predict(table.embeddings.astype(np.float64))
    assert normalized_mutual_info_score(ours, theirs) == pytest.approx(1.0)


def test_separable_identities_cluster_perfectly_with_a_fitted_threshold():
    table = blobs(np.random.default_rng(4), 20, 4, 0.05)
    summary = evaluate_clustering(table)
    assert summary["threshold_source"].startswith("fitted")
    assert summary["fit_identities"] == 10 and summary["identities"] == 10  # disjoint halves
    assert summary["f1"] == 1.0 and summary["nmi"] == pytest.approx(1.0)
    assert summary["clusters"] == 10
    given = evaluate_clustering(table, threshold=1e-9)  # nothing merges: every image alone
    assert given["clusters"] == given["images"] == 80 and given["recall"] == 0.0


def brute_rank(gallery, gallery_labels, probe, probe_label):
    best = {}
    for vector, label in zip(gallery, gallery_labels, strict=True):
        score = float(vector @ probe / np.linalg.norm(vector) / np.linalg.norm(probe))
        best[label] = max(best.get(label, -np.inf), score)
    true = best[probe_label]
    return 1 + sum(score >= true for label, score in best.items() if label != probe_label)


def test_rank_k_matches_brute_force():
    rng = np.random.default_rng(5)
    table = blobs(rng, 12, 4, 1.0, dim=6)  # noisy: ranks spread out
    labels = np.asarray([key.split("/")[0] for key in table.keys])
    gallery, probes = split_gallery_probe(labels, gallery_per_identity=2, seed=0)
    ranks = probe_ranks(
        table.embeddings[gallery], labels[gallery], table.embeddings[probes], labels[probes]
    )
    expected = [
        brute_rank(table.embeddings[gallery], labels[gallery], table.embeddings[p], labels[p])
        for p in probes
    ]
    assert ranks.tolist() == expected
    assert len(set(expected)) > 2  # the premise: not all rank 1
    summary = evaluate_identification(table, ranks=(1, 5), gallery_per_identity=2)
    assert summary["rank1"] == pytest.approx(np.mean(np.asarray(expected) <= 1))
    assert summary["rank5"] == pytest.approx(np.mean(np.asarray(expected) <= 5))
    assert summary["probes"] == 24 and summary["gallery_identities"] == 12


def test_single_image_identities_are_gallery_distractors():
    rng = np.random.default_rng(6)
    table = blobs(rng, 5, 3, 0.01)
    loners = blobs(rng, 4, 1, 0.01, prefix="L")
    both = EmbeddingTable(
        table.keys + loners.keys, np.concatenate([table.embeddings, loners.embeddings])
    )
    with_distractors = evaluate_identification(both)
    without = evaluate_identification(both, distractors=False)
    assert with_distractors["gallery_identities"] == 9 and without["gallery_identities"] == 5
    assert with_distractors["probes"] == without["probes"] == 10
    assert with_distractors["rank1"] == 1.0
