"""`facetrain export`: a model to TorchScript (or ONNX), checked to give the same embeddings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facetrain.jobs.cli.common import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model to TorchScript (ONNX when `onnx` is installed)",
        description="The export is reloaded and compared with the original on random faces; "
        "it is kept only if outputs agree within --tolerance.",
    )
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="MLflow run id, runs:/ or models:/ URI, or checkpoint path")
    parser.add_argument("--format", default="torchscript", choices=("torchscript", "onnx"))
    parser.add_argument("--out", metavar="FILE", help="default: model.torchscript.pt / model.onnx")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed output difference")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facetrain.pipeline.eval import export_model, load_model
    from facetrain.pipeline.eval.export import ExportMismatch, available_formats

    if args.format not in available_formats():
        raise UsageError(f"--format {args.format}: needs the `onnx` package (pip install 'facetrain[onnx]')")
    out = args.out or ("model.torchscript.pt" if args.format == "torchscript" else "model.onnx")
    existing = next(parent for parent in Path(out).absolute().parents if parent.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a folder")
    try:
        loaded = load_model(args.model, "cpu")
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    try:
        result = export_model(loaded.module, out, args.format, args.tolerance)
    except ExportMismatch as err:
        print(f"facetrain export: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        raise UsageError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    difference = result["max_abs_difference"]
    checked = f"max |difference| {difference:.2g}" if difference is not None else "not compared (no onnxruntime)"
    print(f"exported {loaded.uri} to {result['path']} ({args.format}); {checked}")
    return 0
