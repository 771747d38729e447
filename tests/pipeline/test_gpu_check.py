"""benchmarks/gpu_check.py: its NCCL-rule wrapper catches a collective on a CPU tensor in a
GPU run (the bug class it exists for), and its CPU smoke run completes."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

from tests.dist import run_ranks

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _load():
    # Imported by name from sys.path, not from a file spec: the script's rank functions are
    # pickled as `gpu_check.<name>`, and spawned ranks find the module through the sys.path
    # multiprocessing hands them.
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module(SCRIPT.stem)


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
def test_gpu_check_smoke_runs_on_cpu():
    section = _load().main(["--smoke"])
    assert "20 steps done, 0 skipped" in section
    assert "Every collective ran on cpu tensors: all_gather" in section
    assert "export: ok; eval verify: ok" in section
