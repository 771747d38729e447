"""IJB-B / IJB-C 1:1 template verification, the protocol arcface_torch, AdaFace and MagFace report.

Layout of `--root` (the released metadata, as insightface's `eval_ijbc.py` reads it):

    meta/<set>_face_tid_mid.txt          image template_id media_id      (one row per image)
    meta/<set>_template_pair_label.txt   template_1 template_2 label     (1 = same subject)
    meta/<set>_name_5pts_score.txt       image x1 y1 ... x5 y5 score     (detector landmarks)
    loose_crop/<image>                   the loose face crops

Each crop is aligned with its 5 points (data_prep's aligner, the training template) and
embedded with its flip; the unit image features are weighted by the detector score (optional,
insightface's "D1" mode), averaged within a media (the frames of one video, or one photo),
the media averaged within a template, and the template L2-normalised. Every listed template
pair is scored by cosine, in batches: IJB-C lists 15.7M pairs, and no step holds more than
one batch of pair features. `pool_templates` is the reusable part (the 1:N protocol pools
the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from facetrain.pipeline.eval import metrics

if TYPE_CHECKING:
    import torch
    from facetrain.pipeline.eval.config import EvalOptions

IJB_SETS = ("IJBB", "IJBC")
IJB_FAR_LEVELS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_BATCH = 1 << 18
ROC_PLOT_POINTS = 2000


@dataclass(frozen=True)
class IJBMeta:
    images: list[str]  # crop file names under loose_crop/
    templates: np.ndarray  # int64 [N]
    medias: np.ndarray  # int64 [N]
    landmarks: np.ndarray  # float64 [N, 5, 2]
    detector_scores: np.ndarray  # float64 [N]
    template_a: np.ndarray  # int64 [P]
    template_b: np.ndarray  # int64 [P]
    is_same: np.ndarray  # bool [P]


def _meta_file(root: Path, set_name: str, suffix: str) -> Path:
    path = root / "meta" / f"{set_name.lower()}_{suffix}"
    if not path.is_file():
        raise FileNotFoundError(
            f"IJB root {root}: no {path.relative_to(root)} (expected the released {set_name} metadata)"
        )
    return path


def _read_columns(path: Path, columns: int) -> list[np.ndarray]:
    """A space-separated text table with exactly `columns` columns (pandas' C parser: IJB-C's
    15.7M pair rows take seconds)."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep=" ", header=None, skipinitialspace=True, dtype=str)
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a table of {columns} space-separated columns ({err})") from err
    if table.shape[1] != columns or table.isna().any().any():
        raise ValueError(f"{path}: expected {columns} space-separated columns on every line")
    return [table[column].to_numpy() for column in table.columns]


def _as_numbers(values: np.ndarray, dtype, path: Path, what: str) -> np.ndarray:
    try:
        return values.astype(dtype)
    except ValueError:
        bad = next(v for v in values if not _parses(v, dtype))
        raise ValueError(f"{path}: {what} {bad!r} is not a number") from None


def _parses(value: str, dtype) -> bool:
    try:
        np.asarray([value]).astype(dtype)
        return True
    except ValueError:
        return False


