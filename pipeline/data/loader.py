"""The per-rank training stream: shards -> identities -> P x K (or shuffled) batches -> tensors.

Layout of the work, fixed by (seed, rank, world size, workers) so a resumed run replays it:

* Training is cut into epochs of `batches_per_epoch` steps, the same on every rank.
* In epoch e the shards are permuted with (seed, e) and dealt out: rank r takes every
  world-th shard, and its virtual worker v every W-th of those. An identity lives in exactly
  one shard, so in any step the ranks (and workers) hold disjoint identities. With fewer
  shards than rank x worker slots, every slot reads all shards and keeps the labels with
  `label % slots == slot` instead (same guarantee, more reading).
* Batch i of a rank comes from virtual worker `i % W`; torch's DataLoader takes batches from
  its workers round-robin, so starting at step s, loader worker w plays virtual worker
  (s + w) % W. Resuming at step s replays the sampling decisions of the epoch up to s
  without decoding any image, so the batches equal those of an uninterrupted run.
* Random flips of batch i come from a generator seeded with (seed, rank, i).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
from facetrain.data_prep.align import TEMPLATES
from facetrain.pipeline.config import DataConfig
from facetrain.pipeline.data.samplers import Pick, pk_batches, shuffled_batches
from facetrain.pipeline.data.shards import DatasetIndex, Identity, ShardInfo, iter_identities
from facetrain.pipeline.data.transforms import (
    decode_rgb,
    hflip,
    landmark_jitter_matrix,
    warp_face,
)
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class FaceBatches(IterableDataset):
    """Batches `{"images": uint8 [B,H,W,3], "labels": int64 [B], "step": int}` for one rank."""

    def __init__(
        self,
        index: DatasetIndex,
        data: DataConfig,
        sampler: Literal["pk", "shuffle"],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
    ):
        self.index, self.data, self.sampler = index, data, sampler
        self.rank, self.world_size, self.seed, self.start_step = rank, world_size, seed, start_step
        self.num_workers = max(1, data.workers)
        self.slots = world_size * self.num_workers
        self.batch_size = data.batch.p * data.batch.k
        per_rank = index.samples // (world_size * self.batch_size)
        self.batches_per_epoch = max(
            self.num_workers, per_rank // self.num_workers * self.num_workers
        )
        self.mean_count = index.samples / max(1, index.identities)
        self._check_enough_identities()

    def _check_enough_identities(self) -> None:
        if self.sampler != "pk":
            return
        p = self.data.batch.p
        smallest = self.index.identities // self.slots
        if len(self.index.shards) >= self.slots:
            counts = sorted(shard.identities for shard in self.index.shards)
            smallest = sum(counts[: len(counts) // self.slots])
        if smallest < p:
            raise ValueError(
                f"data.shards: {self.index.identities} identities in {len(self.index.shards)} shards "
                f"leave a loader slot (of {self.world_size} ranks x {self.num_workers} workers) only "
                f"{smallest} identities, fewer than data.batch.p={p}; lower data.workers or data.batch.p"
            )

    def _sources(self, epoch: int, worker: int) -> tuple[list[ShardInfo], Callable[[int], bool]]:
        permuted = [
            self.index.shards[i]
            for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.index.shards))
        ]
        slot = self.rank * self.num_workers + worker
        if len(permuted) >= self.slots:
            return permuted[self.rank :: self.world_size][
                worker :: self.num_workers
            ], lambda label: True
        return permuted, lambda label: label % self.slots == slot

    def _epoch_picks(self, epoch: int, worker: int) -> Iterator[list[Pick]]:
        """This worker's batches of `epoch`, in order (its shards re-read as often as needed)."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        shards, keep = self._sources(epoch, worker)

        def identities() -> Iterator[Identity]:
            for _ in itertools.count():
                for position in rng.permutation(len(shards)):
                    yield from (
                        identity
                        for identity in iter_identities(shards[position])
                        if keep(identity.label)
                    )

        if self.sampler == "pk":
            return pk_batches(
                identities(),
                self.data.batch.p,
                self.data.batch.k,
                self.data.weighting,
                self.mean_count,
                self.data.buffer_identities,
                rng,
            )
        samples = (
            Pick(identity.label, key, image, identity)
            for identity in identities()
            for key, image in zip(identity.keys, identity.images, strict=True)
        )
        return shuffled_batches(samples, self.batch_size, self.data.shuffle_buffer, rng)

    def picks(self, first_step: int, worker: int) -> Iterator[tuple[int, list[Pick]]]:
        """(step, picks) for steps first_step, first_step + W, ... of virtual worker `worker`."""
        step = first_step + (worker - first_step) % self.num_workers
        while True:
            epoch = step // self.batches_per_epoch
            epoch_end = (epoch + 1) * self.batches_per_epoch
            batches = self._epoch_picks(epoch, worker)
            # Replay the epoch's earlier batches of this worker: sampling only, no decoding.
            for _ in range((step - epoch * self.batches_per_epoch) // self.num_workers):
                next(batches)
            while step < epoch_end:
                yield step, next(batches)
                step += self.num_workers

    def collate(self, step: int, picks: list[Pick]) -> dict:
        """Decode a batch. An image that fails to decode (or has another size) is replaced by
        another image of the same identity, so the P x K shape holds; the batch's
        `bad_samples` names each failure ("shard/key: reason") for the loop to count."""
        flips = np.random.default_rng([self.seed, self.rank, step]).random(len(picks)) < 0.5
        bad: list[str] = []
        first = self._decode_or_replace(step, 0, picks[0], None, bad)
        # Decode straight into one tensor, in shared memory inside a loader worker, so
        # handing the batch to the training process copies nothing.
        images = torch.empty((len(picks), *first.shape), dtype=torch.uint8)
        if get_worker_info() is not None:
            images.share_memory_()
        pixels = images.numpy()
        pixels[0] = first
        for slot, pick in enumerate(picks[1:], start=1):
            self._decode_or_replace(step, slot, pick, pixels[slot], bad)
        if self.data.landmark_jitter > 0:
            # Its own stream, so turning jitter on leaves the flips (and all else) as they were.
            rng = np.random.default_rng([self.seed, self.rank, step, 1])
            points = self._template_points(pixels.shape[2], pixels.shape[1])
            for slot in range(len(picks)):
                matrix = landmark_jitter_matrix(rng, self.data.landmark_jitter, points)
                pixels[slot] = warp_face(pixels[slot], matrix)
        if self.data.flip:
            for slot in np.flatnonzero(flips):
                pixels[slot] = hflip(pixels[slot])  # numpy copies overlapping views safely
        return {
            "images": images,
            "labels": torch.tensor([pick.label for pick in picks], dtype=torch.int64),
            "step": step,
            "bad_samples": bad,
        }

    def _template_points(self, width: int, height: int) -> np.ndarray:
        """Where the five points sit in these faces: prep's alignment template (the arcface
        one for unaligned crops), scaled to the stored image size."""
        template = TEMPLATES.get(self.index.manifest.get("align", ""), TEMPLATES["arcface"])
        return template.points * (np.array([width, height]) / np.array(template.size))

    def _decode_or_replace(
        self, step: int, slot: int, pick: Pick, out: np.ndarray | None, bad: list[str]
    ) -> np.ndarray:
        identity = pick.identity
        shard = identity.shard if identity is not None and identity.shard else "?"
        try:
            return decode_rgb(pick.image, where=f"{shard}/{pick.key}", out=out)
        except ValueError as err:
            bad.append(str(err))
        if identity is None:
            raise ValueError(f"step {step}: {bad[-1]}; no other image of its identity at hand")
        # Stand-ins in an order fixed by (seed, rank, step, slot): a resumed run replays it.
        order = np.random.default_rng([self.seed, self.rank, step, slot]).permutation(
            len(identity.keys)
        )
        for index in order:
            if identity.keys[index] == pick.key:
                continue
            try:
                return decode_rgb(
                    identity.images[index], where=f"{shard}/{identity.keys[index]}", out=out
                )
            except ValueError as err:
                bad.append(str(err))
        raise ValueError(
            f"step {step}: no image of identity {pick.label} in shard {shard} decodes: "
            + "; ".join(bad)
        )

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        loader_worker = info.id if info is not None else 0
        first_step = self.start_step + loader_worker
        worker = first_step % self.num_workers
        for step, picks in self.picks(first_step, worker):
            yield self.collate(step, picks)


def _worker_init(worker_id: int) -> None:
    """A loader worker dies with its rank, however the rank ends (kill -9 included), and
    leaves Ctrl-C to the rank, which shuts its workers down itself."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the rank died before prctl took effect
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(
    index: DatasetIndex,
    data: DataConfig,
    sampler: Literal["pk", "shuffle"],
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    start_step: int = 0,
) -> DataLoader:
    """An endless DataLoader of this rank's batches, starting at `start_step`."""
    dataset = FaceBatches(index, data, sampler, rank, world_size, seed, start_step)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=data.workers,
        prefetch_factor=4 if data.workers else None,
        persistent_workers=False,
        worker_init_fn=_worker_init,
        # Its own generator: starting the workers must not draw from the global torch RNG,
        # or a resumed run's dropout would differ from the uninterrupted one.
        generator=torch.Generator().manual_seed(seed * 1_000_003 + rank),
    )
