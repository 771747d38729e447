"""facetrain: distributed face-recognition training.

Installed, the project is one package: `facetrain.data_prep`, `facetrain.losses`,
`facetrain.pipeline`, `facetrain.jobs` and the shipped recipes in `facetrain.configs`.
In the repository those folders sit at the root, beside this one (pyproject's package-dir
maps them); a checkout used without installing it (a Ray job's shipped working_dir) finds them
there through the path added below.
"""

from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "pipeline" / "train").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 - a package's own __path__
