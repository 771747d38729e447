"""`facetrain pack`: an LFW-style pairs file + images -> an insightface verification `.bin`."""

from __future__ import annotations

import argparse
import sys

from facetrain.jobs.cli.common import UsageError

SKIPPED_SHOWN = 5


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pack", help="write a verification .bin (insightface format) from a pairs file and images",
        description="Aligns each pair's faces with data_prep's aligner (the template prep uses) "
        "and pickles (images, is_same) as insightface's load_bin reads it. See docs/evaluation.md.",
    )
    parser.add_argument("pairs", metavar="PAIRS", help="LFW-format pairs file (pairs.txt, pairsDevTest.txt)")
    parser.add_argument("--images", required=True, metavar="DIR", help="root the pair keys are relative to")
    parser.add_argument("--landmarks", metavar="FILE",
                        help="5-point landmarks to align raw images (without: aligned 112x112 faces)")
    parser.add_argument("--out", required=True, metavar="NAME.bin", help="the .bin to write")
    parser.add_argument("--align", default="arcface", metavar="TEMPLATE",
                        help="alignment template, as `facetrain prep` uses (default: arcface)")
    parser.add_argument("--format", dest="image_format", default="jpeg", choices=("jpeg", "png"),
                        help="image encoding: jpeg as insightface's packs, or lossless png")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding and aligning")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facetrain.data_prep.align import get_template
    from facetrain.pipeline.eval.pack import pack_pairs

    if not args.out.endswith(".bin"):
        raise UsageError(f"--out {args.out}: expected a file name ending in .bin")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality {args.quality}: expected 1..100")
    try:
        get_template(args.align)
        result = pack_pairs(
            args.pairs, args.images, args.out, landmarks=args.landmarks, template=args.align,
            image_format=args.image_format, quality=args.quality, workers=args.workers,
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(f"wrote {result.path}: {result.pairs} pairs ({result.images} images)")
    if result.skipped:
        print(f"warning: left out {len(result.skipped)} pair(s) with an unusable image:", file=sys.stderr)
        for record in result.skipped[:SKIPPED_SHOWN]:
            print(f"  {record['a']} {record['b']}: {record['reason']}", file=sys.stderr)
    return 0
