"""Detected five landmarks vs LFW's reference landmarks: error, failures and speed per detector.

For a seeded random subset of LFW (../shared/data/lfw; `--images 0` = all 13,232), each
detector (`hog`, `cnn`) runs exactly as `facetrain prep --detect` does
(`scan.detected_landmarks`: main face -> 68-point predictor -> five points). Reported:

- NME: per image, the mean distance of the five detected points to the reference ones,
  divided by the reference inter-ocular distance (eye centres); mean, median, p90 over
  images, and per point.
- failures: no face / no clear main face, or a main face whose box (the one the landmark
  predictor reads: MMOD boxes mapped to HOG's frame) does not contain all five reference
  points; how many of the detector's own boxes miss a point is reported beside it.
- speed: images per second, one process, for detect + landmarks + align + JPEG encode,
  against align + encode from the landmark file on the same images (`--speed-images` of
  them, measured in the run). Errors and failures come from a pool of `--workers`.
- `--fit-mmod`: the MMOD -> HOG box mapping (medians over images where both find one face),
  the constants in data_prep/detect.py.

    python benchmarks/detect_landmarks.py [--images 300] [--cnn-images 150] [--seed 0]
        [--detectors hog cnn] [--workers N] [--speed-images 60] [--records DIR] [--png FILE]
        [--fit-mmod]
    python benchmarks/detect_landmarks.py --downstream RUN_ID --tracking-uri URI --detectors hog
        [--records DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw"
# Records carry the hash of the detection code that made them; others are redone, so a records
# folder kept across a change to data_prep/detect.py never mixes the old outcomes with the new.
DETECT_CODE = REPO / "data_prep" / "detect.py"
NME_AXIS = 0.15  # the plot's right edge: 3x the target median
POINT_NAMES = ("left eye", "right eye", "nose", "left mouth", "right mouth")


def _subset(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    from facetrain.data_prep.landmarks import read_landmarks

    points = read_landmarks(LFW / "landmarks.txt")
    present = sorted(rel for rel in points if (LFW / "images" / rel).exists())
    if count:
        present = sorted(random.Random(seed).sample(present, min(count, len(present))))
    return [(rel, np.asarray(points[rel], np.float64).reshape(5, 2)) for rel in present]


def _nme(detected: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-point error over the reference inter-ocular distance."""
    inter_ocular = np.linalg.norm(reference[0] - reference[1])
    return np.linalg.norm(detected - reference, axis=1) / inter_ocular


_DETECTOR = None


def _start_worker(kind: str) -> None:
    global _DETECTOR  # one detector per pool process: loading the models is the slow part
    from facetrain.data_prep.detect import FaceDetector

    _DETECTOR = FaceDetector(kind)


def _inside(box, reference: np.ndarray) -> bool:
    return bool(
        (
            (reference[:, 0] >= box.left)
            & (reference[:, 0] <= box.left + box.width)
            & (reference[:, 1] >= box.top)
            & (reference[:, 1] <= box.top + box.height)
        ).all()
    )


def _detect_one(item: tuple[str, np.ndarray]) -> tuple[str | None, np.ndarray | None, bool]:
    """(reject reason, five points, whether the detector's own box holds the reference)."""
    from facetrain.data_prep.images import decode_rgb, open_image

    relpath, reference = item
    image = decode_rgb(open_image((LFW / "images" / relpath).read_bytes(), relpath), relpath)
    face, reason = _DETECTOR.detect(np.asarray(image))
    if face is None:
        return reason, None, False
    # The predictor reads the face in HOG's frame (a CNN face in HOG's box of it, or its MMOD
    # box mapped there): that box is the face prep uses. The detector's raw box is reported beside it.
    if not _inside(face.landmark_box, reference):
        return "box misses the reference points", None, _inside(face.box, reference)
    return None, face.points, _inside(face.box, reference)


def measure(
    kind: str, sample: list[tuple[str, np.ndarray]], workers: int, records: Path | None = None
) -> dict:
    """Prep's path for 150x150 LFW images (`scan.detected_landmarks` decodes them whole, so
    its points are the detector's): decode, detect, main face, 68 -> 5 points."""
    outcomes = detect_all(kind, sample, workers, records)
    return summarise([(outcomes[relpath], reference) for relpath, reference in sample])


