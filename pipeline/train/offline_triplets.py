"""Offline triplet selection as a training mode: rounds of (embed a sample, select, train).

Enabled by a triplet loss term with `selection: offline` (config: `OfflineSelectionConfig`).
Round r covers steps [r * every, (r + 1) * every). At its first step, on every rank:

1. the round's sample is streamed from the shards: `identities` identities and at most
   `images_per_identity` images of each, chosen by (seed, r), so every rank reads the same;
2. the current backbone embeds it in eval mode: chunk c (of data.batch.p * k images) is
   embedded by rank c % W, and an all-reduce of the zero-filled [N, D] matrix hands every
   rank all rows. The chunks do not depend on W, so the embeddings equal one rank's bit for bit;
3. `losses.selected_triplets.select_triplets` picks one triplet per qualifying (anchor,
   positive) pair in float64, with a generator seeded by (seed, r): every rank gets the same
   list, shuffled with the same generator;
4. step s of the round takes, on rank k, the `triplets_per_batch` triplets at positions
   ((s - r * every) * W + k) * triplets_per_batch onwards (cyclically), as rows a, p, n;
   a thread decodes the next step's batch while the current one trains.

The triplet term (built with selection: offline) then computes the loss of exactly those
triplets, rows (a, p, n, ...), without mining.
The round's shuffled triplets live in `trainer.extra_state`, so a checkpoint taken mid-round
carries them; a resumed run re-streams the same sample and takes up the same batches.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from facetrain.losses.selected_triplets import Selection, select_triplets
from facetrain.pipeline.config import TrainConfig, TripletTerm
from facetrain.pipeline.data.shards import DatasetIndex, iter_identities
from facetrain.pipeline.data.transforms import decode_rgb, hflip, normalize_batch
from facetrain.pipeline.train.hooks import Hook
from facetrain.pipeline.train.precision import autocast
from facetrain.pipeline.train.trainer import StepOutput, Trainer
from torch import Tensor

log = logging.getLogger("facetrain.train")

STATE_KEY = "offline_triplets"  # in trainer.extra_state, hence in every checkpoint
_SAMPLE_STREAM, _SELECT_STREAM = 1, 2  # distinct random streams per (seed, round)


@dataclass
class RoundSample:
    """The images embedded in one round, identity by identity (encoded bytes)."""

    labels: Tensor  # int64 [N]
    keys: list[str]
    images: list[bytes]

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]


def offline_term(cfg: TrainConfig) -> TripletTerm | None:
    """The triplet term when it asks for offline selection, else None."""
    for term in cfg.loss:
        if term.type == "triplet" and term.selection == "offline":
            return term
    return None


def choose_sample(
    index: DatasetIndex, seed: int, round_index: int, identities: int, images_per_identity: int
) -> RoundSample:
    """Stream round `round_index`'s sample: random identities from a random few shards.

    Shards are taken in a (seed, round) permutation until they hold twice the identities
    wanted, then `identities` of those are drawn, and up to `images_per_identity` images of
    each: only those shards are read, and only up to the last identity drawn.
    """
    rng = np.random.default_rng([seed, _SAMPLE_STREAM, round_index])
    shards, seen = [], 0
    for position in rng.permutation(len(index.shards)):
        shards.append(index.shards[position])
        seen += index.shards[position].identities
        if seen >= 2 * identities:
            break
    if seen == 0:
        raise ValueError(
            f"data.shards: its {len(index.shards)} shards list no identities; offline triplet "
            "selection has nothing to sample"
        )
    chosen = set(rng.choice(seen, size=min(identities, seen), replace=False).tolist())
    streamed = itertools.chain.from_iterable(iter_identities(shard) for shard in shards)
    labels, keys, images = [], [], []
    for ordinal, identity in enumerate(itertools.islice(streamed, max(chosen) + 1)):
        if ordinal not in chosen:
            continue
        count = len(identity.images)
        for image_index in sorted(
            rng.choice(count, size=min(count, images_per_identity), replace=False)
        ):
            labels.append(identity.label)
            keys.append(identity.keys[image_index])
            images.append(identity.images[image_index])
    return RoundSample(torch.tensor(labels, dtype=torch.int64), keys, images)


def embed_sample(
    backbone: torch.nn.Module,
    images: list[bytes],
    embedding_size: int,
    chunk_size: int,
    device: torch.device,
    precision: str = "fp32",
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """float32 [N, D] embeddings of all `images` on every rank (eval mode, no flips; the
    backbone under the training's autocast).

    Rank k embeds chunks k, k + W, ...; the others' rows stay zero until the all-reduce sum.
    """
    world = dist.get_world_size(group) if group is not None else 1
    rank = dist.get_rank(group) if group is not None else 0
    embeddings_all = torch.zeros(len(images), embedding_size, dtype=torch.float32, device=device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            for start in range(rank * chunk_size, len(images), world * chunk_size):
                chunk = images[start : start + chunk_size]
                pixels = np.stack(
                    [
                        decode_rgb(data, where=f"sample image {start + i}")
                        for i, data in enumerate(chunk)
                    ]
                )
                batch = normalize_batch(torch.from_numpy(pixels)).to(device)
                with autocast(device, precision):
                    embeddings_all[start : start + len(chunk)] = backbone(batch).float()
    finally:
        backbone.train(was_training)
    if world > 1:
        dist.all_reduce(embeddings_all, group=group)
    return embeddings_all.cpu()


def _round_generator(seed: int, round_index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, _SELECT_STREAM, round_index]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


def select_round(
    embeddings: Tensor,
    labels: Tensor,
    margin: float,
    negatives: str,
    normalize: bool,
    seed: int,
    round_index: int,
) -> tuple[Tensor, Selection]:
    """(shuffled int64 [T, 3] triplets, the selection) for one round; same on every rank.

    A sample where no pair has a negative inside the margin (the model already separates
    it) falls back to one random negative per pair, so the round still has batches.
    """
    generator = _round_generator(seed, round_index)
    selection = select_triplets(embeddings, labels, margin, negatives, generator, normalize)
    triplets = selection.triplets
    if triplets.shape[0] == 0:
        fallback = select_triplets(
            embeddings, labels, float("inf"), "random-within-margin", generator, normalize
        )
        triplets = fallback.triplets
    if triplets.shape[0] == 0:
        raise ValueError(
            f"offline triplet round {round_index}: the sample of {labels.numel()} images has no "
            "identity with 2 images and another identity; raise offline.identities or "
            "offline.images_per_identity (>= 2 images per identity are needed)"
        )
    order = torch.randperm(triplets.shape[0], generator=generator)
    return triplets[order], selection


def batch_positions(
    step_in_round: int, rank: int, world_size: int, per_batch: int, num_triplets: int
) -> Tensor:
    """Positions in the round's triplet list for one rank's batch (cyclic over the list)."""
    first = (step_in_round * world_size + rank) * per_batch
    return torch.arange(first, first + per_batch) % num_triplets


class OfflineTriplets(Hook):
    """The batch source of offline mode, and a hook that logs each round's statistics."""

    def __init__(self, cfg: TrainConfig, index: DatasetIndex, trainer: Trainer, term: TripletTerm):
        self.cfg, self.index, self.trainer, self.term = cfg, index, trainer, term
        self.options = term.offline
        self.margin = term.margin if self.options.margin is None else self.options.margin
        self.per_batch = self.options.triplets_per_batch or cfg.data.batch.size // 3
        if self.per_batch < 1:
            raise ValueError(
                f"data.batch p*k={cfg.data.batch.size}: offline triplet batches hold whole "
                "triplets, so set offline.triplets_per_batch or p*k >= 3"
            )
        self.group = trainer.group if trainer.world_size > 1 else None
        self.round_index: int | None = None
        self.sample: RoundSample | None = None
        self.triplets: Tensor | None = None
        self._round_stats: dict[str, float] = {}
        self._train_seconds = 0.0
        self._trained_triplets = self._active_triplets = 0

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, index: DatasetIndex, trainer: Trainer
    ) -> OfflineTriplets | None:
        term = offline_term(cfg)
        return None if term is None else cls(cfg, index, trainer, term)

    # ---------------------------------------------------------------- rounds
    def _start_round(self, round_index: int) -> None:
        options, trainer = self.options, self.trainer
        started = time.perf_counter()
        self.sample = choose_sample(
            self.index,
            self.cfg.train.seed,
            round_index,
            options.identities,
            options.images_per_identity,
        )
        self.round_index = round_index
        saved = trainer.extra_state.get(STATE_KEY)
        if saved is not None and saved["round"] == round_index:
            if saved["sample"] == self.sample.fingerprint():
                self.triplets = saved["triplets"].long()
                return  # resumed mid-round: its statistics were logged before
            log.warning(
                "offline triplet round %d: the shards' sample differs from the checkpoint's; "
                "selecting again with the current weights",
                round_index,
            )
        embeddings = embed_sample(
            trainer.backbone,
            self.sample.images,
            self.cfg.model.embedding_size,
            self.cfg.data.batch.size,
            trainer.device,
            trainer.precision,
            self.group,
        )
        embedded = time.perf_counter()
        self.triplets, selection = select_round(
            embeddings,
            self.sample.labels,
            self.margin,
            options.negatives,
            self.term.normalize,
            self.cfg.train.seed,
            round_index,
        )
        selected = selection.triplets.shape[0]
        trainer.extra_state[STATE_KEY] = {
            "round": round_index,
            "sample": self.sample.fingerprint(),
            "triplets": self.triplets.to(torch.int32),
        }
        self._round_stats = {
            "offline/round": float(round_index),
            "offline/sample_images": float(len(self.sample.keys)),
            "offline/valid_pairs": float(selection.num_pairs),
            "offline/triplets_selected": float(selected),
            "offline/positive_loss_fraction": (
                float((selection.losses > 0).double().mean()) if selected else 0.0
            ),
            "offline/embed_seconds": embedded - started,
            "offline/select_seconds": time.perf_counter() - embedded,
        }

    def batch(self, step: int) -> dict:
        """This rank's batch of `step`: {"images": uint8 [3T,H,W,3], "labels", "step"}."""
        every = self.options.every
        if self.round_index != step // every:
            self._start_round(step // every)
        assert self.sample is not None and self.triplets is not None
        positions = batch_positions(
            step - self.round_index * every,
            self.trainer.rank,
            self.trainer.world_size,
            self.per_batch,
            self.triplets.shape[0],
        )
        rows = self.triplets[positions].reshape(-1).tolist()
        flips = np.random.default_rng([self.cfg.train.seed, self.trainer.rank, step]).random(
            len(rows)
        )
        images = []
        for row, flip in zip(rows, flips, strict=True):
            pixels = decode_rgb(self.sample.images[row], where=f"sample {self.sample.keys[row]}")
            images.append(hflip(pixels) if self.cfg.data.flip and flip < 0.5 else pixels)
        return {
            "images": torch.from_numpy(np.stack(images)),
            "labels": self.sample.labels[rows],
            "step": step,
        }

    def batches(self) -> Iterator[dict]:
        """Endless batches from the trainer's current step.

        A round's first batch is made when the loop asks for it, so the round embeds with
        the weights of the step before; the round's other batches depend only on its
        triplets, so each is decoded in a thread while the previous step trains.
        """
        step = self.trainer.step
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-triplets") as pool:
            upcoming: Future | None = None
            while True:
                batch = upcoming.result() if upcoming is not None else self.batch(step)
                step += 1
                same_round = step % self.options.every != 0
                upcoming = pool.submit(self.batch, step) if same_round else None
                yield batch

    # ---------------------------------------------------------------- hook
    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        # Runs ahead of the MLflow hook: the round's figures ride on the step's statistics.
        if self._round_stats:
            out.stats.update(self._round_stats)
            self._round_stats = {}
        self._train_seconds += out.seconds
        self._trained_triplets += int(out.stats.get("triplet/num_triplets", 0))
        self._active_triplets += int(out.stats.get("triplet/num_active", 0))
        if trainer.step % self.options.every == 0 or trainer.step >= self.cfg.train.steps:
            out.stats["offline/train_seconds"] = self._train_seconds
            # How many of the round's triplets still had a positive loss when trained on.
            out.stats["offline/train_active_fraction"] = self._active_triplets / max(
                1, self._trained_triplets
            )
            self._train_seconds = 0.0
            self._trained_triplets = self._active_triplets = 0
