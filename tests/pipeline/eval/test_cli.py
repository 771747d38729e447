"""`facetrain eval|embed|export` end to end on a synthetic face folder."""

import json
import shutil

import numpy as np
import pytest
from facetrain.jobs.cli import main
from facetrain.pipeline.eval import export_model, read_embeddings

from tests.pipeline.eval.helpers import ProjectionNet, write_face_folder, write_pairs_file

VERIFY_KEYS = {
    "accuracy",
    "accuracy_std",
    "auc",
    "eer",
    "threshold",
    "tar_at_far",
    "pairs",
    "skipped_pairs",
}
FAST = ["--set", "progress=false", "--set", "device=cpu", "--set", "workers=2"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_face_folder(root / "images", identities=10, per_identity=3)
    pairs = write_pairs_file(root / "pairs.txt", identities=10, per_identity=3)
    model = root / "model.ts"
    export_model(ProjectionNet().eval(), model, "torchscript")  # a MODEL file the CLI loads
    return root, pairs, model


def test_embed_then_verify_from_embeddings_equals_verify_from_model(faces, tmp_path):
    root, pairs, model = faces
    embeddings = tmp_path / "e.parquet"
    assert (
        main(
            [
                "embed",
                "--model",
                str(model),
                "--images",
                str(root / "images"),
                "--out",
                str(embeddings),
                *FAST,
            ]
        )
        == 0
    )
    table = read_embeddings(embeddings)
    assert len(table) == 30 and table.keys[0] == "Person_0/Person_0_0001.jpg"
    np.testing.assert_allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-5)

    from_embeddings, from_model = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        main(
            [
                "eval",
                "verify",
                "--embeddings",
                str(embeddings),
                "--pairs",
                str(pairs),
                "--json",
                str(from_embeddings),
                "--no-mlflow",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                "verify",
                "--model",
                str(model),
                "--images",
                str(root / "images"),
                "--pairs",
                str(pairs),
                "--json",
                str(from_model),
                "--no-mlflow",
                *FAST,
            ]
        )
        == 0
    )
    a, b = json.loads(from_embeddings.read_text()), json.loads(from_model.read_text())
    assert set(a) >= VERIFY_KEYS
    assert set(a["tar_at_far"]) == {"0.01", "0.001"}
    assert a["pairs"] == 40 and a["skipped_pairs"] == 0 and 0.0 <= a["accuracy"] <= 1.0
    for key in ("accuracy", "auc", "eer", "threshold"):
        assert a[key] == pytest.approx(b[key], abs=1e-5)
    assert from_embeddings.with_suffix(".roc.png").stat().st_size > 1000  # the ROC plot beside it


def test_cluster_and_identify_write_json(faces, tmp_path):
    root, _, model = faces
    for task, keys in (
        ("cluster", {"precision", "recall", "f1", "nmi", "threshold"}),
        ("identify", {"rank1", "rank5"}),
    ):
        out = tmp_path / f"{task}.json"
        assert (
            main(
                [
                    "eval",
                    task,
                    "--model",
                    str(model),
                    "--images",
                    str(root / "images"),
                    "--json",
                    str(out),
                    "--no-mlflow",
                    *FAST,
                ]
            )
            == 0
        )
        summary = json.loads(out.read_text())
        assert keys <= set(summary) and summary["skipped_images"] == 0
        assert summary.get("f1", summary.get("rank1")) == 1.0  # noisy copies: an easy set

    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    (images / "Person_4/Person_4_0002.jpg").write_bytes(b"")
    out = tmp_path / "identify-skipped.json"
    assert (
        main(
            [
                "eval",
                "identify",
                "--model",
                str(model),
                "--images",
                str(images),
                "--json",
                str(out),
                "--no-mlflow",
                *FAST,
            ]
        )
        == 0
    )
    summary = json.loads(out.read_text())
    assert (
        summary["skipped_images"] == 1
        and summary["skipped"][0]["key"] == "Person_4/Person_4_0002.jpg"
    )
    assert summary["probes"] + summary["gallery_images"] == 29


def test_export_cli_writes_an_equivalent_model(faces, tmp_path, capsys):
    _, _, model = faces
    out = tmp_path / "again.ts"
    assert main(["export", "--model", str(model), "--out", str(out)]) == 0
    assert out.is_file() and "max |difference|" in capsys.readouterr().out


def test_results_go_to_a_new_mlflow_run_or_onto_a_given_one(faces, tmp_path, mlflow_uri):
    from facetrain.pipeline.eval import (
        EmbeddingTable,
        log_verification,
        read_pairs,
        verify_embeddings,
    )
    from mlflow.tracking import MlflowClient

    root, pairs, _ = faces
    embeddings = tmp_path / "e.npz"
    assert (
        main(
            [
                "embed",
                "--model",
                str(faces[2]),
                "--images",
                str(root / "images"),
                "--out",
                str(embeddings),
                *FAST,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                "verify",
                "--embeddings",
                str(embeddings),
                "--pairs",
                str(pairs),
                "--name",
                "mini",
                "--tracking-uri",
                mlflow_uri,
            ]
        )
        == 0
    )
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("facetrain-eval").experiment_id])
    assert {"mini/accuracy", "mini/auc", "mini/eer", "mini/tar_at_far_0.001"} <= set(
        run.data.metrics
    )
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "eval/mini")}
    assert artifacts == {"eval/mini/roc-mini.png", "eval/mini/verify-mini.json"}

    training_run = client.create_run(client.create_experiment("training")).info.run_id
    table: EmbeddingTable = read_embeddings(embeddings)
    verification = verify_embeddings(table, read_pairs(pairs))
    assert (
        log_verification(verification, "lfw", run_id=training_run, step=7, tracking_uri=mlflow_uri)
        == training_run
    )
    history = client.get_metric_history(training_run, "lfw/accuracy")
    assert [(m.value, m.step) for m in history] == [(verification.summary["accuracy"], 7)]


def test_usage_errors_exit_2_and_name_the_input(faces, tmp_path, capsys):
    root, pairs, model = faces
    assert (
        main(
            [
                "eval",
                "verify",
                "--embeddings",
                str(tmp_path / "none.parquet"),
                "--pairs",
                str(pairs),
                "--no-mlflow",
            ]
        )
        == 2
    )
    assert "none.parquet: not found" in capsys.readouterr().err
    assert (
        main(["eval", "verify", "--model", str(model), "--pairs", str(pairs), "--no-mlflow"]) == 2
    )
    assert "needs --images ROOT" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "verify",
                "--model",
                "nope",
                "--images",
                str(root),
                "--pairs",
                str(pairs),
                "--no-mlflow",
            ]
        )
        == 2
    )
    assert "MODEL 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "verify",
                "--embeddings",
                "e.parquet",
                "--pairs",
                str(pairs),
                "--set",
                "folds=1",
            ]
        )
        == 2
    )
    assert "key 'folds'" in capsys.readouterr().err