def read_ijb_meta(root: str | Path, set_name: str) -> IJBMeta:
    """The three metadata files of `set_name` (IJBB or IJBC) under `root/meta`."""
    root = Path(root)
    if set_name not in IJB_SETS:
        raise ValueError(f"IJB set {set_name!r}: expected one of {', '.join(IJB_SETS)}")
    tid_path = _meta_file(root, set_name, "face_tid_mid.txt")
    names, templates, medias = _read_columns(tid_path, 3)
    pair_path = _meta_file(root, set_name, "template_pair_label.txt")
    template_a, template_b, labels = _read_columns(pair_path, 3)
    points_path = _meta_file(root, set_name, "name_5pts_score.txt")
    point_columns = _read_columns(points_path, 12)

    row_of = {name: row for row, name in enumerate(point_columns[0])}
    missing = [name for name in names if name not in row_of]
    if missing:
        raise ValueError(
            f"{points_path}: no landmark row for {len(missing)} image(s) of {tid_path.name} "
            f"(first: {missing[0]})"
        )
    rows = np.asarray([row_of[name] for name in names], dtype=np.int64)
    numbers = np.stack(
        [_as_numbers(column, np.float64, points_path, "value") for column in point_columns[1:]],
        axis=1,
    )[rows]
    label_values = _as_numbers(labels, np.int64, pair_path, "label")
    if not np.isin(label_values, (0, 1)).all():
        raise ValueError(f"{pair_path}: labels must be 0 or 1")
    return IJBMeta(
        images=list(names),
        templates=_as_numbers(templates, np.int64, tid_path, "template id"),
        medias=_as_numbers(medias, np.int64, tid_path, "media id"),
        landmarks=numbers[:, :10].reshape(-1, 5, 2),
        detector_scores=numbers[:, 10],
        template_a=_as_numbers(template_a, np.int64, pair_path, "template id"),
        template_b=_as_numbers(template_b, np.int64, pair_path, "template id"),
        is_same=label_values.astype(bool),
    )


