"""Which device a run trains on, and the process-group backend that serves it.

The one place that decides: the local launcher, `--nnodes`, torchrun and the Ray Train
workers all ask `training_device_type`, and the trainer builds its tensors on
`training_device`. GPU runs get a `cpu:gloo,cuda:nccl` group: NCCL serves CUDA tensors only,
and the few collectives on CPU objects (barriers, all_gather_object of small metadata) go
over gloo instead of failing with "No backend type associated with device type cpu".
"""

from __future__ import annotations

from typing import Literal

import torch

DeviceType = Literal["cpu", "cuda"]


class DeviceUnavailable(RuntimeError):
    """The config asks for a device this machine does not have."""


def training_device_type(requested: str, cuda_available: bool) -> DeviceType:
    """`train.device` (auto | cpu | cuda) resolved against what the machine has."""
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" and not cuda_available:
        raise DeviceUnavailable(
            "train.device=cuda: torch sees no CUDA device here (torch.cuda.is_available() is "
            "False); install a CUDA build of torch, or set train.device=cpu"
        )
    return "cuda" if cuda_available else "cpu"


def process_group_backend(device_type: DeviceType) -> str:
    """gloo alone on CPU; on GPUs NCCL for CUDA tensors and gloo for CPU ones."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def training_device(requested: str, local_rank: int | None = None) -> torch.device:
    """The device this rank trains on: its GPU (by local rank, else the current one) or CPU."""
    if training_device_type(requested, torch.cuda.is_available()) == "cpu":
        return torch.device("cpu")
    index = (
        torch.cuda.current_device()
        if local_rank is None
        else local_rank % torch.cuda.device_count()
    )
    return torch.device("cuda", index)
