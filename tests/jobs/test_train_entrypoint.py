"""How `python -m facetrain.jobs.ray.train` sizes its Ray Train worker group and waits for it."""

import pytest
from facetrain.jobs.ray.train import Scaling, choose_scaling, wait_for_resources


@pytest.mark.parametrize(
    "device,nproc,workers,resources,expected",
    [
        ("auto", None, None, {"CPU": 16.0}, Scaling(1, False)),
        ("auto", None, None, {"CPU": 64.0, "GPU": 8.0}, Scaling(8, True)),
        ("auto", 2, None, {"CPU": 4.0}, Scaling(2, False)),
        ("cpu", 4, None, {"CPU": 64.0, "GPU": 8.0}, Scaling(4, False)),
        ("cuda", 4, None, {"GPU": 8.0}, Scaling(4, True)),
        # An autoscaling GPU group at 0 replicas: ask for GPU workers all the same.
        ("cuda", None, 4, {"CPU": 2.0}, Scaling(4, True)),
        ("cuda", 2, 4, {"CPU": 2.0}, Scaling(2, True)),  # --nproc wins over the config
    ],
)
def test_scaling(device, nproc, workers, resources, expected):
    assert choose_scaling(device, nproc, workers, resources) == expected


def test_auto_without_gpus_says_it_trains_on_cpu(capsys):
    assert choose_scaling("auto", None, None, {"CPU": 8.0}) == Scaling(1, False)
    assert "no GPUs now: training on CPU" in capsys.readouterr().err


def test_gpu_groups_carry_gloo_beside_nccl():
    assert Scaling(2, True).backend == "cpu:gloo,cuda:nccl" and Scaling(2, False).backend == "gloo"


def test_zero_workers_is_an_error():
    with pytest.raises(ValueError, match="--nproc 0"):
        choose_scaling("cpu", 0, None, {"CPU": 8.0})


def test_waits_for_the_autoscaler_then_proceeds():
    requested, offers = [], iter([{"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 4, "GPU": 2.0}])
    wait_for_resources(Scaling(2, True), 30.0, lambda: next(offers), requested.append, poll_s=0.0)
    assert requested == [[{"CPU": 1, "GPU": 1}] * 2]


def test_missing_gpus_are_an_error_after_the_timeout():
    with pytest.raises(ValueError, match=r"2 GPU \(has 0\).*resources_timeout=0.05s"):
        wait_for_resources(Scaling(2, True), 0.05, lambda: {"CPU": 8.0}, poll_s=0.01)


@pytest.mark.parametrize(
    "summary,code",
    [
        ({"steps": 4, "mlflow_run_id": "abc"}, 0),
        ({"steps": 4, "mlflow_run_id": "abc", "mlflow_failed": "log_model: refused"}, 1),
    ],
)
def test_a_run_that_lost_its_model_in_mlflow_exits_non_zero(
    monkeypatch, tmp_path, capsys, summary, code
):
    """As `facetrain train` does: the Ray job's status must not read SUCCEEDED for it."""
    import ray
    import ray.autoscaler.sdk
    from facetrain.jobs.ray import train as entrypoint

    config = tmp_path / "run.yaml"
    config.write_text("data: {shards: synthetic}\nloss: [{type: softmax}]\ntrain: {device: cpu}\n")
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda **kwargs: None)
    monkeypatch.setattr(entrypoint, "train_on_ray", lambda *args, **kwargs: dict(summary))
    assert entrypoint.main(["--config", str(config), "--nproc", "1"]) == code
    if code:
        assert "error: log_model: refused" in capsys.readouterr().err
