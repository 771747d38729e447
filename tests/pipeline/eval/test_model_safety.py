"""MLflow models are plain weights + model JSON with a pyfunc flavour: loaded through the
backbone registry, served by `mlflow models serve`, and pickled models are refused unread."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from facetrain.jobs.cli import main
from facetrain.pipeline.config import ModelConfig
from facetrain.pipeline.eval import load_model
from facetrain.pipeline.eval.embed import embed_faces
from facetrain.pipeline.models import backbone_from_config
from facetrain.pipeline.train.tracking import log_backbone

from tests.pipeline.planted import WritesMarker

MODEL_CFG = ModelConfig(backbone="tiny", embedding_size=8)


def trained_like_backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = backbone_from_config(MODEL_CFG)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # not the constructor's weights
    return model.eval()


def faces(count: int = 3) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)


@pytest.fixture
def logged(mlflow_uri):
    import mlflow

    model = trained_like_backbone()
    with mlflow.start_run() as run:
        log_backbone(model, MODEL_CFG, registered_model="tiny-embedder")
    return model, run.info.run_id


def test_model_is_logged_as_plain_weights_and_loads_by_run_and_name(logged):
    import mlflow.artifacts

    model, run_id = logged
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model")
    flavors = yaml.safe_load(Path(local, "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"}  # no pickled torch flavour
    described = json.loads(Path(local, "artifacts", "facetrain-model.json").read_text())
    assert described["backbone"] == "tiny" and described["embedding_size"] == 8
    assert described["input_size"] == [112, 112] and described["alignment_template"]["name"] == "arcface"
    expected = embed_faces(model, faces())
    for reference in (run_id, "models:/tiny-embedder/1"):
        loaded = load_model(reference)
        np.testing.assert_allclose(embed_faces(loaded.module, faces()), expected, atol=1e-6)


def test_pyfunc_returns_l2_normalised_embeddings(logged):
    import mlflow.pyfunc

    model, _ = logged
    served = mlflow.pyfunc.load_model("models:/tiny-embedder/1").predict(faces())
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, embed_faces(model, faces()), atol=1e-5)


class EvilNet(torch.nn.Module):
    """Unpickling it writes a marker: what a tamperer would log as a model."""

    def __init__(self, marker):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.marker = marker

    def __reduce_ex__(self, protocol):
        return WritesMarker(self.marker).__reduce__()


def test_pickled_mlflow_model_is_refused_and_never_unpickled(mlflow_uri, tmp_path):
    import mlflow
    import mlflow.pytorch

    marker = tmp_path / "marker"
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(
            EvilNet(marker), name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickled torch module.*facetrain checkpoint convert"):
        load_model(run.info.run_id)
    assert not marker.exists()


def test_planted_model_folder_is_refused(tmp_path):
    from facetrain.pipeline.models.saved import save_model_dir

    folder = save_model_dir(trained_like_backbone(), MODEL_CFG, tmp_path / "model")
    marker = tmp_path / "marker"
    torch.save({"weights": WritesMarker(marker)}, folder / "weights.safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_model(str(folder))
    assert not marker.exists()


def test_old_pickled_model_converts_after_confirmation(mlflow_uri, tmp_path):
    import mlflow
    import mlflow.pytorch

    model = trained_like_backbone(seed=1)
    with mlflow.start_run() as run:
        mlflow.log_dict({"model": MODEL_CFG.model_dump(mode="json")}, "config.yaml")
        mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    with pytest.raises(ValueError, match="facetrain checkpoint convert"):
        load_model(run.info.run_id)
    new = tmp_path / "converted"
    assert main(["checkpoint", "convert", run.info.run_id, str(new)]) == 2  # not confirmed
    assert main(["checkpoint", "convert", run.info.run_id, str(new), "--trust-source"]) == 0
    converted = load_model(str(new)).module
    np.testing.assert_allclose(
        embed_faces(converted, faces()), embed_faces(model, faces()), atol=1e-6
    )


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_real_request(logged, mlflow_uri):
    from facetrain.pipeline.ports import free_port

    model, _ = logged
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny-embedder/1",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        # mlflow execs `uvicorn` by name: the venv's bin must be on PATH even when not activated.
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError as err:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start: {server.stderr.read().decode()[-2000:]}") from err
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": faces(2).tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    embeddings = np.asarray(answer["predictions"], dtype=np.float32)
    np.testing.assert_allclose(embeddings, embed_faces(model, faces(2)), atol=1e-5)
