"""Ray entrypoint: `python -m facetrain.jobs.ray.prep SOURCE --out DIR ...` on the cluster it is started in.

Takes exactly the arguments of `facetrain prep` (it runs that command's module) and, when
started as a Ray job (`RAY_ADDRESS` set by the job supervisor), points the prep at that cluster instead
of an embedded local Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from facetrain.jobs.cli import prep as command
from facetrain.jobs.ray.entrypoint import run_command_on_cluster


def main(argv: Sequence[str] | None = None) -> int:
    return run_command_on_cluster(
        command, "prep", sys.argv[1:] if argv is None else argv, address_flag="--ray-address"
    )


if __name__ == "__main__":
    sys.exit(main())
