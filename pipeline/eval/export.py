"""Export a backbone to TorchScript (and ONNX when `onnx` is installed), checked for equivalence.

An export is only written if the exported model reproduces the original's raw outputs to
`tolerance` (1e-5 by default) on a batch of random faces; the largest difference is returned.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FORMATS = ("torchscript", "onnx")
DEFAULT_TOLERANCE = 1e-5


class ExportMismatch(RuntimeError):
    """The exported model's outputs differ from the original's by more than the tolerance."""


def available_formats() -> list[str]:
    return ["torchscript"] + (["onnx"] if importlib.util.find_spec("onnx") else [])


def _example_batch(batch_size: int = 4, seed: int = 0) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, 112, 112, generator=generator) * 2 - 1


def export_torchscript(
    model: torch.nn.Module, path: str | Path, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    """Trace `model` on [B, 3, 112, 112] input, save it, reload it and compare outputs."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = _example_batch()
    # torch marks TorchScript deprecated in favour of torch.export; it is still what C++/serving
    # stacks load, so the warning is expected noise here.
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = isinstance(model, torch.jit.ScriptModule)  # already TorchScript: save as is
        traced = model if scripted else torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))
        reloaded = torch.jit.load(str(path))
        checked = _example_batch(batch_size=3, seed=1)  # another batch size than the trace
        difference = (reloaded(checked) - model(checked)).abs().max().item()
    _check(difference, tolerance, path)
    return {"format": "torchscript", "path": str(path), "max_abs_difference": difference}


def export_onnx(
    model: torch.nn.Module, path: str | Path, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    """ONNX with a dynamic batch axis; compared with onnxruntime when it is installed."""
    import torch

    if importlib.util.find_spec("onnx") is None:
        raise RuntimeError("ONNX export needs the `onnx` package: pip install 'facetrain[onnx]'")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = _example_batch()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        verbose=False,
    )
    onnx.checker.check_model(str(path))
    result = {"format": "onnx", "path": str(path), "max_abs_difference": None}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        checked = _example_batch(batch_size=3, seed=1)
        (exported,) = session.run(["embeddings"], {"images": checked.numpy()})
        with torch.inference_mode():
            original = model(checked).numpy()
        difference = float(abs(exported - original).max())
        _check(difference, tolerance, path)
        result["max_abs_difference"] = difference
    return result


def export_model(
    model: torch.nn.Module, path: str | Path, format: str, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    if format == "torchscript":
        return export_torchscript(model, path, tolerance)
    if format == "onnx":
        return export_onnx(model, path, tolerance)
    raise ValueError(f"export format {format!r}: expected one of {', '.join(FORMATS)}")


def _check(difference: float, tolerance: float, path: Path) -> None:
    if not difference <= tolerance:
        path.unlink(missing_ok=True)
        raise ExportMismatch(
            f"export {path}: outputs differ from the original by {difference:.3g} "
            f"(> tolerance {tolerance:g}); nothing written"
        )
