"""Counting the samples the loader could not decode (it trains on a stand-in instead).

Each rank reports the failures of its batches ("shard/key: reason"); a sample counts once
however often it is drawn. The distinct names of all ranks are kept in
`trainer.extra_state["bad_samples"]`, the same on every rank, so a checkpoint carries them
and a resumed run counts on from there. Past `data.max_bad_samples` every rank stops with
the same error listing them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch.distributed as dist
from facetrain.pipeline.train.trainer import Trainer

log = logging.getLogger("facetrain.train")

STATE_KEY = "bad_samples"
METRIC = "data/bad_samples"


class TooManyBadSamples(RuntimeError):
    """More undecodable samples than data.max_bad_samples allows."""


def _sample_name(report: str) -> str:
    return report.split(": ", 1)[0]


class BadSamples:
    def __init__(self, trainer: Trainer, limit: int):
        self.limit = limit
        self.reports: list[str] = list(trainer.extra_state.get(STATE_KEY, []))
        self.names = {_sample_name(report) for report in self.reports}

    @property
    def count(self) -> int:
        return len(self.reports)

    def new_here(self, reports: Iterable[str]) -> list[str]:
        """This rank's reports of samples not counted yet, each logged once."""
        fresh: dict[str, str] = {}
        for report in reports:
            name = _sample_name(report)
            if name not in self.names and name not in fresh:
                fresh[name] = report
                log.warning(
                    "bad sample skipped: %s (replaced by another image of its identity)", report
                )
        return list(fresh.values())

    def add(self, trainer: Trainer, fresh_here: list[str], fresh_total: int) -> None:
        """Merge every rank's fresh reports (a collective call when `fresh_total` > 0 on a
        group: all ranks see the same total) and stop past the limit."""
        if fresh_total == 0:
            return
        if trainer.group is not None and dist.get_world_size(trainer.group) > 1:
            gathered: list[list[str] | None] = [None] * dist.get_world_size(trainer.group)
            dist.all_gather_object(gathered, fresh_here, group=trainer.group)
            fresh = [report for part in gathered for report in part or []]
        else:
            fresh = fresh_here
        for report in fresh:
            if _sample_name(report) not in self.names:
                self.names.add(_sample_name(report))
                self.reports.append(report)
        trainer.extra_state[STATE_KEY] = list(self.reports)
        if self.count > self.limit:
            raise TooManyBadSamples(
                f"{self.count} samples failed to decode, more than data.max_bad_samples="
                f"{self.limit}; check the shards (`facetrain prep --verify`) or raise the limit:\n  "
                + "\n  ".join(self.reports)
            )
