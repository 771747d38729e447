"""A trained backbone as plain files: weights as safetensors and its model config as JSON.

    <folder>/weights.safetensors    the backbone state_dict (tensors only: nothing to unpickle)
    <folder>/facetrain-model.json   backbone name, embedding size, input size, normalisation,
                                    alignment template, and the `model` config section

This is how facetrain logs models to MLflow (as the artifacts of a pyfunc model, see
`pipeline/eval/serving.py`) and what `facetrain checkpoint convert` writes from an old pickled
MLflow model. Loading rebuilds the module through the backbone registry and copies the
weights in: no code from the files is ever run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from facetrain.data_prep.align import get_template
from facetrain.pipeline.config import ModelConfig
from facetrain.pipeline.models.registry import backbone_from_config
from torch import nn

WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "facetrain-model.json"
FORMAT = 1


def describe(model_cfg: ModelConfig, template: str = "arcface") -> dict:
    """What a consumer needs to feed the model: every field is data, not code."""
    alignment = get_template(template)
    return {
        "format": FORMAT,
        "backbone": model_cfg.backbone,
        "embedding_size": model_cfg.embedding_size,
        "input_size": [112, 112],
        "input": "RGB, aligned, float CHW",
        "normalisation": {"scale": 1 / 127.5, "offset": -1.0, "formula": "pixel / 127.5 - 1"},
        "alignment_template": {
            "name": template,
            "points": alignment.points.tolist(),
            "size": list(alignment.size),
        },
        "model": model_cfg.model_dump(mode="json"),
    }


def save_model_dir(backbone: nn.Module, model_cfg: ModelConfig, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: (value.detach().float() if value.is_floating_point() else value.detach())
        .cpu()
        .contiguous()
        for name, value in backbone.state_dict().items()
    }
    save_file(state, str(folder / WEIGHTS))
    (folder / MODEL_CONFIG).write_text(json.dumps(describe(model_cfg), indent=1))
    return folder


def is_model_dir(folder: Path) -> bool:
    return (folder / MODEL_CONFIG).is_file() and (folder / WEIGHTS).is_file()


def load_model_dir(folder: str | Path) -> nn.Module:
    """The backbone saved in `folder`, rebuilt by name, on CPU in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        described = json.loads((folder / MODEL_CONFIG).read_text())
        model_cfg = ModelConfig.model_validate(described["model"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"model {folder / MODEL_CONFIG}: expected facetrain's model JSON ({err})"
        ) from err
    model = backbone_from_config(model_cfg)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"model {folder / WEIGHTS}: not a safetensors file ({err})") from err
    with torch.no_grad():
        model.load_state_dict(state)
    return model.eval()
