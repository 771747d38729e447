"""Errors of the whole prep job (single bad images are rejects, never errors)."""

from __future__ import annotations

from pydantic import ValidationError


class PrepInputError(ValueError):
    """An unusable source, landmark file or output directory; the CLI exits 2 on it."""


def describe_validation_error(err: ValidationError) -> str:
    """The first problem on one line, `key 'a.b': expected <type>, got <value>` or `missing key
    'a.b'`, plus a count of the rest: for files (dataset.json) and configs alike."""
    problems = err.errors()
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        text = f"unknown key '{key}'"
    elif not first["loc"]:
        # A check across keys (a model validator): its message names them; the input is the
        # whole config, too long to print.
        text = first["msg"].removeprefix("Value error, ")
    elif first["type"] == "missing":
        text = f"missing key '{key}'"
    else:
        got = repr(first.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."  # one line, even for a whole subtree
        text = f"key '{key}': {first['msg'].lower()}, got {got}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem(s))"
    return text
