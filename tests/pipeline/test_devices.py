"""One place decides the training device and the process-group backend that serves it."""

import pytest
from facetrain.pipeline.train.devices import (
    DeviceUnavailable,
    process_group_backend,
    training_device_type,
)


@pytest.mark.parametrize(
    ("requested", "cuda", "expected"),
    [("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda")],
)
def test_training_device_follows_the_config_and_the_machine(requested, cuda, expected):
    assert training_device_type(requested, cuda) == expected


def test_asking_for_cuda_without_it_is_an_error_naming_the_key():
    with pytest.raises(DeviceUnavailable, match="train.device=cuda"):
        training_device_type("cuda", False)


def test_gpu_groups_carry_gloo_for_cpu_tensors_beside_nccl():
    # NCCL alone refuses CPU tensors; the mixed group routes each tensor by its device.
    assert process_group_backend("cuda") == "cpu:gloo,cuda:nccl"
    assert process_group_backend("cpu") == "gloo"
