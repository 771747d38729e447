"""Run every benchmark of the project and write their sections into BENCHMARKS.md.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--skip NAME ...] [--out BENCHMARKS.md]

A benchmark is any `benchmarks/NAME.py` with a `main(argv) -> str` that returns a Markdown
section (the convention in the README). Each runs in its own Python process, so a crash, a
hang (`--timeout`), or state it leaves behind (Ray, process groups, threads) cannot touch the
next; a failure is recorded in the report and the rest still run. `lfw` is skipped unless
named in `--only`: it trains five models and keeps its own section (`benchmarks/lfw.py`).

BENCHMARKS.md is rewritten section by section between `<!-- section:NAME -->` markers, so
sections written by other runs (or by hand) stay as they are.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REPORT = REPO / "BENCHMARKS.md"
NOT_A_BENCHMARK = {"run_all"}
RUN_ONLY_WHEN_NAMED = {"lfw"}  # long: trains five models; run it on its own
REPORT_TITLE = "# Benchmarks\n\nWritten by `benchmarks/run_all.py` and `benchmarks/lfw.py`; every figure is measured in\nthe run that wrote its section, next to the baseline measured in that same run.\n"

# Runs one benchmark's main() in a fresh interpreter and writes what it returned as JSON.
_CHILD = """
import importlib, json, sys, traceback
folder, name, argv, result = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
try:
    # Imported by its own name from its folder, so processes it spawns can import it too.
    sys.path.insert(0, folder)
    module = importlib.import_module(name)
    text = module.main(argv)
    if not isinstance(text, str):
        raise TypeError(f"main() returned {type(text).__name__}, expected a Markdown str")
    outcome = {"ok": True, "markdown": text}
except BaseException as err:
    outcome = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
with open(result, "w") as handle:
    json.dump(outcome, handle)
"""


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    markdown: str = ""
    error: str = ""
    details: str = ""


def discover(folder: Path = HERE) -> list[str]:
    """Names of the scripts in `folder` that define a top-level `main` (read, not imported)."""
    names = []
    for path in sorted(folder.glob("*.py")):
        if path.stem.startswith("_") or path.stem in NOT_A_BENCHMARK:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            names.append(path.stem)
    return names


def run_one(name: str, argv: Sequence[str], timeout: float, folder: Path = HERE) -> Outcome:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-c",
            _CHILD,
            str(folder),
            name,
            json.dumps(list(argv)),
            str(result),
        ]
        try:
            process = subprocess.run(
                command, cwd=REPO, timeout=timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            return Outcome(
                name, False, time.perf_counter() - started, error=f"timed out after {timeout:.0f}s"
            )
        seconds = time.perf_counter() - started
        if not result.is_file():  # killed hard (signal, OOM) before it could report
            tail = (process.stderr or process.stdout)[-3000:]
            return Outcome(
                name, False, seconds, error=f"exited with code {process.returncode}", details=tail
            )
        outcome = json.loads(result.read_text())
    if outcome["ok"]:
        return Outcome(name, True, seconds, markdown=outcome["markdown"].strip())
    return Outcome(
        name, False, seconds, error=outcome["error"], details=outcome["traceback"][-3000:]
    )


def machine_description() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, memory, accelerator, versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    description = {"date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    description["CPU"] = cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    description["cores"] = f"{usable} usable ({os.cpu_count()} online)"
    try:
        import psutil

        description["memory"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    description["OS"] = platform.platform()
    description["Python"] = platform.python_version()
    try:
        import torch

        description["torch"] = torch.__version__
        if torch.cuda.is_available():
            description["GPU"] = ", ".join(
                torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())
            )
        else:
            description["GPU"] = "none"
    except ImportError:
        pass
    return description


def machine_markdown(description: dict[str, str]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in description.items())
    return f"## Machine\n\n| | |\n|---|---|\n{rows}\n"


def update_section(path: Path, name: str, body: str) -> None:
    """Replace section `name` of the report at `path` (append it when new; create the file)."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.is_file() else REPORT_TITLE
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def summary_markdown(outcomes: Sequence[Outcome], quick: bool, description: dict[str, str]) -> str:
    lines = [
        "## Benchmark run",
        "",
        f"`python benchmarks/run_all.py{' --quick' if quick else ''}` on {description['date (UTC)']} UTC"
        + (" (quick sizes: smoke figures, not for comparison)" if quick else ""),
        "",
        "| benchmark | status | wall time |",
        "|---|---|---|",
    ]
    for outcome in outcomes:
        status = "ok" if outcome.ok else f"**failed**: {outcome.error}"
        lines.append(f"| `{outcome.name}` | {status} | {outcome.seconds:.0f} s |")
    return "\n".join(lines)


def failure_markdown(outcome: Outcome) -> str:
    text = f"## {outcome.name}\n\n**Failed** after {outcome.seconds:.0f} s: {outcome.error}\n"
    if outcome.details:
        text += f"\n<details><summary>traceback</summary>\n\n```\n{outcome.details.strip()}\n```\n</details>\n"
    return text


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (passed to each benchmark)"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run just these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_REPORT, help="report to update (BENCHMARKS.md)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per benchmark")
    parser.add_argument("--folder", type=Path, default=HERE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    available = discover(args.folder)
    if args.only:
        unknown = sorted(set(args.only) - set(available))
        if unknown:
            parser.error(
                f"--only {' '.join(unknown)}: no such benchmark; found {', '.join(available)}"
            )
        names = [name for name in available if name in args.only]
    else:
        names = [name for name in available if name not in RUN_ONLY_WHEN_NAMED]
    names = [name for name in names if name not in args.skip]

    from tqdm import tqdm

    description = machine_description()
    # Machine and run summary first in a new report; filled in again at the end.
    update_section(args.out, "machine", machine_markdown(description))
    update_section(args.out, "run", f"## Benchmark run\n\nrunning: {', '.join(names)}")
    outcomes = []
    for name in (bar := tqdm(names, desc="benchmarks", unit="benchmark")):
        bar.set_postfix_str(name)
        outcome = run_one(name, ["--quick"] if args.quick else [], args.timeout, args.folder)
        outcomes.append(outcome)
        update_section(
            args.out, name, outcome.markdown if outcome.ok else failure_markdown(outcome)
        )
        if not outcome.ok:
            tqdm.write(f"{name}: failed: {outcome.error}", file=sys.stderr)

    update_section(args.out, "machine", machine_markdown(description))
    summary = summary_markdown(outcomes, args.quick, description)
    update_section(args.out, "run", summary)
    return summary + f"\n\nReport: {args.out}"


if __name__ == "__main__":
    try:
        print(main())
    except Exception:  # the report is the product: say what broke it, exit non-zero
        traceback.print_exc()
        sys.exit(1)
