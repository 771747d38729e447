"""The evaluation entry points the CLI, the trainer and the demo call.

    from facetrain.pipeline.eval import verify
    summary = verify(model, pairs="lfw/pairs.txt", images="lfw/images", landmarks="lfw/landmarks.txt")

Each takes a torch module (or a ready EmbeddingTable) and returns the summary dict that
`--json` writes; the `run_*` variants return the Verification (summary + scores for the ROC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from facetrain.pipeline.eval.bin_format import read_bin
from facetrain.pipeline.eval.config import EvalOptions
from facetrain.pipeline.eval.embed import BinImages, FolderImages, ImageSource, embed_images
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable
from facetrain.pipeline.eval.pairs import PairList, read_pairs
from facetrain.pipeline.eval.verify import Verification, verify_embeddings

if TYPE_CHECKING:
    import torch

Landmarks = str | Path | Mapping[str, np.ndarray] | None


def folder_source(
    images: str | Path, landmarks: Landmarks = None, template: str = "arcface"
) -> FolderImages:
    """Images under a root, aligned with a landmark file (path) or mapping when given."""
    if landmarks is not None and not isinstance(landmarks, Mapping):
        from facetrain.data_prep.landmarks import read_landmarks

        landmarks = read_landmarks(landmarks)
    return FolderImages(images, landmarks, template)


def embed_keys(
    model: torch.nn.Module,
    keys: Sequence[str],
    source: ImageSource,
    options: EvalOptions | None = None,
) -> tuple[EmbeddingTable, dict[str, str]]:
    """Flip-augmented unit embeddings of `keys`; failures maps each unusable key to its reason."""
    options = options or EvalOptions()
    return embed_images(
        model,
        keys,
        source,
        batch_size=options.batch_size,
        device=options.resolved_device(),
        flip=options.flip,
        workers=options.workers,
        progress=options.progress,
    )


def run_verification(
    model: torch.nn.Module | None = None,
    *,
    pairs: str | Path | PairList,
    images: str | Path | None = None,
    landmarks: Landmarks = None,
    fit_pairs: str | Path | PairList | None = None,
    embeddings: EmbeddingTable | None = None,
    options: EvalOptions | None = None,
) -> Verification:
    """LFW-style verification of `pairs` from a model (with an images root) or from embeddings."""
    options = options or EvalOptions()
    pair_list = pairs if isinstance(pairs, PairList) else read_pairs(pairs, n_folds=options.folds)
    fit_list = fit_pairs
    if fit_pairs is not None and not isinstance(fit_pairs, PairList):
        fit_list = read_pairs(fit_pairs, n_folds=options.folds)
    failures: dict[str, str] = {}
    if embeddings is None:
        if model is None or images is None:
            raise ValueError("verification needs a model and an images root, or embeddings")
        keys = pair_list.unique_keys() + (fit_list.unique_keys() if fit_list is not None else [])
        source = folder_source(images, landmarks, options.template)
        embeddings, failures = embed_keys(model, keys, source, options)
    return verify_embeddings(embeddings, pair_list, fit_list, failures)


def verify(model: torch.nn.Module | None = None, **kwargs) -> dict:
    """`run_verification(...).summary`: the dict `facetrain eval verify --json` writes."""
    return run_verification(model, **kwargs).summary


def run_bin_verification(
    model: torch.nn.Module, bin_path: str | Path, options: EvalOptions | None = None
) -> Verification:
    """Verification on an insightface `.bin` (lfw.bin, cfp_fp.bin, agedb_30.bin)."""
    options = options or EvalOptions()
    verification_bin = read_bin(bin_path)
    pair_list = verification_bin.pairs(options.folds, source=str(bin_path))
    embeddings, failures = embed_keys(
        model,
        [str(i) for i in range(len(verification_bin.images))],
        BinImages(verification_bin.images),
        options,
    )
    return verify_embeddings(embeddings, pair_list, failures=failures)


def verify_bin(
    model: torch.nn.Module, bin_path: str | Path, options: EvalOptions | None = None
) -> dict:
    return run_bin_verification(model, bin_path, options).summary


def log_verification(
    verification: Verification,
    name: str,
    run_id: str | None = None,
    step: int | None = None,
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
) -> str:
    """Log the figures, the ROC PNG and the JSON to MLflow (onto `run_id`, else a new run).

    The PNG and JSON are written to `out_dir` (a temporary folder when None). Returns the run id.
    """
    import json
    import tempfile

    from facetrain.pipeline.eval.report import write_roc_png
    from facetrain.pipeline.eval.tracking import DEFAULT_EXPERIMENT, log_results, metric_prefix

    prefix = metric_prefix(name)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(out_dir or scratch)
        fpr, tpr, _ = verification.roc()
        roc_png = write_roc_png(
            fpr, tpr, folder / f"roc-{prefix}.png", title=name, summary=verification.summary
        )
        json_path = folder / f"verify-{prefix}.json"
        json_path.write_text(json.dumps(verification.summary, indent=2, allow_nan=False))
        return log_results(
            verification.summary,
            name,
            run_id=run_id,
            artifacts=[roc_png, json_path],
            tags=tags,
            step=step,
            experiment=experiment or DEFAULT_EXPERIMENT,
            tracking_uri=tracking_uri,
        )
