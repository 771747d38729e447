"""On real LFW faces: a few dozen pairs, aligned by prep's code, with a tiny random model."""

import json

import pytest
from facetrain.jobs.cli import main
from facetrain.pipeline.eval import export_model

pytestmark = pytest.mark.lfw


def test_verify_a_few_dozen_lfw_pairs_end_to_end(lfw_root, tmp_path):
    from facetrain.pipeline.models import build_backbone

    lines = (lfw_root / "pairsDevTest.txt").read_text().splitlines()
    same, different = lines[1:501], lines[501:1001]
    # Different pairs 80..95 hold Betsy_Coffin_0001, an image absent from this copy of LFW.
    assert any(line.startswith("Betsy_Coffin") for line in different[80:96])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("16\n" + "\n".join(same[:16] + different[80:96]) + "\n")

    model = tmp_path / "tiny.ts"
    export_model(build_backbone("tiny", embedding_size=32).eval(), model, "torchscript")
    out = tmp_path / "lfw.json"
    assert (
        main(
            [
                "eval",
                "verify",
                "--model",
                str(model),
                "--pairs",
                str(pairs),
                "--images",
                str(lfw_root / "images"),
                "--landmarks",
                str(lfw_root / "landmarks.txt"),
                "--json",
                str(out),
                "--no-mlflow",
                "--set",
                "progress=false",
                "--set",
                "device=cpu",
                "--set",
                "workers=2",
            ]
        )
        == 0
    )
    summary = json.loads(out.read_text())
    assert summary["pairs_listed"] == 32
    assert summary["skipped_pairs"] == 1 and summary["pairs"] == 31
    assert "Betsy_Coffin/Betsy_Coffin_0001.jpg: missing file" in summary["skipped"][0]["reason"]
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["auc"] <= 1.0
    assert set(summary["tar_at_far"]) == {"0.01", "0.001"}
