"""Ray entrypoint: `python -m facetrain.jobs.ray.eval verify|cluster|identify ...` inside a Ray job.

Takes exactly the arguments of `facetrain eval`; the evaluation runs in the job's driver
process on the cluster, so paths (model, pairs, images) are the cluster's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from facetrain.jobs.cli import eval_cmd as command
from facetrain.jobs.ray.entrypoint import run_command_on_cluster


def main(argv: Sequence[str] | None = None) -> int:
    return run_command_on_cluster(command, "eval", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
