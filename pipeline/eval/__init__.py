"""Evaluation of face embedders: verification (LFW protocol), clustering, identification, export.

Public entry points (see docs/evaluation.md):

- `verify(model, pairs=..., images=..., landmarks=..., fit_pairs=...) -> dict`, `verify_bin`
- `run_verification(...) -> Verification` (summary + scores) and `log_verification(...)` (MLflow)
- `embed_keys(model, keys, source)`, `folder_source(images, landmarks)`, `read/write_embeddings`
- `evaluate_clustering(table, ...)`, `evaluate_identification(table, ...)`
- `load_model(MODEL)`, `export_model(module, path, format)`

Importing this package does not import torch or MLflow; the functions that need them do.
"""

from facetrain.pipeline.eval.bin_format import VerificationBin, read_bin, write_bin
from facetrain.pipeline.eval.cluster import evaluate_clustering
from facetrain.pipeline.eval.config import EvalOptions
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable, read_embeddings, write_embeddings
from facetrain.pipeline.eval.evaluate import (
    embed_keys,
    folder_source,
    log_verification,
    run_bin_verification,
    run_verification,
    verify,
    verify_bin,
)
from facetrain.pipeline.eval.export import export_model
from facetrain.pipeline.eval.identify import evaluate_identification
from facetrain.pipeline.eval.model_ref import LoadedModel, load_model
from facetrain.pipeline.eval.pairs import PairList, read_pairs
from facetrain.pipeline.eval.verify import Verification, summarise_scores, verify_embeddings

__all__ = [
    "EmbeddingTable",
    "EvalOptions",
    "LoadedModel",
    "PairList",
    "Verification",
    "VerificationBin",
    "embed_keys",
    "evaluate_clustering",
    "evaluate_identification",
    "export_model",
    "folder_source",
    "load_model",
    "log_verification",
    "read_bin",
    "read_embeddings",
    "read_pairs",
    "run_bin_verification",
    "run_verification",
    "summarise_scores",
    "verify",
    "verify_bin",
    "verify_embeddings",
    "write_bin",
    "write_embeddings",
]
