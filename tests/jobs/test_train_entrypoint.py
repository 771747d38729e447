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
