"""Verification maths against plain brute-force loops and scikit-learn."""

import numpy as np
import pytest
from facetrain.pipeline.eval import metrics
from facetrain.pipeline.eval.verify import summarise_scores
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve


def brute_best_threshold(scores, is_same):
    """Every midpoint between distinct scores (and one cut outside), tried one by one."""
    values = sorted(set(float(s) for s in scores))
    cuts = (
        [values[0] - 1.0]
        + [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
        + [values[-1] + 1.0]
    )
    best_cut, best_correct = None, -1
    for cut in cuts:  # ascending, strict '>' keeps the lowest of equally good cuts
        correct = sum((s >= cut) == bool(same) for s, same in zip(scores, is_same, strict=True))
        if correct > best_correct:
            best_cut, best_correct = cut, correct
    return best_cut, best_correct / len(scores)


def brute_kfold(scores, is_same, folds):
    accuracies = []
    for fold in sorted(set(folds.tolist())):
        train = [i for i in range(len(scores)) if folds[i] != fold]
        test = [i for i in range(len(scores)) if folds[i] == fold]
        cut, _ = brute_best_threshold(scores[train], is_same[train])
        accuracies.append(sum((scores[i] >= cut) == is_same[i] for i in test) / len(test))
    return np.asarray(accuracies)


def synthetic_pairs(rng, count, separation):
    """Scores of `count` same and `count` different pairs; larger separation = easier."""
    same = rng.normal(separation, 1.0, count)
    different = rng.normal(0.0, 1.0, count)
    scores = np.tanh(np.r_[same, different] / 3)
    is_same = np.r_[np.ones(count, bool), np.zeros(count, bool)]
    folds = np.r_[np.arange(count) * 10 // count, np.arange(count) * 10 // count]
    return scores, is_same, folds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores, is_same, _ = synthetic_pairs(rng, 60, 1.0)
    scores = np.round(scores, 2)  # ties between pairs and between equally good cuts
    threshold, accuracy = metrics.best_threshold(scores, is_same)
    expected_threshold, expected_accuracy = brute_best_threshold(scores, is_same)
    assert threshold == pytest.approx(expected_threshold)
    assert accuracy == pytest.approx(expected_accuracy)


@pytest.mark.parametrize("seed", [0, 1])
def test_kfold_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores, is_same, folds = synthetic_pairs(rng, 100, 1.5)
    result = metrics.kfold_accuracy(scores, is_same, folds)
    np.testing.assert_allclose(result.accuracies, brute_kfold(scores, is_same, folds))


def test_perfectly_separable_embeddings_score_100_percent():
    rng = np.random.default_rng(0)
    identities = rng.normal(size=(40, 16))
    # Same pairs: two noisy views of one identity; different pairs: orthogonal-ish identities.
    view_a = identities + 0.05 * rng.normal(size=identities.shape)
    view_b = identities + 0.05 * rng.normal(size=identities.shape)
    same_scores = metrics.cosine_scores(view_a, view_b)
    different_scores = metrics.cosine_scores(view_a, np.roll(view_b, 1, axis=0))
    assert same_scores.min() > different_scores.max()  # the premise: separable
    scores = np.r_[same_scores, different_scores]
    is_same = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    folds = np.r_[np.arange(40) // 4, np.arange(40) // 4]
    summary = summarise_scores(scores, is_same, folds)
    assert summary["accuracy"] == 1.0
    assert summary["accuracy_std"] == 0.0
    assert summary["auc"] == 1.0
    assert summary["eer"] == 0.0
    assert all(tar == 1.0 for tar in summary["tar_at_far"].values())


def test_random_embeddings_score_about_half():
    rng = np.random.default_rng(1)
    embeddings_a, embeddings_b = rng.normal(size=(2, 3000, 64))
    scores = metrics.cosine_scores(embeddings_a, embeddings_b)
    is_same = rng.random(3000) < 0.5
    folds = np.arange(3000) % 10
    summary = summarise_scores(scores, is_same, folds)
    assert abs(summary["accuracy"] - 0.5) < 0.04
    assert abs(summary["auc"] - 0.5) < 0.04
    assert abs(summary["eer"] - 0.5) < 0.04


def test_threshold_is_chosen_on_the_other_folds_only():
    """Fold 0 is shifted down. Chosen without it, its threshold is 0.5 and it scores 50%;
    had fold 0 leaked into its own threshold choice, 0.425 would fit every pair (100%)."""
    per_fold = 20
    scores, is_same, folds = [], [], []
    for fold in range(10):
        same, different = (0.45, 0.30) if fold == 0 else (0.60, 0.40)
        scores += [same] * per_fold + [different] * per_fold
        is_same += [True] * per_fold + [False] * per_fold
        folds += [fold] * (2 * per_fold)
    scores, is_same, folds = np.asarray(scores), np.asarray(is_same), np.asarray(folds)

    leaked_threshold, leaked_accuracy = metrics.best_threshold(scores, is_same)
    assert leaked_accuracy == 1.0 and leaked_threshold == pytest.approx(0.425)  # the trap is real

    result = metrics.kfold_accuracy(scores, is_same, folds)
    assert result.thresholds[0] == pytest.approx(0.5)
    assert result.accuracies[0] == 0.5
    np.testing.assert_allclose(result.thresholds[1:], 0.425)
    np.testing.assert_allclose(result.accuracies[1:], 1.0)
    assert result.mean == pytest.approx(0.95)


@pytest.mark.parametrize("rounding", [None, 2])
def test_roc_and_auc_match_scikit_learn(rounding):
    rng = np.random.default_rng(3)
    scores, is_same, _ = synthetic_pairs(rng, 500, 1.2)
    if rounding is not None:
        scores = np.round(scores, rounding)
    fpr, tpr, thresholds = metrics.roc_curve(scores, is_same)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(is_same, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert metrics.auc(fpr, tpr) == pytest.approx(roc_auc_score(is_same, scores), abs=1e-12)


def test_eer_matches_the_brentq_recipe():
    rng = np.random.default_rng(4)
    for separation in (0.5, 1.5, 3.0):
        scores, is_same, _ = synthetic_pairs(rng, 400, separation)
        sk_fpr, sk_tpr, _ = sk_roc_curve(is_same, scores)
        tpr_of = interp1d(sk_fpr, sk_tpr)
        expected = brentq(lambda x, tpr_of=tpr_of: 1.0 - x - tpr_of(x), 0.0, 1.0)
        fpr, tpr, _ = metrics.roc_curve(scores, is_same)
        assert metrics.equal_error_rate(fpr, tpr) == pytest.approx(expected, abs=1e-6)


def test_tar_at_far_matches_brute_force():
    rng = np.random.default_rng(5)
    scores, is_same, _ = synthetic_pairs(rng, 3000, 2.0)
    fpr, tpr, thresholds = metrics.roc_curve(scores, is_same)
    same, different = scores[is_same], scores[~is_same]
    for far in (1e-1, 1e-2, 1e-3):
        best = 0.0
        for cut in np.r_[np.inf, np.unique(scores)]:
            if np.mean(different >= cut) <= far:
                best = max(best, float(np.mean(same >= cut)))
        tar, threshold = metrics.tar_at_far(fpr, tpr, thresholds, far)
        assert tar == pytest.approx(best)
        assert np.mean(different >= threshold) <= far


def test_far_levels_go_lower_only_where_negatives_resolve_them():
    assert metrics.far_levels(300) == [1e-2, 1e-3]
    assert metrics.far_levels(3000) == [1e-2, 1e-3]
    assert metrics.far_levels(10_000) == [1e-2, 1e-3, 1e-4]
    assert metrics.far_levels(2_000_000) == [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    assert [metrics.far_key(f) for f in (1e-2, 1e-3, 1e-5)] == ["0.01", "0.001", "1e-05"]


def test_fit_protocol_applies_the_fitted_threshold_to_every_pair():
    rng = np.random.default_rng(6)
    fit_scores, fit_is_same, _ = synthetic_pairs(rng, 200, 2.0)
    scores, is_same, folds = synthetic_pairs(rng, 200, 2.0)
    summary = summarise_scores(scores, is_same, folds, fit_scores, fit_is_same)
    expected_threshold, _ = brute_best_threshold(fit_scores, fit_is_same)
    assert summary["threshold"] == pytest.approx(expected_threshold)
    assert summary["accuracy"] == pytest.approx(np.mean((scores >= expected_threshold) == is_same))
    assert summary["protocol"] == "threshold fitted on --fit-pairs"


def test_unreachable_operating_point_is_null_not_infinity_in_json():
    import json

    # The best-scoring pair is a different pair: at FAR <= 1e-3 (of 50 negatives) nothing is accepted.
    scores = np.r_[np.linspace(0.1, 0.8, 50), np.linspace(0.0, 0.7, 49), 0.9]
    is_same = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    summary = summarise_scores(scores, is_same, np.arange(100) % 10)
    assert summary["tar_at_far"]["0.001"] == 0.0
    assert summary["threshold_at_far"]["0.001"] is None
    json.dumps(summary, allow_nan=False)
