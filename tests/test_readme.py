"""Every `facetrain …` command that README.md and docs/ show parses with the real CLI (as
`facetrain` parses it: `submit prep|train|eval` checks the forwarded arguments too)."""

import re
import shlex
from pathlib import Path

import pytest
from facetrain.jobs.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]


def _shown_commands() -> list[tuple[str, str]]:
    commands = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", page.read_text(), re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split(" #")[0].strip()
                # a command, not its output ("facetrain submit: error: …") or a synopsis ("[--out DIR]")
                shown = re.match(r"facetrain [a-z]+(\s|$)", line)
                if shown and "[" not in line and "…" not in line:
                    commands.append((page.name, line))
    return commands


COMMANDS = _shown_commands()


def test_readme_shows_commands():
    assert sum(page == "README.md" for page, _ in COMMANDS) >= 5


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_shown_command_parses(page, line):
    words = [word.replace("<", "").replace(">", "") for word in shlex.split(line)[1:]]
    try:
        parse_args(words)
    except SystemExit as exit_info:
        if exit_info.code != 0:  # `--help` examples exit 0
            pytest.fail(f"{page}: `{line}` does not parse")
