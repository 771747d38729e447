"""`facetrain submit`: run prep / train / eval as a job on a Ray cluster, and manage jobs.

`facetrain submit prep|train|eval ...` takes exactly the arguments of `facetrain prep|train|
eval` (their own parsers are reused, so a typo fails before anything is uploaded) plus the
submit options below; the job runs `python -m jobs.<command>` with those arguments on the
cluster. `facetrain submit status|logs|stop JOB_ID` manage a job.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from facetrain.jobs.cli import eval_cmd, prep, train
from facetrain.jobs.cli.common import UsageError

# (name on the command line, CLI module whose parser is reused, Ray entrypoint module)
TARGETS = (
    ("prep", prep, "facetrain.jobs.ray.prep"),
    ("train", train, "facetrain.jobs.ray.train"),
    ("eval", eval_cmd, "facetrain.jobs.ray.eval"),
)
SUBMIT_DESTS = (
    "submit_address",
    "submit_no_wait",
    "submit_ship",
    "submit_working_dir",
    "submit_pip",
    "submit_env",
    "submit_job_id",
    "submit_parser",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="run prep/train/eval as a job on a Ray cluster; status/logs/stop of a job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="submit_command", metavar="COMMAND", required=True)
    for name, module, entrypoint in TARGETS:
        module.register(commands)
        target = commands.choices[name]
        _retarget_help(commands, name, f"submit `facetrain {name}` as a Ray job")
        _route_to_submit(target, name, entrypoint)

    for name, help_text in (
        ("status", "print a job's status (exit code: the job's outcome once it ended)"),
        ("logs", "print a job's logs"),
        ("stop", "stop a running job"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("job_id", metavar="JOB_ID")
        _add_address_option(sub)
        if name == "logs":
            sub.add_argument(
                "--follow", action="store_true", help="keep printing until the job ends"
            )
        sub.set_defaults(func=run_manage, submit_command=name)


def _add_address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        dest="submit_address",
        metavar="URL",
        default=None,
        help="the head's dashboard URL (default: $RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, "
        "else http://127.0.0.1:8265); the token comes from $RAY_AUTH_TOKEN, "
        "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
    )


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("submit options")
    _add_address_option(group)
    group.add_argument(
        "--no-wait",
        dest="submit_no_wait",
        action="store_true",
        help="print the job id and return without following the logs",
    )
    group.add_argument(
        "--ship",
        dest="submit_ship",
        choices=("source", "installed"),
        default=None,
        help="source: upload this checkout as the job's working_dir (default when run from one); "
        "installed: use the facetrain installed in the cluster's image",
    )
    group.add_argument(
        "--working-dir",
        dest="submit_working_dir",
        metavar="DIR",
        default=None,
        help="checkout to upload with --ship source (default: the one this facetrain runs from)",
    )
    group.add_argument(
        "--pip",
        dest="submit_pip",
        metavar="REQ",
        action="append",
        default=[],
        help="extra pip requirement for the job's runtime_env, e.g. facetrain==0.1.0 (repeatable)",
    )
    group.add_argument(
        "--env",
        dest="submit_env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="environment variable for the job (repeatable)",
    )
    group.add_argument(
        "--job-id", dest="submit_job_id", metavar="ID", default=None, help="submission id to use"
    )


def _retarget_help(commands: argparse._SubParsersAction, name: str, help_text: str) -> None:
    for choice in commands._choices_actions:
        if choice.dest == name:
            choice.help = help_text


def _route_to_submit(
    parser: argparse.ArgumentParser,
    name: str,
    entrypoint: str,
    target: argparse.ArgumentParser | None = None,
) -> None:
    """Make every (sub)parser of a reused command run submit instead of the local command."""
    target = target or parser
    parser.set_defaults(
        func=run_submit, submit_command=name, submit_entrypoint=entrypoint, submit_parser=target
    )
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        # Submit options go on the innermost parser (`submit eval verify ... --address URL`):
        # a subparser's defaults would overwrite values given before its name.
        _add_submit_options(parser)
    for action in nested:
        if action.dest == argparse.SUPPRESS:
            # rebuild_argv finds the chosen subcommand by its dest.
            action.dest = f"submit_{name}_subcommand"
        for subparser in action.choices.values():
            _route_to_submit(subparser, name, entrypoint, target)


def job_command(args: argparse.Namespace, working_dir=None) -> list[str]:
    """The argv of the job (`python -m jobs.X ...`) for parsed `facetrain submit X ...` args."""
    from facetrain.jobs.ray.command_line import rebuild_argv
    from facetrain.jobs.ray.runtime_env import path_on_cluster

    if getattr(args, "config", None):
        args = argparse.Namespace(**vars(args))
        args.config, shipped = path_on_cluster(args.config, working_dir)
        if not shipped:
            print(
                f"facetrain submit: note: --config {args.config} is outside the shipped "
                "project; it must exist at that path on the cluster",
                file=sys.stderr,
            )
    command_args = rebuild_argv(args.submit_parser, args, skip=SUBMIT_DESTS)
    return ["python", "-m", args.submit_entrypoint, *command_args]


def run_submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facetrain.jobs.ray.client import HeadError, default_address
    from facetrain.jobs.ray.runtime_env import build_runtime_env, project_root

    ship = args.submit_ship or (
        "source" if args.submit_working_dir or project_root() else "installed"
    )
    working_dir = (
        Path(args.submit_working_dir).resolve() if args.submit_working_dir else project_root()
    )
    if ship == "installed":
        working_dir = None
    try:
        runtime_env = build_runtime_env(
            ship, working_dir, args.submit_pip, _env_vars(args.submit_env)
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    entrypoint = shlex.join(job_command(args, working_dir))

    address = args.submit_address or default_address()
    try:
        head = _connect(address)
        job_id = head.submit(entrypoint, runtime_env, args.submit_job_id)
        print(job_id, flush=True)
        print(f"facetrain submit: job {job_id} on {address}: {entrypoint}", file=sys.stderr)
        if args.submit_no_wait:
            return 0
        try:
            head.follow(job_id)
        except KeyboardInterrupt:
            print(
                f"facetrain submit: stopped following; job {job_id} keeps running "
                f"(`facetrain submit stop {job_id} --address {address}` stops it)",
                file=sys.stderr,
            )
            return 130
        state = head.wait(job_id)
        print(f"facetrain submit: job {job_id} {state}", file=sys.stderr)
        return head.exit_code(job_id)
    except HeadError as err:
        return _fail(err)


def run_manage(args: argparse.Namespace) -> int:
    from facetrain.jobs.ray.client import TERMINAL_STATES, HeadError, default_address

    address = args.submit_address or default_address()
    try:
        head = _connect(address)
        if args.submit_command == "status":
            state = head.status(args.job_id)
            print(state)
            return head.exit_code(args.job_id) if state in TERMINAL_STATES else 0
        if args.submit_command == "logs":
            if args.follow:
                head.follow(args.job_id)
            else:
                sys.stdout.write(head.logs(args.job_id))
            return 0
        stopped = head.stop(args.job_id)
        print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    except HeadError as err:
        return _fail(err)


def _connect(address: str):
    from facetrain.jobs.ray.auth import TokenError
    from facetrain.jobs.ray.client import Head

    if not address.startswith(("http://", "https://")):
        raise UsageError(f"--address {address}: expected the dashboard URL, e.g. http://HEAD:8265")
    try:
        return Head(address)
    except TokenError as err:
        raise UsageError(str(err)) from err


def _env_vars(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _fail(err: Exception) -> int:
    from facetrain.jobs.ray.client import AuthFailure

    print(f"facetrain submit: error: {err}", file=sys.stderr)
    return 2 if isinstance(err, AuthFailure) else 1
