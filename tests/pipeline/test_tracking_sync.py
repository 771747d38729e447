"""The tracking server dies mid-run: training finishes, says so, fails for the missing model;
`facetrain tracking sync` then puts every metric step into the run exactly once, and the model."""

import json
import os
import shutil
import signal

import pytest
import torch
from facetrain.jobs.cli import main

from tests.dist import run_ranks
from tests.mlflow_server import MlflowServer
from tests.pipeline.shards import write_shards
from tests.pipeline.test_trainer_safety import make_config


def train_through_an_outage(rank, world_size, shards, root, uri, server_pgid):
    from facetrain.pipeline.train.hooks import Hook
    from facetrain.pipeline.train.loop import run_rank

    class StopServer(Hook):
        def after_step(self, trainer, out):
            if trainer.step == 2:  # steps 0 and 1 reached MLflow; 2.. are kept locally
                os.killpg(server_pgid, signal.SIGKILL)

    cfg = make_config(shards, root, tracking_uri=uri, registered_model="tiny-face")
    cfg.train.steps = 5
    return run_rank(cfg, extra_hooks=[StopServer()], progress=False)


def histories(uri, run_id, keys):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


@pytest.mark.slow
def test_outage_then_sync_holds_every_step_once_and_the_model(tmp_path):
    from facetrain.pipeline.eval import load_model
    from facetrain.pipeline.train.checkpoint import load_backbone
    from facetrain.pipeline.train.tracking_sync import latest_values, read_records, sync_records

    shards = write_shards(tmp_path / "data", [2, 3, 4] * 4, num_shards=2)
    server = MlflowServer(tmp_path / "server").start()
    try:
        summary = run_ranks(
            train_through_an_outage, 1, shards, tmp_path / "run", server.uri, server.process.pid
        )[0]
        assert summary["steps"] == 5 and summary["checkpoint"]  # training went on
        assert summary["tracking_lost"] and "tracking sync" in summary["mlflow_failed"]
        run_id = summary["mlflow_run_id"]
        ckpt = tmp_path / "run" / "ckpt"
        values = latest_values(read_records(ckpt / "tracking" / "records.jsonl"))
        assert sorted(values["loss"]) == [0, 1, 2, 3, 4]

        server.start()  # the same server (same database, same port) is back
        before = histories(server.uri, run_id, values)
        assert [step for step, _ in before["loss"]] == [0, 1]
        result = sync_records(ckpt, progress=False)
        assert result.run_id == run_id and not result.new_run and result.model_logged
        expected = {key: sorted(by_step.items()) for key, by_step in values.items()}
        assert histories(server.uri, run_id, values) == expected

        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        try:
            faces = torch.rand(2, 3, 112, 112) * 2 - 1
            torch.testing.assert_close(
                load_model(run_id).module(faces), load_backbone(ckpt)(faces)
            )
            assert main(["tracking", "sync", str(ckpt), "--no-progress"]) == 0  # again
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
        again = histories(server.uri, run_id, values)
        assert again == expected  # nothing twice
        state = json.loads((ckpt / "tracking" / "sync.json").read_text())
        assert state["models_logged"] == [run_id]

        # A server that never saw the run: a new run gets everything, once.
        elsewhere = tmp_path / "copy"
        shutil.copytree(ckpt, elsewhere)
        (elsewhere / "tracking" / "sync.json").unlink()
        other = f"sqlite:///{tmp_path / 'other.db'}"
        first = sync_records(elsewhere, other, progress=False)
        assert first.new_run and first.model_logged and first.run_id != run_id
        second = sync_records(elsewhere, other, progress=False)
        assert second.run_id == first.run_id and second.metrics_uploaded == 0
        assert not second.model_logged
        assert histories(other, first.run_id, values) == expected
    finally:
        server.stop()
