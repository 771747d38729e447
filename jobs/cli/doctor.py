"""`facetrain doctor`: what this environment will run with (PIL build, torch, DeepSpeed ops, Ray, MLflow)."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
from importlib import metadata

SIMD_FLAGS = ("sse4_1", "sse4_2", "avx2", "avx512f", "neon", "asimd")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="report the libraries and builds facetrain will use"
    )
    parser.add_argument(
        "--build-ops",
        action="store_true",
        help="also JIT-build DeepSpeed's CPU Adam op (about a minute on first run)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="facetrain doctor", show_lines=False)
    table.add_column("component")
    table.add_column("status")
    for name, status in collect(build_ops=args.build_ops):
        table.add_row(name, status)
    Console().print(table)
    return 0


def collect(build_ops: bool = False) -> list[tuple[str, str]]:
    rows = [("python", f"{platform.python_version()} on {platform.machine()}")]
    rows.append(("PIL", pil_report()))
    rows.append(("cpu SIMD", ", ".join(cpu_simd_flags()) or "none detected"))
    rows.append(("torch", torch_report()))
    rows += gpu_rows()
    rows.append(("deepspeed", deepspeed_report(build_ops)))
    for module in ("ray", "mlflow", "webdataset", "pyarrow"):
        rows.append((module, _version_of(module)))
    return rows


def pil_report() -> str:
    try:
        from PIL import features
    except ImportError:
        return "missing"
    flavour = "pillow-simd" if _installed("pillow-simd") else "pillow"
    turbo = features.check_feature("libjpeg_turbo")
    return f"{flavour} {_version_of('PIL')} (libjpeg-turbo: {'yes' if turbo else 'no'})"


def cpu_simd_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(
                (
                    line.split(":", 1)[1].split()
                    for line in cpuinfo
                    if line.startswith(("flags", "Features"))
                ),
                [],
            )
    except OSError:
        return []
    return [flag for flag in SIMD_FLAGS if flag in flags]


def torch_report() -> str:
    try:
        import torch
    except ImportError:
        return "missing"
    devices = (
        f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
        if torch.cuda.is_available()
        else "CPU only"
    )
    return f"{torch.__version__} ({devices}, {torch.get_num_threads()} threads)"


def gpu_rows() -> list[tuple[str, str]]:
    """CUDA, NCCL and bf16 support, and what `train.device: auto` resolves to here."""
    try:
        import torch
    except ImportError:
        return []
    from facetrain.pipeline.train.devices import process_group_backend, training_device_type

    device_type = training_device_type("auto", torch.cuda.is_available())
    rows = [
        (
            "training device",
            f"{device_type} (train.device auto; process group "
            f"{process_group_backend(device_type)})",
        )
    ]
    if not torch.cuda.is_available():
        return [*rows, ("cuda", "not available (CPU build of torch, or no GPU/driver)")]
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    major, minor = torch.cuda.get_device_capability(0)
    rows.append(
        (
            "cuda",
            f"{torch.version.cuda}: {torch.cuda.device_count()} x {', '.join(names)} "
            f"(compute capability {major}.{minor})",
        )
    )
    nccl = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
    rows.append(("nccl", ".".join(map(str, nccl)) if nccl else "not available"))
    rows.append(
        (
            "bf16",
            "supported"
            if torch.cuda.is_bf16_supported()
            else "not supported: precision auto trains in fp16 with loss scaling",
        )
    )
    return rows


def deepspeed_report(build_ops: bool) -> str:
    import torch

    # DeepSpeed picks its accelerator at import; on a GPU host it finds CUDA by itself.
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        from deepspeed.ops.op_builder import CPUAdamBuilder
    except Exception as err:  # deepspeed raises many kinds when its accelerator is off
        return f"not importable: {err}"
    builder = CPUAdamBuilder()
    status = "compatible" if builder.is_compatible(verbose=False) else "not compatible"
    if build_ops:
        try:
            builder.load(verbose=False)
            status = "built"
        except Exception as err:
            status = f"build failed: {err}"
    accelerator = os.environ.get("DS_ACCELERATOR", "auto")
    return f"{deepspeed.__version__} (accelerator {accelerator}, cpu_adam op: {status})"


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _version_of(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "missing"
