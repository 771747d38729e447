"""The MLflow pyfunc flavour of a facetrain model, for `mlflow models serve`.

Input: aligned 112x112 RGB faces, uint8 [N, 112, 112, 3] (or a list of such images as
nested lists, as JSON requests send them). Output: L2-normalised embeddings [N, D], the
same `facetrain embed` computes (image plus flipped image, summed, normalised).

The model is logged "from code" (`pyfunc_entry.py`, a file path, not a pickled object) with
the plain files of `pipeline/models/saved.py` as its artifacts, so neither serving nor
`--model` loading unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

ENTRY = Path(__file__).with_name("pyfunc_entry.py")


class FaceEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from facetrain.pipeline.models.saved import load_model_dir

        self.model = load_model_dir(Path(context.artifacts["weights"]).parent)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from facetrain.pipeline.eval.embed import embed_faces

        faces = np.asarray(model_input)
        if faces.ndim != 4 or faces.shape[1:] != (112, 112, 3):
            raise ValueError(
                f"faces of shape {faces.shape}: expected [N, 112, 112, 3] aligned RGB images"
            )
        return embed_faces(self.model, faces.astype(np.uint8))