def detect_all(
    kind: str, sample: list[tuple[str, np.ndarray]], workers: int, records: Path | None = None
) -> dict[str, dict]:
    """Each image's outcome (reason, points, whether the raw box holds the reference), by image.

    With `records`, each outcome is appended to that JSON Lines file as it comes and images
    already there are not detected again: a run of hours resumes after a crash, and the
    View 2 comparison reuses the points of an all-LFW run."""
    from multiprocessing import Pool

    version = _code_version()
    done = _read_records(records, version) if records else {}
    todo = [item for item in sample if item[0] not in done]
    if not todo:
        return done
    with (
        open(records, "a") if records else nullcontext() as sink,
        Pool(workers, initializer=_start_worker, initargs=(kind,)) as pool,
    ):
        if sink and records.stat().st_size and not records.read_bytes().endswith(b"\n"):
            sink.write("\n")  # a crash cut the last line: start the next one on its own
        results = pool.imap(_detect_one, todo, chunksize=4)
        for (relpath, _), (reason, points, raw_inside) in tqdm(
            zip(todo, results, strict=True), total=len(todo), desc=kind, leave=False
        ):
            record = {
                "image": relpath,
                "reason": reason,
                "points": None if points is None else np.asarray(points).tolist(),
                "raw_inside": raw_inside,
                "code": version,
            }
            done[relpath] = record
            if sink:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
    return done


def _code_version() -> str:
    return hashlib.sha256(DETECT_CODE.read_bytes()).hexdigest()[:16]


def _read_records(path: Path, version: str | None = None) -> dict[str, dict]:
    """Records of an earlier run, by image; a line cut by a crash, or made by other detection
    code than `version` (when given), is dropped (redone)."""
    found = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if version is None or record.get("code") == version:
                found[record["image"]] = record
    return found


def summarise(outcomes: list[tuple[dict, np.ndarray]]) -> dict:
    """NME and failure figures from per-image records and their reference points."""
    errors, reasons, raw_box_misses = [], {}, 0
    for record, reference in outcomes:
        reason = record["reason"]
        raw_box_misses += (
            reason in (None, "box misses the reference points") and not record["raw_inside"]
        )
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        errors.append(_nme(np.asarray(record["points"], np.float64), reference))
    per_point = np.array(errors)
    per_image_nme = per_point.mean(axis=1)
    return {
        "images": len(outcomes),
        "failures": sum(reasons.values()),
        "reasons": reasons,
        "raw_box_misses": raw_box_misses,
        "nme_mean": float(per_image_nme.mean()),
        "nme_median": float(np.median(per_image_nme)),
        "nme_p90": float(np.percentile(per_image_nme, 90)),
        "per_point_median": np.median(per_point, axis=0),
        "per_point_p90": np.percentile(per_point, 90, axis=0),
        "per_image_nme": per_image_nme,
    }


