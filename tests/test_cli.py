import subprocess
import sys

import pytest
from facetrain.jobs.cli import COMMANDS, build_parser, main


def _command_names() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_every_documented_subcommand_is_registered():
    assert {"prep", "train", "eval", "submit", "doctor", "demo"} <= set(_command_names())
    assert len(COMMANDS) == len(_command_names())


@pytest.mark.parametrize("name", _command_names())
def test_help_of_each_subcommand_exits_zero(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert name in capsys.readouterr().out


def test_console_script_help_runs_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-c", "from facetrain.jobs.cli import main; raise SystemExit(main(['--help']))"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0
    assert "doctor" in done.stdout


def test_doctor_reports_pil_torch_deepspeed_ray_mlflow(capsys):
    from facetrain.jobs.cli.doctor import collect

    rows = dict(collect())
    for component in ("PIL", "torch", "deepspeed", "ray", "mlflow"):
        assert component in rows and rows[component] != "missing"
    assert rows["PIL"].startswith(("pillow ", "pillow-simd "))
    import torch

    assert torch.__version__ in rows["torch"]


def test_doctor_says_what_auto_trains_on_here():
    import torch
    from facetrain.jobs.cli.doctor import gpu_rows

    rows = dict(gpu_rows())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rows["training device"].startswith(expected)
    if not torch.cuda.is_available():
        assert rows["cuda"].startswith("not available")
