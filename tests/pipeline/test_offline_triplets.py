"""Offline triplet selection: the selection rule vs brute force, 2 ranks vs 1, training, resume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from facetrain.losses import TripletLoss
from facetrain.losses.selected_triplets import select_triplets
from facetrain.pipeline.train.offline_triplets import (
    batch_positions,
    choose_sample,
    embed_sample,
    select_round,
)

from tests.dist import run_ranks
from tests.pipeline.shards import face_pixels, write_shards

# ---------------------------------------------------------------- brute-force references


def squared_distances(embeddings: torch.Tensor) -> list[list[float]]:
    rows = [[float(v) for v in row] for row in embeddings.double()]
    rows = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]
    return [[sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) for b in rows] for a in rows]


def reference_pairs(labels: list[int]):
    """(anchor, positive, negatives of the anchor), for anchors that have a negative."""
    for a, label_a in enumerate(labels):
        negatives = [n for n, label in enumerate(labels) if label != label_a]
        if not negatives:
            continue
        for p, label_p in enumerate(labels):
            if p != a and label_p == label_a:
                yield a, p, negatives


def reference_selection(embeddings, labels, margin, rule):
    distances = squared_distances(embeddings)
    triplets, num_pairs = [], 0
    for a, p, negatives in reference_pairs(labels):
        num_pairs += 1
        d_ap = distances[a][p]
        if rule == "semihard":
            eligible = [n for n in negatives if d_ap < distances[a][n] < d_ap + margin]
        else:  # hard: the anchor's nearest negative, when inside the margin
            nearest = min(negatives, key=lambda n: distances[a][n])
            eligible = [nearest] if distances[a][nearest] < d_ap + margin else []
        if eligible:
            triplets.append((a, p, min(eligible, key=lambda n: distances[a][n])))
    return triplets, num_pairs, distances


def fixed_sample(seed=0, identities=5, per_identity=6, dim=4):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    centres = torch.randn(identities, dim, generator=generator)
    embeddings = centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=generator)
    return embeddings.float(), labels


@pytest.mark.parametrize("rule", ["semihard", "hard"])
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_selection_matches_brute_force(rule, margin):
    embeddings, labels = fixed_sample()
    labels[-1] = 9  # an identity with one image: a negative for all, never an anchor
    expected, num_pairs, distances = reference_selection(embeddings, labels.tolist(), margin, rule)
    selection = select_triplets(embeddings, labels, margin, rule, block_rows=7)
    assert [tuple(t) for t in selection.triplets.tolist()] == expected
    assert selection.num_pairs == num_pairs
    assert len(expected) > 5  # the sample is informative at both margins
    expected_losses = [distances[a][p] - distances[a][n] + margin for a, p, n in expected]
    torch.testing.assert_close(selection.losses, torch.tensor(expected_losses, dtype=torch.float64))


def test_random_within_margin_draws_uniformly_among_eligible():
    embeddings, labels = fixed_sample(seed=1)
    margin = 0.6
    distances = squared_distances(embeddings)
    eligible = {
        (a, p): [n for n in negatives if distances[a][n] < distances[a][p] + margin]
        for a, p, negatives in reference_pairs(labels.tolist())
    }
    eligible = {pair: ns for pair, ns in eligible.items() if ns}
    seen: dict[tuple[int, int], set[int]] = {pair: set() for pair in eligible}
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        selection = select_triplets(
            embeddings, labels, margin, "random-within-margin", generator, block_rows=11
        )
        pairs = [(a, p) for a, p, _ in selection.triplets.tolist()]
        assert pairs == sorted(eligible)  # one triplet per pair with an eligible negative
        for a, p, n in selection.triplets.tolist():
            assert n in eligible[(a, p)]
            seen[(a, p)].add(n)
    again = select_triplets(
        embeddings, labels, margin, "random-within-margin", torch.Generator().manual_seed(59)
    )
    assert torch.equal(again.triplets, selection.triplets)  # reproducible from the generator
    # Uniform among the eligible: with 60 draws every pair has seen (nearly) all its choices.
    covered = sum(len(seen[pair]) for pair in eligible) / sum(len(ns) for ns in eligible.values())
    assert covered > 0.95


def test_offline_triplet_loss_matches_brute_force():
    embeddings, labels = fixed_sample(seed=2)
    triplets = select_triplets(embeddings, labels, 0.5, "hard").triplets[:12]
    rows = triplets.reshape(-1)
    batch = embeddings[rows].clone().requires_grad_(True)
    loss_fn = TripletLoss(margin=0.5, selection="offline")
    loss = loss_fn(batch, labels[rows])
    distances = squared_distances(embeddings)
    per_triplet = [
        max(0.0, distances[a][p] - distances[a][n] + 0.5) for a, p, n in triplets.tolist()
    ]
    assert float(loss.detach()) == pytest.approx(sum(per_triplet) / len(per_triplet), rel=1e-5)
    assert loss_fn.statistics()["num_active"] == sum(v > 0 for v in per_triplet)
    loss.backward()
    assert batch.grad is not None and torch.isfinite(batch.grad).all()
    with pytest.raises(ValueError, match="triplet 0 has labels"):
        loss_fn(batch[:3].detach(), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multiple of 3"):
        loss_fn(batch[:4].detach(), labels[rows][:4])


def test_batch_positions_partition_the_round():
    taken = [
        batch_positions(step, rank, 3, 4, 1000).tolist() for step in range(5) for rank in range(3)
    ]
    flat = [p for batch in taken for p in batch]
    assert flat == list(range(60))  # steps x ranks take consecutive, disjoint slices
    assert batch_positions(2, 1, 2, 4, 7).tolist() == [6, 0, 1, 2]  # cyclic past the end


def test_sample_holds_the_configured_identities_and_images(tmp_path):
    from facetrain.pipeline.data.shards import read_dataset_index

    counts = [2 + label % 7 for label in range(30)]
    index = read_dataset_index(str(write_shards(tmp_path, counts, num_shards=5)))
    samples = [choose_sample(index, 0, round_index, 6, 4) for round_index in range(4)]
    for sample in samples:
        labels = sample.labels.tolist()
        assert len(set(labels)) == 6
        for label in set(labels):
            assert labels.count(label) == min(counts[label], 4)
        pairs = zip(sample.keys, labels, strict=True)
        assert all(int(key.split("_")[0]) == label for key, label in pairs)  # key: label_index
        assert len(set(sample.keys)) == len(sample.keys)  # images drawn without replacement
    assert choose_sample(index, 0, 2, 6, 4).keys == samples[2].keys  # (seed, round) fixes it
    assert len({tuple(sample.keys) for sample in samples}) == 4  # rounds see other samples


# ---------------------------------------------------------------- a round on 2 ranks vs 1


def embed_and_select(rank, world_size, shards):
    from facetrain.pipeline.data.shards import read_dataset_index
    from facetrain.pipeline.models import build_backbone

    index = read_dataset_index(str(shards))
    sample = choose_sample(index, seed=3, round_index=1, identities=7, images_per_identity=5)
    torch.manual_seed(0)
    backbone = build_backbone("tiny", 8)
    group = torch.distributed.group.WORLD if world_size > 1 else None
    # chunks of 4 over an odd-sized sample: ranks hold unequal numbers of chunks
    embeddings = embed_sample(backbone, sample.images, 8, 4, torch.device("cpu"), group=group)
    triplets, selection = select_round(
        embeddings, sample.labels, 0.2, "random-within-margin", True, seed=3, round_index=1
    )
    return {"keys": sample.keys, "embeddings": embeddings, "triplets": triplets}


def test_round_on_two_ranks_selects_what_one_rank_selects(tmp_path):
    counts = [3 + label % 5 for label in range(16)]
    write_shards(tmp_path, counts, num_shards=4)
    single = embed_and_select(0, 1, tmp_path)
    ranks = run_ranks(embed_and_select, 2, tmp_path)
    assert len(single["keys"]) % 4 != 0 and len(single["keys"]) > 8
    assert len({key.split("_")[0] for key in single["keys"]}) == 7
    for result in ranks:
        assert result["keys"] == single["keys"]
        assert torch.equal(result["embeddings"], single["embeddings"])
        assert torch.equal(result["triplets"], single["triplets"])


# ---------------------------------------------------------------- training and resume


def make_config(shards, ckpt_dir, steps, every=4, negatives="semihard", lr=0.05):
    from facetrain.pipeline.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "data": {"shards": str(shards), "batch": {"p": 3, "k": 2}, "workers": 0},
            "model": {"backbone": "tiny", "embedding_size": 8},
            "loss": [
                {
                    "type": "triplet",
                    "margin": 0.5,
                    "selection": "offline",
                    "offline": {
                        "every": every,
                        "identities": 8,
                        "images_per_identity": 4,
                        "negatives": negatives,
                        "triplets_per_batch": 4,
                    },
                }
            ],
            "train": {"steps": steps, "lr": lr, "seed": 1, "warmup_steps": 0},
            "checkpoint": {"dir": str(ckpt_dir), "every": 3, "keep": 5},
            # An unreachable server: the run warns once and keeps its records.jsonl.
            "mlflow": {"tracking_uri": "http://127.0.0.1:9", "log_model": False},
        }
    )


class Interrupted(Exception):
    pass


def validation_loss(backbone, margin=0.5) -> float:
    """Mean triplet loss over every (a, p, n) of 8 identities x 3 unseen images, float64."""
    pixels = np.stack([face_pixels(label, 100 + i) for label in range(8) for i in range(3)])
    labels = torch.arange(8).repeat_interleave(3)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        embeddings = backbone(
            torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        ).double()
    backbone.train(was_training)
    embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    distances = torch.cdist(embeddings, embeddings).pow(2)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    terms = (distances[:, :, None] - distances[:, None, :] + margin).clamp_min(0)
    valid = positive[:, :, None] & ~same[:, None, :]
    return float(terms[valid].mean())


def train(cfg, record, stop_after=None):
    from facetrain.pipeline.train.hooks import Hook
    from facetrain.pipeline.train.loop import run_rank

    class Recorder(Hook):
        def on_start(self, trainer):
            record["start_validation"] = validation_loss(trainer.backbone)

        def after_step(self, trainer, out):
            record.setdefault("losses", {})[out.step] = out.loss
            record.setdefault("stats", {})[out.step] = dict(out.stats)
            if stop_after is not None and trainer.step == stop_after:
                raise Interrupted

        def on_end(self, trainer, summary):
            record["end_validation"] = validation_loss(trainer.backbone)

    with contextlib.suppress(Interrupted):
        run_rank(cfg, extra_hooks=[Recorder()], progress=False)
    return record


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("offline-shards"), [6] * 16, num_shards=4)


def test_offline_training_lowers_triplet_loss_on_validation_sample(synthetic_shards, tmp_path):
    cfg = make_config(synthetic_shards, tmp_path / "ckpt", steps=24, every=8, lr=0.1)
    record = train(cfg, {})
    assert record["end_validation"] < 0.5 * record["start_validation"], record
    rounds = {step: stats for step, stats in record["stats"].items() if "offline/round" in stats}
    assert sorted(rounds) == [0, 8, 16]
    for stats in rounds.values():
        assert stats["offline/sample_images"] == 32
        assert 0 < stats["offline/triplets_selected"] <= stats["offline/valid_pairs"] == 8 * 4 * 3
        assert stats["offline/positive_loss_fraction"] == 1.0  # semi-hard: inside the margin
        assert stats["offline/embed_seconds"] > 0
    ends = [step for step, stats in record["stats"].items() if "offline/train_seconds" in stats]
    assert ends == [7, 15, 23]
    for end in ends:
        steps = [record["stats"][step] for step in range(end - 7, end + 1)]
        active = sum(stats["triplet/num_active"] for stats in steps)
        trained = sum(stats["triplet/num_triplets"] for stats in steps)
        assert trained == 8 * 4
        assert record["stats"][end]["offline/train_active_fraction"] == active / trained
    # The round figures reach the tracking records (the server is unreachable here).
    lines = (tmp_path / "ckpt" / "tracking" / "records.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines if '"offline/triplets_selected"' in line]
    assert [entry["step"] for entry in logged] == [0, 8, 16]


def batch_digests(monkeypatch, digests):
    from facetrain.pipeline.train.offline_triplets import OfflineTriplets

    original = OfflineTriplets.batch

    def recording(self, step):
        batch = original(self, step)
        digest = hashlib.sha256(
            batch["images"].numpy().tobytes() + batch["labels"].numpy().tobytes()
        )
        digests.setdefault(step, []).append(digest.hexdigest())
        return batch

    monkeypatch.setattr(OfflineTriplets, "batch", recording)


def test_resume_mid_round_replays_the_same_batches(synthetic_shards, tmp_path, monkeypatch):
    digests: dict[int, list[str]] = {}
    batch_digests(monkeypatch, digests)
    whole = train(make_config(synthetic_shards, tmp_path / "whole", steps=8, every=4), {})
    # Interrupted after step 7 began a checkpoint at 6: round 1 (steps 4-7) resumes mid-way.
    interrupted_dir = tmp_path / "interrupted"
    first = train(
        make_config(synthetic_shards, interrupted_dir, steps=8, every=4), {}, stop_after=7
    )
    assert max(first["losses"]) == 6
    resumed = train(make_config(synthetic_shards, interrupted_dir, steps=8, every=4), {})
    assert sorted(resumed["losses"]) == [6, 7]
    for step in (6, 7):
        assert resumed["losses"][step] == whole["losses"][step]
        # whole run, interrupted run (step 6 only), resumed run: one batch each
        assert len(set(digests[step])) == 1, step
    assert "offline/round" not in resumed["stats"][6]  # round 1 was selected before the restart


def train_offline_ranks(rank, world_size, shards, ckpt_dir):
    from facetrain.pipeline.train.hooks import Hook
    from facetrain.pipeline.train.loop import run_rank
    from facetrain.pipeline.train.offline_triplets import STATE_KEY

    record = {}

    class Recorder(Hook):
        def after_step(self, trainer, out):
            record[out.step] = {
                "stats": dict(out.stats),
                "round_triplets": trainer.extra_state[STATE_KEY]["triplets"].clone(),
            }

        def on_end(self, trainer, summary):
            record["backbone"] = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}

    cfg = make_config(shards, ckpt_dir, steps=4, every=2)
    run_rank(cfg, extra_hooks=[Recorder()], progress=False)
    return record


def test_offline_training_on_two_ranks(synthetic_shards, tmp_path):
    single = train_offline_ranks(0, 1, synthetic_shards, tmp_path / "one")
    ranks = run_ranks(train_offline_ranks, 2, synthetic_shards, tmp_path / "two")
    # Round 0 embeds with the initial weights: the same triplets on 1 rank and on each of 2.
    for record in ranks:
        assert torch.equal(record[0]["round_triplets"], single[0]["round_triplets"])
        assert record[0]["stats"]["triplet/num_triplets"] == 2 * 4  # both ranks' batches
    assert single[0]["stats"]["triplet/num_triplets"] == 4
    # Round 1 (weights after 2 steps) agrees across the ranks; the model stays replicated.
    assert torch.equal(ranks[0][3]["round_triplets"], ranks[1][3]["round_triplets"])
    for name, value in ranks[0]["backbone"].items():
        assert torch.equal(value, ranks[1]["backbone"][name]), name
    assert "offline/round" in ranks[0][2]["stats"] and "offline/round" in ranks[1][2]["stats"]
