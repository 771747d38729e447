"""Verification from embeddings and from images: skipped pairs are counted, never hidden."""

import json

import numpy as np
import pytest
from facetrain.pipeline.eval import (
    EmbeddingTable,
    EvalOptions,
    read_pairs,
    run_verification,
    verify_embeddings,
)
from facetrain.pipeline.eval.metrics import cosine_scores
from facetrain.pipeline.eval.verify import summarise_scores

from tests.pipeline.eval.helpers import ProjectionNet, write_face_folder, write_pairs_file

OPTIONS = EvalOptions(device="cpu", progress=False, workers=2, batch_size=8)


def _table_for(pairs, rng, dim=8):
    keys = pairs.unique_keys()
    return EmbeddingTable(keys, rng.normal(size=(len(keys), dim)).astype(np.float32))


def test_pairs_with_missing_embeddings_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    pairs = read_pairs(write_pairs_file(tmp_path / "pairs.txt", identities=10, per_identity=3))
    full = _table_for(pairs, rng)
    dropped = {"Person_3/Person_3_0002.jpg", "Person_7/Person_7_0001.jpg"}
    kept = [k for k in full.keys if k not in dropped]
    table = EmbeddingTable(kept, full.rows(kept))

    result = verify_embeddings(
        table, pairs, failures={"Person_3/Person_3_0002.jpg": "missing file"}
    )
    summary = result.summary
    uses_dropped = np.asarray(
        [a in dropped or b in dropped for a, b in zip(pairs.keys_a, pairs.keys_b, strict=True)]
    )
    assert summary["skipped_pairs"] == int(uses_dropped.sum()) > 0
    assert summary["pairs"] == len(pairs) - summary["skipped_pairs"]
    assert summary["pairs_listed"] == len(pairs)
    reasons = " ".join(record["reason"] for record in summary["skipped"])
    assert "Person_3/Person_3_0002.jpg: missing file" in reasons
    assert "Person_7/Person_7_0001.jpg: no embedding for this key" in reasons

    # The figures are those of the remaining pairs alone, with their own folds.
    remaining = pairs.subset(~uses_dropped)
    scores = cosine_scores(table.rows(remaining.keys_a), table.rows(remaining.keys_b))
    expected = summarise_scores(scores, remaining.is_same, remaining.folds)
    for key in ("accuracy", "accuracy_std", "auc", "eer", "threshold", "tar_at_far"):
        assert summary[key] == expected[key]
    json.dumps(summary)  # the summary is the JSON document: it must serialise


def test_fit_pairs_protocol_reports_the_test_list(tmp_path):
    rng = np.random.default_rng(1)
    pairs = read_pairs(write_pairs_file(tmp_path / "test.txt", identities=10, per_identity=3))
    table = _table_for(pairs, rng)
    summary = verify_embeddings(table, pairs, fit_pairs=pairs).summary
    assert summary["fit_pairs"] == len(pairs) and summary["fit_skipped_pairs"] == 0
    assert summary["protocol"] == "threshold fitted on --fit-pairs"


def test_verification_from_images_with_missing_and_corrupt_files(tmp_path):
    images = tmp_path / "images"
    write_face_folder(images, identities=8, per_identity=3)
    (images / "Person_2/Person_2_0003.jpg").unlink()
    (images / "Person_5/Person_5_0002.jpg").write_bytes(b"not a jpeg")
    pairs_path = write_pairs_file(tmp_path / "pairs.txt", identities=8, per_identity=3)

    result = run_verification(ProjectionNet(), pairs=pairs_path, images=images, options=OPTIONS)
    summary = result.summary
    reasons = {record["reason"] for record in summary["skipped"]}
    assert "Person_2/Person_2_0003.jpg: missing file" in reasons
    assert any(reason.startswith("Person_5/Person_5_0002.jpg: ") for reason in reasons)
    # Person_2_0003 is in 1 same + 1 different pair, Person_5_0002 likewise.
    assert summary["skipped_pairs"] == 4
    assert summary["pairs"] == summary["pairs_listed"] - 4
    # Noisy copies of one base image are far more alike than two identities' images.
    assert summary["accuracy"] == 1.0 and summary["auc"] == 1.0


def test_unaligned_images_without_landmarks_are_a_usage_error(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    (images / "Person_0").mkdir(parents=True)
    for number in (1, 2):
        Image.new("RGB", (150, 150)).save(images / f"Person_0/Person_0_{number:04d}.jpg")
    pairs_path = tmp_path / "pairs.txt"
    pairs_path.write_text("1\nPerson_0\t1\t2\nPerson_0\t1\tPerson_0\t2\n")
    with pytest.raises(
        ValueError, match=r"150x150, expected an aligned 112x112 face; pass --landmarks"
    ):
        run_verification(ProjectionNet(), pairs=pairs_path, images=images, options=OPTIONS)
