"""Embedding (flip + L2), alignment by prep's code, model references, export equivalence."""

import numpy as np
import pytest
import torch
from facetrain.pipeline.eval import EvalOptions, export_model, load_model, verify_bin, write_bin
from facetrain.pipeline.eval.embed import FolderImages, embed_faces, embed_images
from facetrain.pipeline.eval.export import ExportMismatch
from PIL import Image

from tests.pipeline.eval.helpers import ProjectionNet, write_face_folder

OPTIONS = EvalOptions(device="cpu", progress=False, workers=2, batch_size=4)


def test_embedding_is_normalised_sum_of_image_and_flipped_image():
    model = ProjectionNet().double()
    faces = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    got = embed_faces(model.float(), faces)
    # Reference in float64, written out: pixels/127.5 - 1, CHW, flip the width axis.
    pixels = torch.from_numpy(faces.astype(np.float64) / 127.5 - 1.0).permute(0, 3, 1, 2)
    model = model.double()
    with torch.no_grad():
        summed = model(pixels) + model(torch.flip(pixels, dims=[3]))
    expected = (summed / summed.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # Without flip it is just the normalised output, which differs (the model is not symmetric).
    unflipped = embed_faces(model.float(), faces, flip=False)
    assert np.abs(unflipped - got).max() > 1e-3


def test_folder_with_landmarks_is_aligned_by_prep_code(tmp_path):
    from facetrain.data_prep.align import align_face

    rng = np.random.default_rng(1)
    (tmp_path / "A").mkdir()
    raw = Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    raw.save(tmp_path / "A/A_0001.png")
    points = np.array([[60, 65], [90, 65], [75, 82], [62, 98], [88, 98]], dtype=np.float64)
    source = FolderImages(tmp_path, {"A/A_0001.png": points})
    np.testing.assert_array_equal(
        np.asarray(source.load("A/A_0001.png")), np.asarray(align_face(raw, points))
    )

    table, failures = embed_images(
        ProjectionNet(), ["A/A_0001.png", "A/A_0002.png"], source, progress=False
    )
    assert table.keys == ["A/A_0001.png"]
    assert failures == {"A/A_0002.png": "no landmark row for this image"}


def test_bin_verification_end_to_end(tmp_path):
    images = tmp_path / "faces"
    keys = write_face_folder(images, identities=10, per_identity=2)
    encoded = [(images / key).read_bytes() for key in keys]  # identity p: images 2p, 2p+1
    pairs, is_same = [], []
    for person in range(10):
        pairs += [encoded[2 * person], encoded[2 * person + 1]]
        is_same.append(True)
        pairs += [encoded[2 * person], encoded[2 * ((person + 1) % 10) + 1]]
        is_same.append(False)
    pairs[5] = b"broken"  # the second image of the third pair cannot be decoded
    path = write_bin(tmp_path / "mini.bin", pairs, is_same)
    summary = verify_bin(ProjectionNet(), path, OPTIONS)
    assert (
        summary["pairs_listed"] == 20 and summary["skipped_pairs"] == 1 and summary["pairs"] == 19
    )
    assert summary["accuracy"] == 1.0


def test_torchscript_export_gives_the_same_embeddings(tmp_path):
    model = ProjectionNet().eval()
    result = export_model(model, tmp_path / "model.pt", "torchscript")
    assert result["max_abs_difference"] <= 1e-5
    loaded = load_model(str(tmp_path / "model.pt"))  # detected as TorchScript
    faces = np.random.default_rng(2).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        embed_faces(loaded.module, faces), embed_faces(model, faces), atol=1e-5
    )


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_export_refuses_a_model_that_does_not_trace_faithfully(tmp_path):
    class DataDependent(torch.nn.Module):  # tracing freezes the branch taken on the example
        def __init__(self):
            super().__init__()
            self.net = ProjectionNet()

        def forward(self, images):
            out = self.net(images)
            return out if images.shape[0] == 4 else -out

    with pytest.raises(ExportMismatch, match="outputs differ from the original"):
        export_model(DataDependent(), tmp_path / "bad.pt", "torchscript")
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.parametrize("serialization", ["pickle", "pt2"])
def test_models_logged_by_mlflow_pytorch_are_refused(mlflow_uri, serialization):
    """Only facetrain's plain-weights pyfunc loads (tests/pipeline/eval/test_model_safety.py);
    an mlflow.pytorch model, in either serialisation, is refused with the convert route."""
    import mlflow
    import mlflow.pytorch

    example = np.zeros((1, 3, 112, 112), np.float32)
    mlflow.set_experiment("refusals")  # not an experiment id cached from another store
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(
            ProjectionNet().eval(),
            name="model",
            registered_model_name="tiny-embedder",
            input_example=example,
            serialization_format=serialization,
            pip_requirements=["torch"],  # skips slow inference
        )
    for reference in (run.info.run_id, "models:/tiny-embedder/1"):
        with pytest.raises(ValueError, match="facetrain checkpoint convert"):
            load_model(reference)
    with pytest.raises(ValueError, match="not an existing file, an MLflow run id"):
        load_model("no-such-model")


def test_onnx_export_gives_the_same_outputs(tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = ProjectionNet().eval()
    result = export_model(model, tmp_path / "model.onnx", "onnx")
    assert result["max_abs_difference"] <= 1e-5
    session = onnxruntime.InferenceSession(
        str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    images = torch.rand(7, 3, 112, 112) * 2 - 1  # a batch size used by neither export nor check
    (exported,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(exported, model(images).numpy(), atol=1e-5)


def test_model_reference_to_a_training_checkpoint(tmp_path):
    checkpoint = pytest.importorskip("facetrain.pipeline.train.checkpoint")
    from facetrain.pipeline.config import TrainConfig
    from facetrain.pipeline.models import build_backbone

    config = TrainConfig.model_validate(
        {
            "data": {"shards": "unused"},
            "model": {"backbone": "tiny", "embedding_size": 16},
            "loss": [{"type": "softmax"}],
        }
    ).model_dump(mode="json")
    torch.manual_seed(0)
    backbone = build_backbone("tiny", 16).eval()
    checkpoint.save_checkpoint(
        tmp_path / "ckpt",
        step=5,
        rank=0,
        world_size=1,
        barrier=lambda: None,
        config=config,
        backbone_state=backbone.state_dict(),
        replicated={},
        shard=None,
        rank_local={},
    )
    faces = np.random.default_rng(4).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    expected = embed_faces(backbone, faces)
    for reference in (tmp_path / "ckpt", tmp_path / "ckpt" / "step-00000005"):
        loaded = load_model(str(reference))
        assert loaded.run_id is None
        np.testing.assert_allclose(embed_faces(loaded.module, faces), expected, atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a TorchScript file nor a facetrain checkpoint"):
        load_model(str(tmp_path / "empty"))
