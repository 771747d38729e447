from facetrain.pipeline.eval.tracking import ensure_experiment


def test_ensure_experiment_creates_once_with_artifacts_where_asked(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = ensure_experiment(uri, "bench", tmp_path / "artifacts")
    assert ensure_experiment(uri, "bench", tmp_path / "elsewhere") == first
    found = mlflow.MlflowClient(uri).get_experiment_by_name("bench")
    assert found.experiment_id == first
    assert found.artifact_location == (tmp_path / "artifacts").as_uri()
