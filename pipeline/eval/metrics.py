"""Verification maths on similarity scores: thresholds, k-fold accuracy, ROC, AUC, EER, TAR@FAR.

Pure numpy. Convention throughout: a pair is predicted "same" when `score >= threshold`;
higher scores mean more similar (cosine similarity of L2-normalised embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Reported always; lower levels are added while the negatives can resolve them (see far_levels).
BASE_FAR_LEVELS = (1e-2, 1e-3)
LOWEST_FAR_EXPONENT = 6


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero instead of becoming NaN)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def cosine_scores(embeddings_a: np.ndarray, embeddings_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    return np.einsum("nd,nd->n", l2_normalise(embeddings_a), l2_normalise(embeddings_b))


def accuracy_at(scores: np.ndarray, is_same: np.ndarray, threshold: float) -> float:
    return float(np.mean((np.asarray(scores) >= threshold) == np.asarray(is_same, dtype=bool)))


def best_threshold(scores: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises accuracy on these pairs, and that accuracy.

    Exact, not a grid: every cut between two consecutive distinct scores is a candidate, placed
    at their midpoint so that it generalises to unseen scores; plus one cut below all scores and
    one above. Ties between equally accurate cuts go to the lowest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    if scores.size == 0:
        raise ValueError("best_threshold: no pairs to choose a threshold on")
    distinct, inverse = np.unique(scores, return_inverse=True)
    same_per_value = np.bincount(inverse, weights=is_same, minlength=distinct.size)
    diff_per_value = np.bincount(inverse, weights=~is_same, minlength=distinct.size)
    # Cut k (0..m) predicts "same" for distinct[k:]; correct = same at/above + different below.
    same_at_or_above = np.concatenate([np.cumsum(same_per_value[::-1])[::-1], [0.0]])
    diff_below = np.concatenate([[0.0], np.cumsum(diff_per_value)])
    correct = same_at_or_above + diff_below
    cut = int(np.argmax(correct))
    if cut == 0:
        threshold = distinct[0] - 1.0
    elif cut == distinct.size:
        threshold = distinct[-1] + 1.0
    else:
        threshold = 0.5 * (distinct[cut - 1] + distinct[cut])
    return float(threshold), float(correct[cut] / scores.size)


@dataclass(frozen=True)
class FoldAccuracy:
    accuracies: np.ndarray  # [n_folds], accuracy of each held-out fold
    thresholds: np.ndarray  # [n_folds], threshold chosen on the other folds, applied to this one

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        return float(self.accuracies.std())


def kfold_accuracy(scores: np.ndarray, is_same: np.ndarray, folds: np.ndarray) -> FoldAccuracy:
    """LFW protocol: each fold is scored at the threshold chosen on all the other folds only."""
    scores = np.asarray(scores, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError(f"kfold_accuracy: need at least 2 folds, got {fold_ids.size}")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        held_out = folds == fold
        threshold, _ = best_threshold(scores[~held_out], is_same[~held_out])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(scores[held_out], is_same[held_out], threshold))
    return FoldAccuracy(np.asarray(accuracies), np.asarray(thresholds))


def roc_curve(scores: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) to (1, 1).

    thresholds[i] is the lowest score predicted "same" at point i (+inf at the (0, 0) start).
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    positives, negatives = int(is_same.sum()), int((~is_same).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"roc_curve: need both same and different pairs, got {positives} same, {negatives} different"
        )
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_same = scores[order], is_same[order]
    # The last index of each run of equal scores: tied pairs enter the curve together.
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_accepts = np.cumsum(sorted_same)[last_of_value]
    false_accepts = (last_of_value + 1) - true_accepts
    fpr = np.r_[0.0, false_accepts / negatives]
    tpr = np.r_[0.0, true_accepts / positives]
    thresholds = np.r_[np.inf, sorted_scores[last_of_value]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoidal rule (ties contribute half, as for ranking)."""
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where false accepts equal false rejects, linearly interpolated along the ROC."""
    fnr = 1.0 - tpr
    gap = fpr - fnr  # rises from -1 at (0, 0) to +1 at (1, 1)
    crossing = int(np.argmax(gap >= 0))
    if gap[crossing] == 0 or crossing == 0:
        return float(fpr[crossing])
    before, after = crossing - 1, crossing
    weight = -gap[before] / (gap[after] - gap[before])
    return float(fpr[before] + weight * (fpr[after] - fpr[before]))


def far_levels(num_negatives: int) -> list[float]:
    """1e-2 and 1e-3 always, then each lower power of ten that at least one false accept can reach."""
    levels = list(BASE_FAR_LEVELS)
    exponent = (
        4  # integer powers: repeated /10 drifts (1e-6 would come out as 1.0000000000000002e-06)
    )
    while exponent <= LOWEST_FAR_EXPONENT and num_negatives >= 10**exponent:
        levels.append(float(f"1e-{exponent}"))
        exponent += 1
    return levels


def tar_at_far(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, far: float
) -> tuple[float, float]:
    """(TAR, threshold) at the operating point with the most true accepts whose FAR <= far.

    No interpolation: the reported rate is one a real threshold achieves on these pairs.
    """
    allowed = np.flatnonzero(fpr <= far + 1e-12)
    best = allowed[np.argmax(tpr[allowed])]
    return float(tpr[best]), float(thresholds[best])


def far_key(far: float) -> str:
    """1e-2 -> "0.01", 1e-5 -> "1e-05": the JSON key of a FAR level."""
    return f"{far:g}"