def plot_nme(rows: list[tuple[str, dict]], path: Path) -> Path:
    """Share of images whose detected points lie within a given NME, per detector. Failures
    never get there, so each curve levels off at 1 - its failure rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    for kind, result in rows:
        nme = np.sort(result["per_image_nme"])
        share = np.arange(1, len(nme) + 1) / result["images"]
        nme, share = np.append(nme, max(NME_AXIS, nme[-1])), np.append(share, share[-1])
        axes.step(
            nme,
            share,
            where="post",
            label=f"{kind}: {result['images']:,} images, median {result['nme_median']:.3f}, "
            f"{result['failures']} failures ({100 * result['failures'] / result['images']:.2f} %)",
        )
    axes.axvline(0.05, color="grey", linestyle=":", linewidth=0.8, label="0.05 (target median)")
    axes.axhline(0.5, color="grey", linestyle="-", linewidth=0.4)
    axes.set_xlim(0, NME_AXIS)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("NME: mean point error / reference inter-ocular distance")
    axes.set_ylabel("share of images within it")
    axes.set_title("Detected five points vs LFW's landmark file")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def detect_speed(kind: str, sample: list[tuple[str, np.ndarray]]) -> float:
    """Images per second, one process: decode, detect, 68 -> 5 points, align, JPEG-encode."""
    from facetrain.data_prep.align import align_face
    from facetrain.data_prep.detect import FaceDetector
    from facetrain.data_prep.images import decode_rgb, encode_jpeg, open_image

    detector = FaceDetector(kind)
    start = time.perf_counter()
    for relpath, _ in sample:
        image = decode_rgb(open_image((LFW / "images" / relpath).read_bytes(), relpath), relpath)
        face, _ = detector.detect(np.asarray(image))
        if face is not None:
            encode_jpeg(align_face(image, face.points), 95)
    return len(sample) / (time.perf_counter() - start)


def baseline_speed(sample: list[tuple[str, np.ndarray]]) -> float:
    """Images per second aligning from the landmark file (decode + align + encode)."""
    from facetrain.data_prep.align import align_face
    from facetrain.data_prep.images import encode_jpeg, open_image

    start = time.perf_counter()
    for relpath, reference in sample:
        data = (LFW / "images" / relpath).read_bytes()
        encode_jpeg(align_face(open_image(data, relpath), reference), 95)
    return len(sample) / (time.perf_counter() - start)


def downstream(
    kind: str,
    model_refs: list[str],
    tracking_uri: str | None,
    workers: int,
    records: Path | None = None,
) -> dict:
    """Each trained model verified on LFW View 2 (`pairs.txt`, 10 folds) twice: faces aligned
    from the detector's points and from the reference file. Both arms use the same pairs,
    those whose images the detector found, so the two accuracies differ only by alignment;
    the models share one detection pass, so they are compared on the same points."""
    import mlflow
    from facetrain.data_prep.landmarks import read_landmarks
    from facetrain.pipeline.eval import load_model, run_verification
    from facetrain.pipeline.eval.config import EvalOptions
    from facetrain.pipeline.eval.pairs import read_pairs

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    reference = read_landmarks(LFW / "landmarks.txt")
    pairs = read_pairs(LFW / "pairs.txt")
    keys = sorted(set(pairs.unique_keys()))
    items = [(key, np.asarray(reference[key], np.float64).reshape(5, 2)) for key in keys]
    outcomes = detect_all(kind, items, workers, records)
    detected = {
        key: np.asarray(outcomes[key]["points"], np.float64)
        for key in keys
        if outcomes[key]["reason"] is None
    }
    options = EvalOptions(batch_size=128, workers=workers, device="cpu")
    arms = {
        "reference landmarks": {key: reference[key] for key in detected},
        f"detected ({kind})": detected,
    }
    results = {}
    for model_ref in model_refs:
        model = load_model(model_ref, device="cpu").module
        for arm, landmarks in arms.items():
            verification = run_verification(
                model, pairs=pairs, images=LFW / "images", landmarks=landmarks, options=options
            )
            results[(model_ref, arm)] = verification.summary
    return {"images": len(keys), "detected": len(detected), "arms": results}


def _frame_offsets(item: tuple[str, np.ndarray]) -> np.ndarray | None:
    """(5, 2) offsets of the reference points from the uncorrected detected ones, in the
    detected points' face frame (inter-ocular units along and across the eye line)."""
    from facetrain.data_prep.detect import face_frame, five_from_68
    from facetrain.data_prep.images import decode_rgb, open_image

    relpath, reference = item
    image = decode_rgb(open_image((LFW / "images" / relpath).read_bytes(), relpath), relpath)
    rgb = np.asarray(image)
    face, _ = _DETECTOR.detect(rgb)
    if face is None:
        return None
    raw = five_from_68(_DETECTOR.points_68(rgb, face.landmark_box))
    _, x_axis, y_axis, unit = face_frame(raw)
    delta = (reference - raw) / unit
    return np.stack([delta @ x_axis, delta @ y_axis], axis=1)


def fit_points(sample: list[tuple[str, np.ndarray]], workers: int) -> None:
    """`detect.FIVE_POINT_OFFSETS`: medians over `sample` of the reference points' offsets
    from the 68 -> 5 points, in the face frame (HOG boxes)."""
    from multiprocessing import Pool

    with Pool(workers, initializer=_start_worker, initargs=("hog",)) as pool:
        found = [
            o
            for o in tqdm(pool.imap(_frame_offsets, sample, chunksize=8), total=len(sample))
            if o is not None
        ]
    medians = np.median(np.stack(found), axis=0)
    print(
        f"FIVE_POINT_OFFSETS over {len(found)} images (inter-ocular units, along / across the eye line):"
    )
    for name, (along, across) in zip(POINT_NAMES, medians, strict=True):
        print(f"    ({along:+.4f}, {across:+.4f}),  # {name}")