def pool_templates(
    features: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted template ids [T], unit template features [T, D]) from image features [N, D].

    feature(template) = normalise(mean over its media of (mean over the media's images of
    weight * feature)): a template of one long video counts that video once, not per frame.
    """
    features = np.asarray(features, dtype=np.float64)
    if weights is not None:
        features = features * np.asarray(weights, dtype=np.float64)[:, None]
    media_keys = np.stack([templates, medias], axis=1)
    media_rows, media_of_image = np.unique(media_keys, axis=0, return_inverse=True)
    media_of_image = media_of_image.reshape(-1)
    media_sum = np.zeros((len(media_rows), features.shape[1]))
    np.add.at(media_sum, media_of_image, features)
    media_mean = media_sum / np.bincount(media_of_image, minlength=len(media_rows))[:, None]
    template_ids, template_of_media = np.unique(media_rows[:, 0], return_inverse=True)
    template_sum = np.zeros((len(template_ids), features.shape[1]))
    np.add.at(template_sum, template_of_media, media_mean)
    template_mean = template_sum / np.bincount(template_of_media)[:, None]
    return template_ids, metrics.l2_normalise(template_mean)


def score_template_pairs(
    template_ids: np.ndarray,
    template_features: np.ndarray,
    template_a: np.ndarray,
    template_b: np.ndarray,
    batch: int = PAIR_BATCH,
) -> np.ndarray:
    """float32 cosine scores [P]; NaN where a template has no feature (no usable image)."""
    rows_a = _template_rows(template_ids, template_a)
    rows_b = _template_rows(template_ids, template_b)
    scores = np.full(len(template_a), np.nan, dtype=np.float32)
    features = template_features.astype(np.float32)
    for start in range(0, len(template_a), batch):
        a, b = rows_a[start : start + batch], rows_b[start : start + batch]
        usable = (a >= 0) & (b >= 0)
        scores[start : start + batch][usable] = np.einsum(
            "nd,nd->n", features[a[usable]], features[b[usable]]
        )
    return scores


def _template_rows(template_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each wanted id in the sorted `template_ids`, -1 where it is absent."""
    if len(template_ids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    rows = np.searchsorted(template_ids, wanted).clip(max=len(template_ids) - 1)
    return np.where(template_ids[rows] == wanted, rows, -1)


def far_label(far: float) -> str:
    """1e-4 -> "1e-4": the key of a FAR level in the summary and MLflow."""
    return f"1e-{round(-np.log10(far))}"


@dataclass(frozen=True)
class IJBResult:
    summary: dict
    scores: np.ndarray  # of the scored pairs
    is_same: np.ndarray

    def roc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return metrics.roc_curve(self.scores, self.is_same)


def summarise_ijb(scores: np.ndarray, is_same: np.ndarray, pairs_listed: int) -> IJBResult:
    """TAR at the six FAR levels of the IJB tables, AUC and EER over the scored pairs."""
    scored = ~np.isnan(scores)
    scores, is_same = scores[scored].astype(np.float64), is_same[scored]
    fpr, tpr, thresholds = metrics.roc_curve(scores, is_same)
    negatives = int((~is_same).sum())
    tar, threshold_at_far = {}, {}
    for far in IJB_FAR_LEVELS:
        rate, threshold = metrics.tar_at_far(fpr, tpr, thresholds, far)
        tar[far_label(far)] = rate
        threshold_at_far[far_label(far)] = threshold if np.isfinite(threshold) else None
    summary = {
        "tar_at_far": tar,
        "threshold_at_far": threshold_at_far,
        "auc": metrics.auc(fpr, tpr),
        "eer": metrics.equal_error_rate(fpr, tpr),
        "far_resolution": 1.0 / max(negatives, 1),
        "pairs": int(scores.size),
        "pairs_listed": int(pairs_listed),
        "skipped_pairs": int(pairs_listed - scores.size),
        "same_pairs": int(is_same.sum()),
        "different_pairs": negatives,
    }
    return IJBResult(summary, scores, is_same)


def run_ijb(
    model: torch.nn.Module,
    root: str | Path,
    set_name: str = "IJBC",
    options: EvalOptions | None = None,
    detector_score: bool = True,
) -> IJBResult:
    """The 1:1 protocol end to end: read, align, embed, pool, score, summarise."""
    from facetrain.pipeline.eval.config import EvalOptions
    from facetrain.pipeline.eval.embed import FolderImages
    from facetrain.pipeline.eval.evaluate import embed_keys

    options = options or EvalOptions()
    root = Path(root)
    meta = read_ijb_meta(root, set_name)
    landmarks = dict(zip(meta.images, meta.landmarks, strict=True))
    source = FolderImages(root / "loose_crop", landmarks, options.template)
    table, failures = embed_keys(model, meta.images, source, options)
    embedded = np.asarray([name in table for name in meta.images], dtype=bool)
    if not embedded.any():
        first = next(iter(failures.items()), ("-", "no image listed"))
        raise ValueError(f"IJB {set_name} under {root}: no image could be embedded ({first[0]}: {first[1]})")
    names = [name for name, ok in zip(meta.images, embedded, strict=True) if ok]
    weights = meta.detector_scores[embedded] if detector_score else None
    template_ids, template_features = pool_templates(
        table.rows(names), meta.templates[embedded], meta.medias[embedded], weights
    )
    scores = score_template_pairs(template_ids, template_features, meta.template_a, meta.template_b)
    result = summarise_ijb(scores, meta.is_same, len(meta.is_same))
    result.summary.update(
        set=set_name,
        protocol="1:1 template verification",
        detector_score=detector_score,
        flip=options.flip,
        images=len(meta.images),
        images_embedded=int(embedded.sum()),
        images_failed=len(failures),
        failed=[{"key": key, "reason": reason} for key, reason in list(failures.items())[:100]],
        media=int(len(np.unique(np.stack([meta.templates, meta.medias], axis=1), axis=0))),
        templates=int(len(np.unique(meta.templates))),
        templates_scored=int(len(template_ids)),
    )
    return result


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = ROC_PLOT_POINTS):
    """At most ~`points` ROC points, log-spaced in FAR (a 15.7M-point curve is not plottable)."""
    if fpr.size <= points:
        return fpr, tpr
    lowest = max(float(fpr[fpr > 0].min()), 1e-9) if (fpr > 0).any() else 1e-9
    targets = np.logspace(np.log10(lowest), 0, points)
    keep = np.unique(np.r_[0, np.searchsorted(fpr, targets, side="right") - 1, fpr.size - 1])
    return fpr[keep], tpr[keep]
