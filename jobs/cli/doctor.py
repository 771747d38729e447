"""`facetrain doctor`: what this environment will run with (PIL build, torch, DeepSpeed ops, Ray, MLflow)."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
from importlib import metadata

SIMD_FLAGS = ("sse4_1", "sse4_2", "avx2", "avx512f", "neon", "asimd")


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="report the libraries and builds facetrain will use")
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
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith(("flags", "Features"))), [])
    except OSError:
        return []
    return [flag for flag in SIMD_FLAGS if flag in flags]


def torch_report() -> str:
    try:
        import torch
    except ImportError:
        return "missing"
    devices = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "CPU only"
    return f"{torch.__version__} ({devices}, {torch.get_num_threads()} threads)"


def deepspeed_report(build_ops: bool) -> str:
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
    return f"{deepspeed.__version__} (accelerator {os.environ['DS_ACCELERATOR']}, cpu_adam op: {status})"


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
