import pytest


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A private sqlite MLflow store; cwd moves to tmp_path, where mlflow puts ./mlruns artifacts."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
