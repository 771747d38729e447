"""MODEL on the command line -> a torch module, whichever of the accepted forms it takes.

- a training checkpoint (`checkpoint.dir` or one `step-*` folder, via
  `pipeline.train.checkpoint.load_backbone`), or a TorchScript file from `facetrain export` (so an
  exported model can be evaluated like the original);
- an MLflow run id (32 hex digits) -> `runs:/<id>/model`, the backbone the trainer logged;
- a `runs:/...` or `models:/name/version` (or `models:/name@alias`) URI -> mlflow.pytorch.

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
    import mlflow.pytorch

    try:
        module = mlflow.pytorch.load_model(uri, map_location=device)
    except Exception as err:  # mlflow raises its own exception types per store and version
        raise ValueError(f"MODEL {uri}: could not be loaded from MLflow ({err})") from err
    try:
        return module.eval()
    except (NotImplementedError, RuntimeError):
        # mlflow's "pt2" format loads a torch.export graph: its mode is fixed at export time.
        return _exported_backbone(module)


def _exported_backbone(exported: torch.nn.Module) -> torch.nn.Module:
    """Adapt a torch.export module: no train/eval switch, and a batch size that may be fixed
    (exported from a one-row input example), in which case rows are run one at a time."""
    import torch

    class ExportedBackbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.exported = exported
            self.one_row_at_a_time = False

        def train(self, mode: bool = True):
            self.training = mode  # the graph's own mode was fixed when it was exported
            return self

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if not self.one_row_at_a_time:
                try:
                    return self.exported(images)
                except (AssertionError, RuntimeError):
                    if images.shape[0] == 1:
                        raise
                    self.one_row_at_a_time = True
            return torch.cat(
                [self.exported(images[row : row + 1]) for row in range(images.shape[0])]
            )

    return ExportedBackbone()
