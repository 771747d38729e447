"""`facetrain submit`: run prep / train / eval as a job on a Ray cluster, and manage jobs.

`facetrain submit prep|train|eval [submit options] [--] ARGS...` runs
`python -m facetrain.jobs.ray.<command> ARGS...` on the cluster. ARGS are the arguments of
`facetrain prep|train|eval` and reach the job exactly as typed: everything after `--`, or,
without `--`, every argument that is not one of the submit options below. They are checked
here first by the command's own parser (spelled out in full), so a typo exits 2 before
anything is uploaded; a `--config` file inside the shipped checkout is passed by its path
relative to it. `facetrain submit status|logs|stop JOB_ID` manage a job.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from facetrain.jobs.cli import eval_cmd, prep, train
from facetrain.jobs.cli.common import UsageError, parse_command

# name on the command line -> (CLI module whose parser checks ARGS, Ray entrypoint module)
TARGETS = {
    "prep": (prep, "facetrain.jobs.ray.prep"),
    "train": (train, "facetrain.jobs.ray.train"),
    "eval": (eval_cmd, "facetrain.jobs.ray.eval"),
}
SEPARATOR = "--"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="run prep/train/eval as a job on a Ray cluster; status/logs/stop of a job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="submit_command", metavar="COMMAND", required=True)
    for name, (_, entrypoint) in TARGETS.items():
        target = commands.add_parser(
            name,
            help=f"submit `facetrain {name}` as a Ray job",
            usage=f"facetrain submit {name} [submit options] [--] ARGS...",
            description=f"Run `facetrain {name} ARGS...` as a Ray job ({entrypoint}). ARGS are "
            f"`facetrain {name}`'s own (see `facetrain {name} --help`) and reach the job as "
            "typed: everything after `--`, or every argument that is not a submit option.",
            # Only exact submit options are ours: `--work` or `--add` go to the command.
            allow_abbrev=False,
        )
        _add_submit_options(target)
        target.set_defaults(func=run_submit, submit_entrypoint=entrypoint, command_args=[])

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


def forwards_arguments(argv: Sequence[str]) -> bool:
    """Whether `facetrain ARGV` is `submit prep|train|eval ...`, whose ARGS go to the job."""
    return len(argv) >= 2 and argv[0] == "submit" and argv[1] in TARGETS


def parse_forwarding(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse `facetrain submit X ...` with the full `facetrain` parser: submit's own options
    land in the namespace, the rest in `command_args`, unchanged and in order.

    The first `--` ends submit's options (it is not forwarded; later ones are). ARGS are
    checked by `facetrain X`'s parser; a typo exits 2 as it would locally.
    """
    argv = list(argv)
    if SEPARATOR in argv:
        cut = argv.index(SEPARATOR)
        ours, forwarded = argv[:cut], argv[cut + 1 :]
    else:
        ours, forwarded = argv, []
    args, unknown = parser.parse_known_args(ours)
    args.command_args = [*unknown, *forwarded]
    module, _ = TARGETS[args.submit_command]
    args.command_namespace = parse_command(
        module, args.submit_command, args.command_args, "facetrain submit", _SpelledOutParser
    )
    return args


class _SpelledOutParser(argparse.ArgumentParser):
    """A command's parser without abbreviations: the job receives the words as typed, and
    `--config` is rewritten where it is written out (`--config F` or `--config=F`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


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
        "--exclude",
        dest="submit_exclude",
        metavar="PATTERN",
        action="append",
        default=[],
        help="leave files matching PATTERN (gitignore syntax, relative to the working dir) out "
        "of the upload with --ship source, on top of local stores and outputs (repeatable)",
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


def job_command(args: argparse.Namespace, working_dir: Path | None = None) -> list[str]:
    """The job's argv for parsed `facetrain submit X ...`: `python -m <entrypoint>` and the
    command's arguments as typed, a `--config` inside `working_dir` made relative to it."""
    command_args = config_on_cluster(args.command_args, working_dir)
    return ["python", "-m", args.submit_entrypoint, *command_args]


def config_on_cluster(command_args: Sequence[str], working_dir: Path | None) -> list[str]:
    """`command_args` with each `--config F` / `--config=F` value as the job must name it."""
    forwarded = list(command_args)
    for index, word in enumerate(forwarded):
        if word == SEPARATOR:
            break  # positionals only from here on: a `--config` there is a value
        if word == "--config" and index + 1 < len(forwarded):
            forwarded[index + 1] = _config_value_on_cluster(forwarded[index + 1], working_dir)
        elif word.startswith("--config="):
            value = word.removeprefix("--config=")
            forwarded[index] = "--config=" + _config_value_on_cluster(value, working_dir)
    return forwarded


def _config_value_on_cluster(value: str, working_dir: Path | None) -> str:
    from facetrain.jobs.cli.config import shipped_recipes
    from facetrain.jobs.ray.runtime_env import path_on_cluster

    local = Path(value).expanduser()
    is_recipe = len(local.parts) == 1 and value.removesuffix(".yaml") in shipped_recipes()
    if is_recipe and not local.is_file():
        return value  # a shipped recipe's name: the job's facetrain finds it the same way
    on_cluster, shipped = path_on_cluster(value, working_dir)
    if not shipped:
        print(
            f"facetrain submit: note: --config {on_cluster} is outside the shipped "
            "project; it must exist at that path on the cluster",
            file=sys.stderr,
        )
    return on_cluster


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
            ship,
            working_dir,
            args.submit_pip,
            _env_vars(args.submit_env),
            excludes=args.submit_exclude,
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
