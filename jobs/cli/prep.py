"""`facetrain prep SOURCE --out DIR`: raw faces -> aligned, identity-grouped WebDataset shards.

Precedence: PrepConfig defaults <- `--config FILE` <- flags given here <- `--set key=value`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from facetrain.jobs.cli.common import UsageError, add_config_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="raw face dataset -> aligned 112x112 faces in identity-grouped WebDataset shards",
        description="Align, dedupe, filter and shard a face dataset on Ray. SOURCE is an "
        "image-folder root (ROOT/<identity>/<image>) or an insightface .rec (with its .idx). "
        "Exit 0 when the job finished (rejected images included), 2 for unusable arguments "
        "or sources, 1 for anything else. See docs/data_prep.md.",
    )
    parser.add_argument("source", nargs="?", help="image-folder root or .rec file")
    parser.add_argument(
        "--verify",
        metavar="OUT",
        help="check an existing output instead: every shard's size, sample count and SHA-256 "
        "against its dataset.json (exit 1 when one differs)",
    )
    parser.add_argument("--out", help="output directory")
    parser.add_argument(
        "--landmarks",
        metavar="FILE",
        help="five-point landmarks: `relpath x1 y1 .. x5 y5` lines, or CSV/Parquet",
    )
    parser.add_argument(
        "--align",
        choices=["arcface", "sphereface", "none"],
        help="template: arcface 112x112 (default), sphereface 96x112, none (pre-aligned)",
    )
    parser.add_argument(
        "--detect",
        action="store_true",
        default=None,
        help="find the main face and its five landmarks in images without a landmark row "
        "(extra: facetrain[detect])",
    )
    parser.add_argument(
        "--detector",
        choices=["hog", "cnn"],
        help="with --detect: dlib HOG (default), or the MMOD CNN (slower, finds more faces)",
    )
    parser.add_argument(
        "--upsample",
        type=int,
        metavar="N",
        help="with --detect: upsample N times before detecting (small faces; default 1 "
        "below 400 px, else 0)",
    )
    parser.add_argument(
        "--min-images", type=int, metavar="N", help="drop identities with fewer images"
    )
    parser.add_argument(
        "--max-images", type=int, metavar="N", help="keep at most N images per identity"
    )
    parser.add_argument(
        "--shard-size", type=int, metavar="N", help="target samples per shard (default 5000)"
    )
    parser.add_argument(
        "--val-identities",
        metavar="N|NAMES|@FILE",
        help="hold out N identities, a comma-separated list, or names in FILE",
    )
    parser.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster (default: embedded local Ray)"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="CPUs for the embedded local Ray")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="scan and print counts per identity and the shard plan; write nothing",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars",
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


_FLAG_KEYS = (
    "source",
    "out",
    "landmarks",
    "align",
    "detect",
    "detector",
    "upsample",
    "min_images",
    "max_images",
    "shard_size",
    "ray_address",
    "workers",
    "dry_run",
    "progress",
)


def build_config(args: argparse.Namespace):
    from facetrain.data_prep.config import PrepConfig
    from facetrain.jobs.cli.config import load_config, read_yaml

    tree = read_yaml(args.config) if args.config else {}
    tree.update({key: getattr(args, key) for key in _FLAG_KEYS if getattr(args, key) is not None})
    if args.val_identities is not None:
        tree["val_identities"] = _parse_val_identities(args.val_identities)
    config = load_config(PrepConfig, None, args.overrides, base=tree)
    return config


def _parse_val_identities(text: str) -> int | list[str]:
    if text.isdigit():
        return int(text)
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise UsageError(f"--val-identities {text}: file {path} not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(
            f"--val-identities {text!r}: expected a count, names separated by commas, or @FILE"
        )
    return names


def run(args: argparse.Namespace) -> int:
    from facetrain.data_prep import run_prep
    from facetrain.data_prep.errors import PrepInputError

    if args.verify is not None:
        return verify(args.verify)
    if args.source is None and not args.config:
        raise UsageError("SOURCE is required (an image-folder root or a .rec file)")
    config = build_config(args)
    if not config.dry_run:
        _check_writable(config.out)
    try:
        summary = run_prep(config)
    except PrepInputError as err:
        raise UsageError(str(err)) from err
    print(summary.render())
    if not summary.dry_run and summary.accepted == 0:
        print(
            f"facetrain prep: error: no image of {config.source} was accepted "
            "(rejects.parquet in the output says why each was rejected)",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_writable(out: str) -> None:
    """A local --out that cannot be created or written is the user's argument (exit 2).
    Checked on the nearest folder that exists, so a refused run leaves nothing behind."""
    if "://" in out:
        return
    existing = Path(out).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {out}: cannot write there ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write there (no write permission on {existing})")


def verify(out: str) -> int:
    """`facetrain prep --verify OUT`: read every shard of every split to its end."""
    from facetrain.pipeline.data.shards import read_dataset_index, verify_shards

    try:
        splits = json.loads(Path(out, "dataset.json").read_bytes())["splits"]
        indexes = [read_dataset_index(out, split) for split in splits if splits[split]["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--verify {out}: not a `facetrain prep` output ({err})") from None
    problems = [line for index in indexes for line in verify_shards(index)]
    shards = sum(len(index.shards) for index in indexes)
    for line in problems:
        print(f"facetrain prep: error: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{out}: {shards} shards match dataset.json (size, samples, sha256)")
    return 0
