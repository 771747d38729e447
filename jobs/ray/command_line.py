"""Turn parsed arguments back into the command line a cluster job runs.

`facetrain submit prep ...` parses its arguments with `facetrain prep`'s own parser (so a
typo fails here, before anything is uploaded), then needs the same arguments as a list of
strings for the job's entrypoint. Rebuilding them from the parser's actions, rather than
slicing `sys.argv`, keeps submit's own options out and works for `main(argv)` calls too.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection

# The argparse action classes are public in practice but not exported by name.
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


def rebuild_argv(
    parser: argparse.ArgumentParser, args: argparse.Namespace, skip: Collection[str] = ()
) -> list[str]:
    """The arguments that make `parser` produce `args` again (options at defaults left out).

    `skip` holds destinations to leave out (submit's own options). Nested subcommands
    (`eval verify ...`) are followed into the chosen subparser.
    """
    options: list[str] = []
    positionals: list[str] = []
    subcommand: list[str] = []
    for action in parser._actions:
        if isinstance(action, _SKIPPED_ACTIONS) or action.dest in skip:
            continue
        if isinstance(action, argparse._SubParsersAction):
            name, subparser = _chosen_subcommand(action, args)
            subcommand = [name, *rebuild_argv(subparser, args, skip)]
            continue
        if not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if action.option_strings:
            options += _option_tokens(action, value)
        else:
            positionals += _positional_tokens(action, value)
    # Positionals first: an option taking several values would swallow ones after it. A
    # subcommand comes last, since options after its name belong to the subparser.
    return positionals + options + subcommand


def _chosen_subcommand(
    action: argparse._SubParsersAction, args: argparse.Namespace
) -> tuple[str, argparse.ArgumentParser]:
    if action.dest != argparse.SUPPRESS and getattr(args, action.dest, None) in action.choices:
        name = getattr(args, action.dest)
        return name, action.choices[name]
    # Without a dest, the chosen subparser is the one whose defaults produced args.func.
    func = getattr(args, "func", None)
    for name, subparser in action.choices.items():
        if func is not None and subparser._defaults.get("func") is func:
            return name, subparser
    raise ValueError(f"cannot tell which of {sorted(action.choices)} was chosen")


def _option_tokens(action: argparse.Action, value: object) -> list[str]:
    flag = (
        action.option_strings[-1]
        if action.option_strings[-1].startswith("--")
        else action.option_strings[0]
    )
    if value == action.default:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        positive = next(s for s in action.option_strings if not s.startswith("--no-"))
        negative = next(s for s in action.option_strings if s.startswith("--no-"))
        return [positive] if value else [negative]
    if isinstance(
        action, argparse._StoreConstAction | argparse._StoreTrueAction | argparse._StoreFalseAction
    ):
        return [flag] if value == action.const else []
    if isinstance(action, argparse._CountAction):
        return [flag] * int(value or 0)
    if isinstance(action, argparse._AppendAction):
        already = list(action.default or [])
        added = list(value or [])[len(already) :]
        tokens: list[str] = []
        for item in added:
            tokens += _flag_with(flag, item, action.nargs)
        return tokens
    if isinstance(action, argparse._ExtendAction):
        return [flag, *[_text(item) for item in list(value or [])[len(action.default or []) :]]]
    if isinstance(action, argparse._StoreAction):
        return _flag_with(flag, value, action.nargs) if value is not None else []
    raise ValueError(f"option {flag}: cannot rebuild an argument of kind {type(action).__name__}")


def _flag_with(flag: str, value: object, nargs: object) -> list[str]:
    # `--flag=value` keeps a value that starts with "-" from reading as an option.
    if nargs is None:
        return [f"{flag}={_text(value)}"]
    return [flag, *_values(value, nargs)]


def _positional_tokens(action: argparse.Action, value: object) -> list[str]:
    if value is None or (action.nargs == "?" and value == action.default):
        return []
    return _values(value, action.nargs)


def _values(value: object, nargs: object) -> list[str]:
    if nargs in (None, "?") or not isinstance(value, list | tuple):
        return [_text(value)]
    return [_text(item) for item in value]


def _text(value: object) -> str:
    return str(value)
