"""A tracking server behind MLflow's basic-auth app: writes without or with wrong credentials
are refused, with a message naming the variable to set; the admin's are accepted."""

import pytest

from tests.mlflow_server import ADMIN, MlflowServer


@pytest.mark.slow
def test_writes_need_the_right_credentials(tmp_path, monkeypatch):
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth]")
    import mlflow
    from facetrain.pipeline.train.tracking_sync import describe_mlflow_error

    server = MlflowServer(tmp_path / "server", auth=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        client = mlflow.MlflowClient(tracking_uri=server.uri)

        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        with pytest.raises(Exception) as refused:
            client.create_experiment("anonymous")
        message = describe_mlflow_error(refused.value, server.uri)
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are not set" in message

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        with pytest.raises(Exception) as refused:
            client.create_experiment("half")
        assert describe_mlflow_error(refused.value, server.uri).endswith(
            "MLFLOW_TRACKING_PASSWORD is not set"
        )

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
        with pytest.raises(Exception) as refused:
            client.create_experiment("wrong")
        assert "wrong user or password" in describe_mlflow_error(refused.value, server.uri)

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        experiment_id = client.create_experiment("authorised")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "loss", 0.5, step=0)
        assert client.get_metric_history(run.info.run_id, "loss")[0].value == 0.5
        assert {e.name for e in client.search_experiments()} >= {"authorised"}
        assert client.get_experiment_by_name("anonymous") is None
    finally:
        server.stop()
