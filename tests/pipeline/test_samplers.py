"""P x K sampling, weighting, shuffling, rank-disjointness and resumable loader order."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from facetrain.pipeline.config import DataConfig, TrainSection
from facetrain.pipeline.data.loader import FaceBatches, build_loader
from facetrain.pipeline.data.samplers import draw_k, pk_batches, shuffled_batches
from facetrain.pipeline.data.shards import Identity, read_dataset_index
from facetrain.pipeline.train.schedule import lr_factor

from tests.pipeline.shards import write_shards


def identities(counts):
    return [
        Identity(label, [f"{label}/{i}" for i in range(count)], [b"x"] * count)
        for label, count in enumerate(counts)
    ]


def test_pk_batches_hold_p_identities_of_k_images():
    rng = np.random.default_rng(0)
    counts = [1, 2, 3, 5, 8] * 20
    mean = float(np.mean(counts))
    batches = list(
        pk_batches(
            iter(identities(counts)),
            p=6,
            k=4,
            weighting="uniform",
            mean_count=mean,
            buffer_size=20,
            rng=rng,
        )
    )
    assert len(batches) >= 10
    for batch in batches:
        per_label = Counter(pick.label for pick in batch)
        assert len(batch) == 24 and len(per_label) == 6 and set(per_label.values()) == {4}
        for label in per_label:
            keys = [pick.key for pick in batch if pick.label == label]
            if counts[label] >= 4:  # enough images: K distinct ones
                assert len(set(keys)) == 4
            else:  # fewer than K: every image, plus repeats drawn with replacement
                assert set(keys) == {f"{label}/{i}" for i in range(counts[label])}


def test_draw_k_uses_replacement_only_when_needed():
    rng = np.random.default_rng(1)
    for count, k in [(10, 4), (4, 4), (3, 5), (1, 3)]:
        for _ in range(20):
            picked = draw_k(count, k, rng)
            assert len(picked) == k and picked.min() >= 0 and picked.max() < count
            assert len(set(picked.tolist())) == min(count, k)


@pytest.mark.parametrize(
    "weighting, expected_ratio",
    [("uniform", 1.0), ("instance", 16 / 2), ("sqrt", math.sqrt(16 / 2))],
)
def test_weighting_sets_how_often_an_identity_is_visited(weighting, expected_ratio):
    # Half the identities have 2 images, half 16: visits per identity should scale as w(count).
    counts = [2, 16] * 1500
    rng = np.random.default_rng(2)
    visits = Counter()
    for batch in pk_batches(
        iter(identities(counts)),
        p=8,
        k=2,
        weighting=weighting,
        mean_count=float(np.mean(counts)),
        buffer_size=64,
        rng=rng,
    ):
        visits.update({pick.label for pick in batch})
    small = sum(visits[label] for label in range(0, len(counts), 2)) / (len(counts) / 2)
    large = sum(visits[label] for label in range(1, len(counts), 2)) / (len(counts) / 2)
    assert large / small == pytest.approx(expected_ratio, rel=0.1)


def test_shuffled_batches_visit_every_sample_once_in_mixed_order():
    from facetrain.pipeline.data.samplers import Pick

    samples = [Pick(i // 5, str(i), b"") for i in range(1000)]
    batches = list(shuffled_batches(iter(samples), 50, 200, np.random.default_rng(3)))
    keys = [pick.key for batch in batches for pick in batch]
    assert sorted(keys, key=int) == [str(i) for i in range(1000)]
    assert keys[:50] != [str(i) for i in range(50)]


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    counts = [2, 3, 4, 6, 1, 5] * 8  # 48 identities, 168 images
    return write_shards(tmp_path_factory.mktemp("shards"), counts, num_shards=6, size=32)


@pytest.mark.parametrize("workers", [1, 2, 4])  # 6 shards: 2x1, 2x2 by shard; 2x4 by label
def test_ranks_hold_disjoint_identities_in_every_step(shard_root, workers):
    index = read_dataset_index(str(shard_root))
    data = DataConfig(
        shards=str(shard_root), batch={"p": 2, "k": 2}, workers=workers, buffer_identities=4
    )
    streams = [FaceBatches(index, data, "pk", rank, 2, seed=5) for rank in range(2)]
    per_worker = [[s.picks(first_step=w, worker=w) for w in range(s.num_workers)] for s in streams]
    for step in range(3 * streams[0].batches_per_epoch):  # crosses epoch boundaries
        labels = []
        for rank, stream in enumerate(streams):
            got_step, picks = next(per_worker[rank][step % stream.num_workers])
            assert got_step == step
            labels.append({pick.label for pick in picks})
            assert len(labels[-1]) == 2
        assert not labels[0] & labels[1], (
            f"step {step}: ranks share identities {labels[0] & labels[1]}"
        )


def test_loader_resumes_mid_epoch_with_the_same_batches(shard_root):
    index = read_dataset_index(str(shard_root))
    data = DataConfig(
        shards=str(shard_root), batch={"p": 2, "k": 2}, workers=2, buffer_identities=4
    )

    def take(start, count):
        loader = build_loader(index, data, "pk", rank=1, world_size=2, seed=9, start_step=start)
        return [batch for batch, _ in zip(loader, range(count), strict=False)]

    full = take(0, 9)
    resumed = take(5, 4)
    assert [b["step"] for b in full] == list(range(9))
    for expected, got in zip(full[5:], resumed, strict=True):
        assert got["step"] == expected["step"]
        assert torch.equal(got["labels"], expected["labels"])
        assert torch.equal(got["images"], expected["images"])
    assert full[0]["images"].dtype == torch.uint8 and full[0]["images"].shape == (4, 32, 32, 3)


def test_lr_schedule_warms_up_then_decays():
    cosine = TrainSection(steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.0)
    assert [lr_factor(s, cosine) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, cosine) == pytest.approx(1.0)
    assert lr_factor(60, cosine) == pytest.approx(0.5)
    assert lr_factor(110, cosine) == pytest.approx(0.0, abs=1e-12)
    poly = TrainSection(steps=100, schedule="poly", poly_power=2.0)
    assert lr_factor(50, poly) == pytest.approx(0.25)
    step = TrainSection(steps=100, schedule="step", step_milestones=[30, 60], step_gamma=0.1)
    assert [lr_factor(s, step) for s in (29, 30, 59, 60)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_shuffle_sampler_covers_its_shards_and_ranks_stay_disjoint(shard_root):
    from facetrain.pipeline.data.shards import iter_samples

    index = read_dataset_index(str(shard_root))
    data = DataConfig(shards=str(shard_root), batch={"p": 4, "k": 2}, workers=1, shuffle_buffer=16)
    streams = [FaceBatches(index, data, "shuffle", rank, 2, seed=4) for rank in range(2)]
    keys = []
    for stream in streams:
        picks = stream.picks(first_step=0, worker=0)
        batches = [next(picks)[1] for _ in range(stream.batches_per_epoch)]
        assert all(len(batch) == 8 for batch in batches)
        keys.append({pick.key for batch in batches for pick in batch})
        urls, _ = stream._sources(epoch=0, worker=0)
        own = {key for url in urls for _, key, _ in iter_samples(url)}
        # Equal step counts on every rank: a rank with less data wraps round its shards
        # rather than stopping early (a streaming shuffle buffer then mixes in the next pass
        # before the last items of this one come out); it never reads another rank's shards.
        assert keys[-1] <= own and len(keys[-1]) >= 0.9 * min(
            len(own), 8 * stream.batches_per_epoch
        )
    assert not keys[0] & keys[1]