def fit_mmod(sample: list[tuple[str, np.ndarray]]) -> None:
    from facetrain.data_prep.detect import FaceDetector
    from PIL import Image

    hog, cnn = FaceDetector("hog"), FaceDetector("cnn")
    offsets = []
    for relpath, _ in tqdm(sample, desc="fit mmod", leave=False):
        rgb = np.asarray(Image.open(LFW / "images" / relpath).convert("RGB"))
        hog_boxes, cnn_boxes = hog.find_faces(rgb), cnn.find_faces(rgb)
        if len(hog_boxes) != 1 or len(cnn_boxes) != 1:
            continue
        h, c = hog_boxes[0], cnn_boxes[0]
        offsets.append(((h.left - c.left) / c.width, (h.top - c.top) / c.height, h.width / c.width))
    dx, dy, scale = np.median(np.array(offsets), axis=0)
    print(f"MMOD -> HOG over {len(offsets)} images: offset ({dx:.3f}, {dy:.3f}), scale {scale:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="HOG subset (0: all of LFW)")
    parser.add_argument("--cnn-images", type=int, default=150, help="CNN subset (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", nargs="+", default=["hog", "cnn"], choices=["hog", "cnn"])
    parser.add_argument("--fit-mmod", action="store_true")
    parser.add_argument(
        "--fit-points", action="store_true", help="detect.FIVE_POINT_OFFSETS, on --images"
    )
    parser.add_argument(
        "--downstream",
        nargs="+",
        metavar="MODEL",
        help="run ids, models:/ URIs or checkpoints: View 2 accuracy from detected vs "
        "reference points, each model on the same detections",
    )
    parser.add_argument("--tracking-uri", help="MLflow store holding --downstream's run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for accuracy")
    parser.add_argument(
        "--speed-images", type=int, default=60, help="timed in one process, right after it"
    )
    parser.add_argument("--png", type=Path, help="plot of the NME distribution per detector")
    parser.add_argument(
        "--records",
        type=Path,
        metavar="DIR",
        help="keep each image's outcome in DIR/<detector>.jsonl and skip images already "
        "there: a long run resumes where it stopped, and --downstream reuses its points",
    )
    args = parser.parse_args()
    if args.fit_mmod:
        fit_mmod(_subset(args.cnn_images, args.seed + 1))
        return
    if args.fit_points:
        fit_points(_subset(args.images, args.seed + 2), args.workers)
        return
    records_of = {}
    if args.records:
        args.records.mkdir(parents=True, exist_ok=True)
        records_of = {kind: args.records / f"{kind}.jsonl" for kind in args.detectors}
    if args.downstream:
        kind = args.detectors[0]
        result = downstream(
            kind, args.downstream, args.tracking_uri, args.workers, records_of.get(kind)
        )
        print(
            f"View 2 pairs.txt: {result['detected']} of {result['images']} images detected "
            f"({kind}); pairs with an undetected image are left out of both arms"
        )
        print("| model | landmarks | pairs | accuracy % | AUC |\n|---|---|---:|---|---:|")
        for (model, arm), summary in result["arms"].items():
            print(
                f"| `{model}` | {arm} | {summary['pairs']} | "
                f"{100 * summary['accuracy']:.2f} ± {100 * summary['accuracy_std']:.2f} | "
                f"{summary['auc']:.4f} |"
            )
        for model in args.downstream:
            reference_arm, detected_arm = (
                result["arms"][(model, arm)]["accuracy"]
                for arm in ("reference landmarks", f"detected ({kind})")
            )
            gap = 100 * (reference_arm - detected_arm)
            print(f"`{model}`: gap {gap:.2f} pp (target <= 0.5)")
        return
    rows = []
    for kind, count in (("hog", args.images), ("cnn", args.cnn_images)):
        if kind not in args.detectors:
            continue
        sample = _subset(count, args.seed)
        result = measure(kind, sample, args.workers, records_of.get(kind))
        timed = sample[: args.speed_images]
        result["images_per_s"] = detect_speed(kind, timed)
        result["baseline_per_s"] = baseline_speed(timed)
        rows.append((kind, result))
    print(
        "| detector | images | NME mean | median | p90 | failures | detector's raw box misses | "
        "img/s | img/s from landmark file | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in rows:
        print(
            f"| {kind} | {r['images']} | {r['nme_mean']:.3f} | {r['nme_median']:.3f} | "
            f"{r['nme_p90']:.3f} | {r['failures']} ({100 * r['failures'] / r['images']:.1f} %) | "
            f"{r['raw_box_misses']} ({100 * r['raw_box_misses'] / r['images']:.1f} %) | "
            f"{r['images_per_s']:.1f} | {r['baseline_per_s']:.0f} | "
            f"{r['images_per_s'] / r['baseline_per_s']:.3f} |"
        )
    if args.png and rows:
        print(f"plot: {plot_nme(rows, args.png)}")
    for kind, r in rows:
        print(f"\n{kind}: failure reasons {r['reasons']}")
        for name, median, p90 in zip(
            POINT_NAMES, r["per_point_median"], r["per_point_p90"], strict=True
        ):
            print(f"  {name:12s} NME median {median:.3f}  p90 {p90:.3f}")


if __name__ == "__main__":
    main()
