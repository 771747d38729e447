"""How `python -m facetrain.jobs.ray.train` sizes its Ray Train worker group."""

import pytest
from facetrain.jobs.ray.train import Scaling, choose_scaling


@pytest.mark.parametrize(
    "device,nproc,resources,expected",
    [
        ("auto", None, {"CPU": 16.0}, Scaling(1, False)),
        ("auto", None, {"CPU": 64.0, "GPU": 8.0}, Scaling(8, True)),
        ("auto", 2, {"CPU": 4.0}, Scaling(2, False)),
        ("cpu", 4, {"CPU": 64.0, "GPU": 8.0}, Scaling(4, False)),
        ("cuda", 4, {"GPU": 8.0}, Scaling(4, True)),
    ],
)
def test_scaling(device, nproc, resources, expected):
    assert choose_scaling(device, nproc, resources) == expected


def test_backend_follows_the_device():
    assert Scaling(2, True).backend == "nccl" and Scaling(2, False).backend == "gloo"


def test_cuda_without_gpus_and_zero_workers_are_errors():
    with pytest.raises(ValueError, match="train.device=cuda"):
        choose_scaling("cuda", 2, {"CPU": 8.0})
    with pytest.raises(ValueError, match="--nproc 0"):
        choose_scaling("cpu", 0, {"CPU": 8.0})
