"""MLflow "model from code" entry: MLflow runs this file to build the served model."""

import mlflow.models
from facetrain.pipeline.eval.serving import FaceEmbedder

mlflow.models.set_model(FaceEmbedder())
