"""data_prep: raw face datasets -> aligned faces -> identity-grouped WebDataset shards (on Ray).

Entry point: `run_prep(PrepConfig(...))`; the `facetrain prep` CLI is a thin shell over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facetrain.data_prep.config import PrepConfig
    from facetrain.data_prep.run import PrepSummary


def run_prep(config: PrepConfig) -> PrepSummary:
    """Run (or resume, or skip as already done) one prep job; see data_prep.run."""
    from facetrain.data_prep.run import run_prep as _run_prep

    return _run_prep(config)


__all__ = ["run_prep"]
