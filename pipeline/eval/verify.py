"""Face verification: scores of pairs -> the figures the field reports (LFW protocol).

Embeddings in, a summary dict out (the `--json` contract of `facetrain eval verify`):
`accuracy`, `accuracy_std`, `auc`, `eer`, `threshold`, `tar_at_far`, `pairs`, `skipped_pairs`...
Pairs whose images could not be embedded are counted in `skipped_pairs` and listed in
`skipped`; they are left out of every figure, and `pairs` counts only the pairs scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from facetrain.pipeline.eval import metrics
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable
from facetrain.pipeline.eval.pairs import PairList


@dataclass(frozen=True)
class Verification:
    """The summary dict plus the per-pair scores it came from (for the ROC plot)."""

    summary: dict
    scores: np.ndarray
    is_same: np.ndarray

    def roc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return metrics.roc_curve(self.scores, self.is_same)


def summarise_scores(
    scores: np.ndarray,
    is_same: np.ndarray,
    folds: np.ndarray,
    fit_scores: np.ndarray | None = None,
    fit_is_same: np.ndarray | None = None,
) -> dict:
    """Accuracy (k-fold, or at a threshold fitted on other pairs), AUC, EER and TAR@FAR.

    Without `fit_scores`: each fold is scored at the threshold that maximises accuracy on the
    other folds; `threshold` is the mean of those. With them: one threshold is chosen on the fit
    pairs and applied to every pair here; `accuracy_std` is then the spread of the per-fold
    accuracies at that single threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    folds = np.asarray(folds)
    fpr, tpr, roc_thresholds = metrics.roc_curve(scores, is_same)
    num_negatives = int((~is_same).sum())

    if fit_scores is None:
        per_fold = metrics.kfold_accuracy(scores, is_same, folds)
        protocol = f"{np.unique(folds).size}-fold cross-validation"
        accuracy, threshold = per_fold.mean, float(per_fold.thresholds.mean())
        fold_accuracies, fold_thresholds = per_fold.accuracies, per_fold.thresholds
    else:
        threshold, _ = metrics.best_threshold(fit_scores, np.asarray(fit_is_same, dtype=bool))
        protocol = "threshold fitted on --fit-pairs"
        accuracy = metrics.accuracy_at(scores, is_same, threshold)
        fold_accuracies = np.asarray(
            [
                metrics.accuracy_at(scores[folds == f], is_same[folds == f], threshold)
                for f in np.unique(folds)
            ]
        )
        fold_thresholds = np.full(fold_accuracies.size, threshold)

    tar, threshold_at_far = {}, {}
    for far in metrics.far_levels(num_negatives):
        key = metrics.far_key(far)
        tar[key], operating_threshold = metrics.tar_at_far(fpr, tpr, roc_thresholds, far)
        # No threshold reaches that FAR with any true accept: +inf, which JSON cannot hold.
        threshold_at_far[key] = operating_threshold if np.isfinite(operating_threshold) else None

    return {
        "accuracy": float(accuracy),
        "accuracy_std": float(fold_accuracies.std()),
        "auc": metrics.auc(fpr, tpr),
        "eer": metrics.equal_error_rate(fpr, tpr),
        "threshold": float(threshold),
        "tar_at_far": tar,
        "threshold_at_far": threshold_at_far,
        "far_resolution": 1.0 / num_negatives,
        "protocol": protocol,
        "pairs": int(scores.size),
        "same_pairs": int(is_same.sum()),
        "different_pairs": num_negatives,
        "fold_accuracies": [float(a) for a in fold_accuracies],
        "fold_thresholds": [float(t) for t in fold_thresholds],
    }


def pair_scores(
    table: EmbeddingTable, pairs: PairList, failures: Mapping[str, str] | None = None
) -> tuple[np.ndarray, PairList, list[dict]]:
    """Cosine scores of the pairs whose two keys have embeddings; the others as skipped records."""
    failures = failures or {}
    usable = np.asarray(
        [a in table and b in table for a, b in zip(pairs.keys_a, pairs.keys_b, strict=True)],
        dtype=bool,
    )
    skipped = []
    for index in np.flatnonzero(~usable):
        key_a, key_b = pairs.keys_a[index], pairs.keys_b[index]
        missing = [key for key in (key_a, key_b) if key not in table]
        reason = "; ".join(
            f"{key}: {failures.get(key, 'no embedding for this key')}" for key in missing
        )
        skipped.append(
            {"a": key_a, "b": key_b, "same": bool(pairs.is_same[index]), "reason": reason}
        )
    scored = pairs.subset(usable)
    scores = metrics.cosine_scores(table.rows(scored.keys_a), table.rows(scored.keys_b))
    return scores, scored, skipped


def verify_embeddings(
    table: EmbeddingTable,
    pairs: PairList,
    fit_pairs: PairList | None = None,
    failures: Mapping[str, str] | None = None,
) -> Verification:
    """Verification figures of `pairs` (threshold from `fit_pairs` when given, else k-fold)."""
    scores, scored, skipped = pair_scores(table, pairs, failures)
    if scores.size == 0:
        first = skipped[0]["reason"] if skipped else "the pair list is empty"
        raise ValueError(f"{pairs.source}: no pair could be scored (first problem: {first})")
    fit_scores = fit_is_same = None
    fit_skipped: list[dict] = []
    if fit_pairs is not None:
        fit_scores, fit_scored, fit_skipped = pair_scores(table, fit_pairs, failures)
        if fit_scores.size == 0:
            raise ValueError(f"{fit_pairs.source}: no fit pair could be scored")
        fit_is_same = fit_scored.is_same
    summary = summarise_scores(scores, scored.is_same, scored.folds, fit_scores, fit_is_same)
    summary.update(
        pairs_listed=len(pairs),
        skipped_pairs=len(skipped),
        skipped=skipped,
        source=pairs.source,
    )
    if fit_pairs is not None:
        summary.update(
            fit_source=fit_pairs.source,
            fit_pairs=int(fit_scores.size),
            fit_skipped_pairs=len(fit_skipped),
            fit_skipped=fit_skipped,
        )
    return Verification(summary, scores, scored.is_same)
