"""MODEL on the command line -> a torch module, whichever of the accepted forms it takes.

- a training checkpoint (`checkpoint.dir` or one `step-*` folder, via
  `pipeline.train.checkpoint.load_backbone`), a model folder (`pipeline/models/saved.py`), or a
  TorchScript file from `facetrain export` (so an exported model can be evaluated like the
  original);
- an MLflow run id (32 hex digits) -> `runs:/<id>/model`, the backbone the trainer logged;
- a `runs:/...` or `models:/name/version` (or `models:/name@alias`) URI.

MLflow models load from their plain artifacts (safetensors weights + model JSON), rebuilt
through the backbone registry. Models logged as pickled torch modules (`mlflow.pytorch`, the
old facetrain format) are refused: loading them would run whatever code they carry.
`facetrain checkpoint convert URI NEW` rewrites one from a trusted source as a model folder.

`run_id` is set when MODEL names a run, so evaluation results can be logged onto that run.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
LOGGED_MODEL_NAME = "model"


@dataclass
class LoadedModel:
    module: torch.nn.Module
    uri: str  # what was loaded, for logs and MLflow params
    run_id: str | None = None  # the training run, when MODEL names one


def load_model(reference: str, device: str = "cpu") -> LoadedModel:
    path = Path(reference)
    if path.exists():
        return LoadedModel(_load_path(path, device), uri=str(path))
    if RUN_ID.match(reference):
        uri = f"runs:/{reference}/{LOGGED_MODEL_NAME}"
        return LoadedModel(_load_mlflow(uri, device), uri=uri, run_id=reference)
    if reference.startswith("runs:/"):
        run_id = reference[len("runs:/") :].split("/", 1)[0]
        return LoadedModel(_load_mlflow(reference, device), uri=reference, run_id=run_id)
    if reference.startswith("models:/"):
        return LoadedModel(_load_mlflow(reference, device), uri=reference)
    raise ValueError(
        f"MODEL {reference!r}: not an existing file, an MLflow run id (32 hex digits), "
        f"a runs:/<run_id>/model URI or a models:/<name>/<version> URI"
    )


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry compiled `code/`; plain torch.save checkpoints do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_path(path: Path, device: str) -> torch.nn.Module:
    """A TorchScript file, or a training checkpoint (a `checkpoint.dir` or one step folder)."""
    import torch
    from facetrain.pipeline.models.saved import is_model_dir, load_model_dir

    if path.is_dir() and is_model_dir(path):
        return load_model_dir(path).to(device).eval()
    if path.is_file() and is_torchscript(path):
        with warnings.catch_warnings():  # deprecated in favour of torch.export, still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    from facetrain.pipeline.train.checkpoint import load_backbone

    try:
        return load_backbone(path).to(device).eval()
    except FileNotFoundError as err:
        raise ValueError(
            f"MODEL {path}: neither a TorchScript file nor a facetrain checkpoint ({err})"
        ) from err


def _load_mlflow(uri: str, device: str) -> torch.nn.Module:
    from facetrain.pipeline.models.saved import load_model_dir

    return load_model_dir(_download_safe_model(uri)).to(device).eval()


def _download_safe_model(uri: str) -> Path:
    """The local folder holding the plain weights and model JSON of the MLflow model `uri`;
    refuses a model in any other (pickled) form before anything of it is deserialised."""
    import mlflow.artifacts
    import yaml

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # mlflow raises its own exception types per store and version
        raise ValueError(f"MODEL {uri}: could not be loaded from MLflow ({err})") from err
    try:
        flavors = yaml.safe_load((local / "MLmodel").read_text()).get("flavors", {})
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"MODEL {uri}: no readable MLmodel file ({err})") from err
    artifacts = local / "artifacts"
    from facetrain.pipeline.models.saved import is_model_dir

    if "python_function" in flavors and is_model_dir(artifacts):
        return artifacts
    kind = (
        f"a pickled torch module (mlflow.pytorch, {flavors['pytorch'].get('serialization_format', 'pickle')})"
        if "pytorch" in flavors
        else f"flavours {sorted(flavors)} without facetrain's plain weights"
    )
    raise ValueError(
        f"MODEL {uri}: logged as {kind}, which facetrain does not load because unpickling it "
        f"could run code; if you trust where it came from, convert it with "
        f"`facetrain checkpoint convert {uri} NEW` and pass NEW as --model"
    )


def convert_mlflow_model(uri: str, new: str | Path) -> Path:
    """Rewrite an old pickled MLflow model (`uri`: run id, runs:/ or models:/ URI) as a model
    folder `new` (plain weights + model JSON). Unpickles `uri`: a trusted source only.

    The model config comes from the `config.yaml` the trainer logged on the model's run."""
    import mlflow
    import mlflow.pytorch
    import yaml
    from facetrain.pipeline.config import ModelConfig
    from facetrain.pipeline.models.saved import save_model_dir

    new = Path(new)
    if new.exists() and any(new.iterdir()):
        raise FileExistsError(f"model folder {new}: already exists and is not empty")
    if RUN_ID.match(uri):
        uri = f"runs:/{uri}/{LOGGED_MODEL_NAME}"
    try:
        run_id = _run_of(uri)
        # The trainer logs config.yaml with mlflow.log_dict: YAML, not JSON.
        config = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
        module = mlflow.pytorch.load_model(uri, map_location="cpu")  # trusted by the user
    except Exception as err:  # mlflow raises its own exception types per store and version
        raise ValueError(f"MODEL {uri}: could not be read from MLflow ({err})") from err
    return save_model_dir(module, ModelConfig.model_validate(config["model"]), new)


def _run_of(uri: str) -> str:
    import mlflow

    if uri.startswith("runs:/"):
        return uri[len("runs:/") :].split("/", 1)[0]
    name_version = uri[len("models:/") :]
    client = mlflow.MlflowClient()
    if "@" in name_version:
        name, alias = name_version.split("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    name, version = name_version.split("/", 1)
    return client.get_model_version(name, version).run_id
