"""Which images go into a batch: identity-balanced P x K, or a plain shuffle (pure functions).

P x K (FaceNet; Hermans et al. 2017): each batch holds P identities x K images, so every
anchor has K-1 positives and (P-1)K negatives. Identities stream in from identity-grouped
shards into a buffer; each identity gets a number of *visits* (credits) on arrival, drawn so
its expected count is proportional to its weight:

    uniform   every identity the same       (identity-balanced: 1 visit per pass)
    instance  proportional to image count   (like an ordinary epoch over images)
    sqrt      proportional to sqrt(count)   (between the two)

normalised by the weight of the dataset's mean identity. A step draws P buffered identities
uniformly without replacement and spends one credit of each; an identity leaves the buffer
when its credits are spent. Its K images are drawn without replacement, or, when it has
fewer than K, all of them plus draws with replacement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from facetrain.pipeline.data.shards import Identity

WEIGHTS = {
    "uniform": lambda count: 1.0,
    "instance": lambda count: float(count),
    "sqrt": lambda count: math.sqrt(count),
}


class Pick(NamedTuple):
    label: int
    key: str
    image: bytes
    # The identity it came from: where the loader finds a stand-in for an undecodable image.
    identity: Identity | None = None


def identity_credits(
    count: int, weighting: str, mean_count: float, rng: np.random.Generator
) -> int:
    """Visits for an identity of `count` images: expectation w(count)/w(mean_count), rounded
    stochastically so the expectation stays exact for every identity."""
    weight = WEIGHTS[weighting]
    expected = weight(count) / weight(mean_count)
    whole = math.floor(expected)
    return whole + int(rng.random() < expected - whole)


def draw_k(count: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """K image indices of an identity with `count` images (with replacement only if count < K)."""
    if count >= k:
        return rng.choice(count, size=k, replace=False)
    extra = rng.integers(0, count, size=k - count)
    return rng.permutation(np.concatenate([np.arange(count), extra]))


def pk_batches(
    identities: Iterator[Identity],
    p: int,
    k: int,
    weighting: str,
    mean_count: float,
    buffer_size: int,
    rng: np.random.Generator,
) -> Iterator[list[Pick]]:
    """P x K batches from a stream of identities; ends when fewer than P identities remain."""
    if buffer_size < p:
        raise ValueError(f"data.buffer_identities={buffer_size} must be >= data.batch.p={p}")
    # Keyed by label: an identity that streams in again (a small shard set read a second
    # time) adds credits to its buffered entry instead of appearing twice in one batch.
    buffer: dict[int, Identity] = {}
    credits: dict[int, int] = {}
    exhausted = False
    while True:
        repeats = 0
        while not exhausted and len(buffer) < buffer_size:
            identity = next(identities, None)
            if identity is None:
                exhausted = True
                break
            visits = identity_credits(len(identity.images), weighting, mean_count, rng)
            if visits == 0:
                continue
            if identity.label in buffer:
                credits[identity.label] += visits
                # The stream came round again: the buffer already holds all it can offer.
                repeats += 1
                if len(buffer) >= p:
                    break
                if repeats > 100 * buffer_size:
                    raise ValueError(
                        f"the identity stream repeats {len(buffer)} identities, fewer than data.batch.p={p}"
                    )
                continue
            buffer[identity.label] = identity
            credits[identity.label] = visits
        if len(buffer) < p:
            return
        labels = list(buffer)
        batch = []
        for slot in rng.choice(len(labels), size=p, replace=False):
            identity = buffer[labels[slot]]
            for index in draw_k(len(identity.images), k, rng):
                batch.append(
                    Pick(identity.label, identity.keys[index], identity.images[index], identity)
                )
            credits[identity.label] -= 1
            if credits[identity.label] == 0:
                del buffer[identity.label], credits[identity.label]
        yield batch


def shuffled_batches(
    samples: Iterator[Pick], batch_size: int, buffer_size: int, rng: np.random.Generator
) -> Iterator[list[Pick]]:
    """Batches of `batch_size` through a shuffle buffer; a last partial batch is dropped."""
    buffer: list[Pick] = []
    batch: list[Pick] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        slot = int(rng.integers(len(buffer)))
        batch.append(buffer[slot])
        buffer[slot] = sample
        if len(batch) == batch_size:
            yield batch
            batch = []
    for slot in rng.permutation(len(buffer)):
        batch.append(buffer[slot])
        if len(batch) == batch_size:
            yield batch
            batch = []
