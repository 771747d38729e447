"""`facetrain embed`: images -> Parquet/.npz of (key, flip-augmented L2-normalised embedding)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facetrain.jobs.cli.common import UsageError, add_config_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="embed images with a model into Parquet (key, embedding) or .npz",
        description="Writes the format `facetrain eval --embeddings` reads. Keys are image paths "
        "relative to --images.",
    )
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="MLflow run id, runs:/ or models:/ URI, or checkpoint path")
    parser.add_argument("--images", required=True, metavar="ROOT", help="images root")
    parser.add_argument("--landmarks", metavar="FILE", help="5-point landmarks to align raw images")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--keys", metavar="FILE", help="embed only these keys (one per line)")
    keys.add_argument("--pairs", metavar="FILE", help="embed only the images of this LFW pairs file")
    parser.add_argument("--out", required=True, metavar="FILE", help="embeddings.parquet or embeddings.npz")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facetrain.jobs.cli.config import load_config
    from facetrain.pipeline.eval import (
        EvalOptions,
        embed_keys,
        folder_source,
        load_model,
        read_pairs,
        write_embeddings,
    )

    if Path(args.out).suffix not in (".parquet", ".npz"):
        raise UsageError(f"--out {args.out}: expected a .parquet or .npz file name")
    options = load_config(EvalOptions, args.config, args.overrides)
    try:
        loaded = load_model(args.model, options.resolved_device())
        source = folder_source(args.images, args.landmarks, options.template)
        if args.pairs:
            keys = read_pairs(args.pairs).unique_keys()
        elif args.keys:
            keys = [line.strip() for line in Path(args.keys).read_text().splitlines() if line.strip()]
        else:
            keys = source.keys()
        if not keys:
            raise UsageError(f"--images {args.images}: no image to embed")
        table, failures = embed_keys(loaded.module, keys, source, options)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    write_embeddings(args.out, table)
    print(f"wrote {len(table)} embeddings of dimension {table.dim if len(table) else 0} to {args.out}")
    if failures:
        print(f"warning: {len(failures)} of {len(keys)} images could not be embedded:", file=sys.stderr)
        for key, reason in list(failures.items())[:5]:
            print(f"  {key}: {reason}", file=sys.stderr)
    return 0
