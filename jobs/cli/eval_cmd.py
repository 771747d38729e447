"""`facetrain eval verify|cluster|identify|ijb`: a thin shell over `pipeline.eval`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facetrain.jobs.cli.common import UsageError, add_config_options

SKIPPED_SHOWN = 5


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model or embeddings: verification (LFW protocol), clustering, identification",
        description="Evaluate a face model (MLflow run id, models:/ URI or checkpoint) or an "
        "embeddings file. See docs/evaluation.md.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    verify = tasks.add_parser(
        "verify", help="pair verification: accuracy (10-fold), AUC, EER, TAR@FAR, ROC",
        description="LFW pairs.txt (+ images root) or an insightface .bin; 10-fold cross-"
        "validation, or a threshold fitted on --fit-pairs.",
    )
    _add_source_options(verify)
    inputs = verify.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--pairs", metavar="FILE", help="LFW pairs file (pairs.txt, pairsDevTest.txt)")
    inputs.add_argument("--bin", metavar="FILE", help="insightface verification .bin (lfw, cfp_fp, agedb_30)")
    verify.add_argument(
        "--fit-pairs", metavar="FILE",
        help="choose the threshold on this pair list and report --pairs at it (e.g. pairsDevTrain.txt)",
    )
    verify.add_argument("--roc", metavar="PNG", help="ROC plot path (default: beside --json, else ./roc-NAME.png)")
    verify.add_argument("--name", help="dataset name for MLflow keys (default: from the pairs/bin file name)")
    verify.set_defaults(func=run_verify)

    cluster = tasks.add_parser(
        "cluster", help="agglomerative clustering on cosine distance: pairwise P/R/F1, NMI",
        description="Identity = first folder of each image key. Without --threshold, it is fitted "
        "on half of the identities and the other half is reported.",
    )
    _add_source_options(cluster)
    cluster.add_argument("--threshold", type=float, help="cosine-distance merge threshold (default: fitted)")
    cluster.add_argument("--linkage", default="average", choices=("average", "complete", "single"))
    cluster.add_argument("--fit-fraction", type=float, default=0.5, help="identities used to fit the threshold")
    cluster.add_argument("--min-images", type=int, default=2, help="identities with fewer images are left out")
    cluster.add_argument("--max-identities", type=int, help="cap on identities (seeded sample)")
    cluster.add_argument("--seed", type=int, default=0)
    cluster.add_argument("--name", default="cluster", help="name for MLflow keys")
    cluster.set_defaults(func=run_cluster)

    identify = tasks.add_parser(
        "identify", help="closed-set identification: rank-1 / rank-5 with a gallery/probe split",
    )
    _add_source_options(identify)
    identify.add_argument("--ranks", type=int, nargs="+", default=[1, 5], metavar="K")
    identify.add_argument("--gallery-per-identity", type=int, default=1)
    identify.add_argument(
        "--no-distractors", action="store_true", help="leave single-image identities out of the gallery"
    )
    identify.add_argument("--seed", type=int, default=0)
    identify.add_argument("--name", default="identify", help="name for MLflow keys")
    identify.set_defaults(func=run_identify)

    ijb = tasks.add_parser(
        "ijb", help="IJB-B/IJB-C 1:1 template verification: TAR at FAR=1e-6..1e-1, ROC",
        description="Reads ROOT/meta/<set>_face_tid_mid.txt, _template_pair_label.txt and "
        "_name_5pts_score.txt and ROOT/loose_crop/; aligns, embeds with flip, pools images into "
        "media and media into templates, scores every template pair.",
    )
    ijb.add_argument("--root", required=True, metavar="DIR", help="the IJB folder (meta/, loose_crop/)")
    ijb.add_argument("--model", required=True, metavar="MODEL",
                     help="MLflow run id, runs:/ or models:/ URI, or checkpoint path")
    ijb.add_argument("--no-detector-score", action="store_true",
                     help="do not weight image features by the detector score")
    ijb.add_argument("--json", metavar="FILE", help="write the figures here")
    ijb.add_argument("--roc", metavar="PNG", help="ROC plot path (default: beside --json, else ./roc-SET.png)")
    ijb.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ijb.add_argument("--experiment", default="facetrain-eval", help="MLflow experiment of a new evaluation run")
    ijb.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or mlflow's)")
    # `--set IJBC|IJBB` names the set (the anchors' spelling); `--set key=value` still
    # overrides an evaluation option, as in every other command.
    ijb.add_argument("--config", metavar="FILE|NAME", help="evaluation options YAML")
    ijb.add_argument("--set", dest="overrides", action="append", default=[], metavar="IJBC|IJBB|KEY=VALUE",
                     help="the IJB set (default IJBC), or an option override such as batch_size=256")
    ijb.set_defaults(func=run_ijb)


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODEL", help="MLflow run id, runs:/ or models:/ URI, or checkpoint path")
    source.add_argument("--embeddings", metavar="FILE", help="Parquet (key, embedding) or .npz (keys, embeddings)")
    parser.add_argument("--images", metavar="ROOT", help="images root; keys are paths relative to it")
    parser.add_argument("--landmarks", metavar="FILE", help="5-point landmarks to align raw images (as prep does)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--experiment", default="facetrain-eval", help="MLflow experiment of a new evaluation run")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or mlflow's)")
    add_config_options(parser)


def _options(args: argparse.Namespace):
    from facetrain.jobs.cli.config import load_config
    from facetrain.pipeline.eval.config import EvalOptions

    return load_config(EvalOptions, args.config, args.overrides)


def _load(args: argparse.Namespace, options):
    """(LoadedModel or None, EmbeddingTable or None) from --model / --embeddings."""
    from facetrain.pipeline.eval import load_model, read_embeddings

    try:
        if args.embeddings:
            return None, read_embeddings(args.embeddings)
        return load_model(args.model, options.resolved_device()), None
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


def _default_name(path: str) -> str:
    path = Path(path)
    # LFW's View 2 file is just "pairs.txt": its folder names the dataset better.
    return (path.parent.name or path.stem) if path.stem == "pairs" else path.stem


def run_verify(args: argparse.Namespace) -> int:
    from facetrain.pipeline.eval import log_verification, run_bin_verification, run_verification
    from facetrain.pipeline.eval.report import verification_table, write_roc_png
    from rich.console import Console

    options = _options(args)
    if args.bin and (args.embeddings or args.fit_pairs):
        raise UsageError("--bin: evaluates a --model on the .bin's own images; "
                         "--embeddings and --fit-pairs work with --pairs")
    if args.pairs and args.model and not args.images:
        raise UsageError("--pairs with --model needs --images ROOT (where the pair images are)")
    loaded, table = _load(args, options)
    name = args.name or _default_name(args.pairs or args.bin)
    try:
        if args.bin:
            verification = run_bin_verification(loaded.module, args.bin, options)
        else:
            verification = run_verification(
                loaded.module if loaded else None, pairs=args.pairs, images=args.images,
                landmarks=args.landmarks, fit_pairs=args.fit_pairs, embeddings=table, options=options,
            )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err

    summary = verification.summary
    summary["name"] = name
    summary["model"] = loaded.uri if loaded else None
    summary["embeddings"] = args.embeddings
    console = Console()
    console.print(verification_table(summary, title=f"verification: {name}"))
    _report_skipped(summary.get("skipped", []), "pairs", summary["pairs_listed"])
    if args.fit_pairs:
        fit_listed = summary["fit_pairs"] + summary["fit_skipped_pairs"]
        _report_skipped(summary["fit_skipped"], "fit pairs", fit_listed)

    roc_path = Path(args.roc) if args.roc else (
        Path(args.json).with_suffix(".roc.png") if args.json else Path(f"roc-{name}.png")
    )
    fpr, tpr, _ = verification.roc()
    write_roc_png(fpr, tpr, roc_path, title=name, summary=summary)
    console.print(f"ROC curve: {roc_path}")
    _write_json(args.json, summary, console)
    if not args.no_mlflow:
        run_id = log_verification(
            verification, name, run_id=loaded.run_id if loaded else None,
            tags={"model": summary["model"] or f"embeddings:{args.embeddings}", "pairs": summary["source"]},
            experiment=args.experiment, tracking_uri=args.tracking_uri,
        )
        console.print(f"logged to MLflow run {run_id}")
    return 0


def _embedded_table(args: argparse.Namespace, options, loaded, table, min_images: int = 1):
    """Embeddings for cluster/identify: the file's, or the model's on every image under --images.

    Returns (table, skipped records of the images that could not be embedded)."""
    from collections import Counter

    from facetrain.pipeline.eval import embed_keys, folder_source
    from facetrain.pipeline.eval.cluster import identity_of

    if table is not None:
        return table, []
    if not args.images:
        raise UsageError("--model needs --images ROOT (folders of <identity>/<image>)")
    try:
        source = folder_source(args.images, args.landmarks, options.template)
        keys = source.keys()
        per_identity = Counter(identity_of(key) for key in keys)
        keys = [key for key in keys if per_identity[identity_of(key)] >= min_images]
        if not keys:
            raise UsageError(f"--images {args.images}: no identity folder with >= {min_images} image(s)")
        table, failures = embed_keys(loaded.module, keys, source, options)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    skipped = [{"key": key, "reason": reason} for key, reason in failures.items()]
    _report_skipped(skipped, "images", len(keys))
    return table, skipped


def run_cluster(args: argparse.Namespace) -> int:
    from facetrain.pipeline.eval import evaluate_clustering

    options = _options(args)
    loaded, table = _load(args, options)
    table, skipped = _embedded_table(args, options, loaded, table, min_images=args.min_images)
    try:
        summary = evaluate_clustering(
            table, threshold=args.threshold, method=args.linkage, fit_fraction=args.fit_fraction,
            min_images=args.min_images, max_identities=args.max_identities, seed=args.seed,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    return _finish(args, loaded, summary, "clustering", skipped)


def run_identify(args: argparse.Namespace) -> int:
    from facetrain.pipeline.eval import evaluate_identification

    options = _options(args)
    loaded, table = _load(args, options)
    table, skipped = _embedded_table(args, options, loaded, table)
    try:
        summary = evaluate_identification(
            table, ranks=args.ranks, gallery_per_identity=args.gallery_per_identity,
            distractors=not args.no_distractors, seed=args.seed,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    return _finish(args, loaded, summary, "identification", skipped)


def _finish(args: argparse.Namespace, loaded, summary: dict, title: str, skipped: list[dict]) -> int:
    from facetrain.pipeline.eval.report import figures_table
    from facetrain.pipeline.eval.tracking import log_results
    from rich.console import Console

    summary["model"] = loaded.uri if loaded else None
    summary["embeddings"] = args.embeddings
    summary["skipped_images"] = len(skipped)
    summary["skipped"] = skipped
    console = Console()
    console.print(figures_table(summary, title=f"{title}: {args.name}"))
    _write_json(args.json, summary, console)
    if not args.no_mlflow:
        run_id = log_results(
            summary, args.name, run_id=loaded.run_id if loaded else None,
            tags={"model": summary["model"] or f"embeddings:{args.embeddings}"},
            experiment=args.experiment, tracking_uri=args.tracking_uri,
            artifacts=[args.json] if args.json else (),
        )
        console.print(f"logged to MLflow run {run_id}")
    return 0


def run_ijb(args: argparse.Namespace) -> int:
    from facetrain.pipeline.eval.ijb import run_ijb as evaluate_ijb
    from facetrain.pipeline.eval.ijb import thin_roc
    from facetrain.pipeline.eval.report import figures_table, write_roc_png
    from facetrain.pipeline.eval.tracking import log_results
    from rich.console import Console

    names = [value for value in args.overrides if "=" not in value]
    args.overrides = [value for value in args.overrides if "=" in value]
    if len(names) > 1 or any(name not in ("IJBC", "IJBB") for name in names):
        raise UsageError(f"--set {' '.join(names)}: expected one IJB set, IJBC or IJBB")
    args.ijb_set = names[0] if names else "IJBC"
    options = _options(args)
    args.embeddings = None
    loaded, _ = _load(args, options)
    try:
        result = evaluate_ijb(
            loaded.module, args.root, args.ijb_set, options, detector_score=not args.no_detector_score
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    summary = result.summary
    summary["model"] = loaded.uri
    console = Console()
    shown = {**summary, **{f"TAR@FAR={far}": tar for far, tar in summary["tar_at_far"].items()}}
    console.print(figures_table(shown, title=f"{args.ijb_set} 1:1 verification"))
    if summary["images_failed"]:
        print(f"warning: {summary['images_failed']} of {summary['images']} images could not be "
              "embedded (first ones listed in --json)", file=sys.stderr)
    roc_path = Path(args.roc) if args.roc else (
        Path(args.json).with_suffix(".roc.png") if args.json else Path(f"roc-{args.ijb_set}.png")
    )
    fpr, tpr, _ = result.roc()
    write_roc_png(*thin_roc(fpr, tpr), roc_path, title=f"{args.ijb_set} 1:1 verification")
    console.print(f"ROC curve: {roc_path}")
    _write_json(args.json, summary, console)
    if not args.no_mlflow:
        run_id = log_results(
            summary, args.ijb_set, run_id=loaded.run_id,
            tags={"model": summary["model"], "root": str(args.root)},
            experiment=args.experiment, tracking_uri=args.tracking_uri,
            artifacts=[roc_path, *([args.json] if args.json else [])],
        )
        console.print(f"logged to MLflow run {run_id}")
    return 0


def _write_json(path: str | None, summary: dict, console) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        console.print(f"figures: {path}")


def _report_skipped(skipped: list[dict], what: str, total: int) -> None:
    """Never drop inputs silently: say how many and show the first few reasons."""
    if not skipped:
        return
    print(f"warning: skipped {len(skipped)} of {total} {what} (left out of every figure):", file=sys.stderr)
    for record in skipped[:SKIPPED_SHOWN]:
        keys = " ".join(record[field] for field in ("key", "a", "b") if record.get(field))
        print(f"  {keys}: {record['reason']}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more (all listed in --json)", file=sys.stderr)
