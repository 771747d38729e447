"""Every loss across real gloo ranks equals one process that sees the concatenated batch.

One `run_ranks` call per world size runs all cases (process start-up dominates the cost);
the tests then compare each case with its single-process twin computed here, with
`group=None`, on the concatenated batch: loss on every rank, local embedding gradients ÷ N,
parameter-shard gradients, centres and the λ schedule.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.distributed as dist
from facetrain.losses import (
    ArcFaceLoss,
    ASoftmaxLoss,
    CenterLoss,
    ClassShardedMixin,
    CombinedMarginLoss,
    CosFaceLoss,
    SoftmaxLoss,
    TripletLoss,
    merge_shards,
    shard_range,
)

from tests.dist import run_ranks
from tests.losses import references

LOSSES = {
    "softmax": SoftmaxLoss,
    "asoftmax": ASoftmaxLoss,
    "center": CenterLoss,
    "triplet": TripletLoss,
    "arcface": ArcFaceLoss,
    "cosface": CosFaceLoss,
    "combined": CombinedMarginLoss,
}
CLASSIFIERS = ("softmax", "asoftmax", "arcface", "cosface", "combined")
DIM = 6
# Unequal local batches; C not divisible by N (7 = 2·3 + 1, 11 = 3·3 + 2).
SIZES = {2: [5, 3], 3: [4, 2, 5]}
NUM_CLASSES = {2: 7, 3: 11}

CASES = {
    "softmax64": dict(loss="softmax", dtype=torch.float64, kwargs=dict(seed=3)),
    "softmax32": dict(loss="softmax", dtype=torch.float32, kwargs=dict(seed=4)),
    "softmax_nobias": dict(loss="softmax", dtype=torch.float64, kwargs=dict(bias=False, seed=5)),
    "asoftmax64": dict(
        loss="asoftmax",
        dtype=torch.float64,
        steps=3,
        kwargs=dict(margin=4, lambda_base=20.0, lambda_gamma=0.5, lambda_min=1.0, seed=6),
    ),
    "asoftmax32_m2": dict(
        loss="asoftmax", dtype=torch.float32, kwargs=dict(margin=2, lambda_base=5.0, seed=7)
    ),
    "center64": dict(loss="center", dtype=torch.float64, steps=3, kwargs=dict(alpha=0.4)),
    "center32": dict(loss="center", dtype=torch.float32, steps=2, kwargs=dict(alpha=0.5)),
    "triplet_semihard": dict(
        loss="triplet", dtype=torch.float64, classes=3, kwargs=dict(margin=0.3, mining="semihard")
    ),
    "triplet_hard": dict(
        loss="triplet", dtype=torch.float64, classes=3, kwargs=dict(margin=0.3, mining="hard")
    ),
    "triplet_all": dict(
        loss="triplet", dtype=torch.float64, classes=3, kwargs=dict(margin=0.3, mining="all")
    ),
    "triplet_semihard32": dict(
        loss="triplet",
        dtype=torch.float32,
        classes=4,
        kwargs=dict(margin=0.2, mining="semihard", normalize=False),
    ),
    # Rank 0 holds one sample of each class; every positive of its anchors lives on other ranks.
    "triplet_positives_elsewhere": dict(
        loss="triplet",
        dtype=torch.float64,
        labels="spread",
        kwargs=dict(margin=0.5, mining="semihard"),
    ),
    # 2 classes: with N=3 the last rank owns none and must still take part.
    "softmax_tiny": dict(loss="softmax", dtype=torch.float64, classes=2, kwargs=dict(seed=10)),
    "center_tiny": dict(
        loss="center", dtype=torch.float64, classes=2, steps=2, kwargs=dict(alpha=0.5)
    ),
    "softmax_sampled": dict(
        loss="softmax", dtype=torch.float64, classes=40, kwargs=dict(seed=8, sample_rate=0.25)
    ),
    "asoftmax_sampled": dict(
        loss="asoftmax",
        dtype=torch.float64,
        classes=40,
        kwargs=dict(margin=4, seed=9, sample_rate=0.3),
    ),
    # Margins large enough that some targets take the θ + m > π fallback.
    "arcface64": dict(
        loss="arcface", dtype=torch.float64, steps=2, kwargs=dict(margin=1.2, scale=8.0, seed=11)
    ),
    "arcface32": dict(loss="arcface", dtype=torch.float32, kwargs=dict(scale=16.0, seed=12)),
    "cosface64": dict(
        loss="cosface", dtype=torch.float64, steps=2, kwargs=dict(margin=0.35, scale=8.0, seed=13)
    ),
    "combined64": dict(
        loss="combined",
        dtype=torch.float64,
        kwargs=dict(m1=1.1, m2=0.3, m3=0.1, scale=6.0, seed=14),
    ),
    "arcface_tiny": dict(
        loss="arcface", dtype=torch.float64, classes=2, kwargs=dict(scale=4.0, seed=15)
    ),
    "arcface_sampled": dict(
        loss="arcface",
        dtype=torch.float64,
        classes=40,
        kwargs=dict(margin=0.5, scale=8.0, seed=16, sample_rate=0.3),
    ),
    "cosface_sampled": dict(
        loss="cosface",
        dtype=torch.float64,
        classes=40,
        kwargs=dict(margin=0.35, scale=8.0, seed=17, sample_rate=0.25),
    ),
}


def _num_classes(case, world):
    return case.get("classes", NUM_CLASSES[world])


def _batch(name, case, world, step):
    """The global batch of `step`, identical on every rank and in the test process."""
    # crc32, not hash(): string hashes differ between the spawned processes.
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{step}".encode()))
    total = sum(SIZES[world])
    x = torch.randn(total, DIM, generator=gen, dtype=case["dtype"])
    if case.get("labels") == "spread":
        first = SIZES[world][0]
        labels = torch.cat([torch.arange(first), torch.arange(total - first) % first])
    else:
        labels = torch.randint(0, _num_classes(case, world), (total,), generator=gen)
    return x, labels


def _build(case, world, group):
    kwargs = dict(case["kwargs"], group=group)
    if case["loss"] in CLASSIFIERS:
        return LOSSES[case["loss"]](DIM, _num_classes(case, world), **kwargs).to(case["dtype"])
    if case["loss"] == "center":
        module = LOSSES["center"](DIM, _num_classes(case, world), **kwargs).to(case["dtype"])
        # Non-zero start centres, keyed by class, so the first step's loss is not trivial.
        full = torch.linspace(-1, 1, _num_classes(case, world) * DIM, dtype=case["dtype"]).view(
            -1, DIM
        )
        module.centers.copy_(
            full[module.class_start : module.class_start + module.num_local_classes]
        )
        return module
    return LOSSES["triplet"](**kwargs)


def _run_case(name, case, world, rank, group):
    module = _build(case, world, group)
    row_start = sum(SIZES[world][:rank])
    out = {"steps": []}
    if isinstance(module, ClassShardedMixin):
        out["initial"] = module.shard_state()
    for step in range(case.get("steps", 1)):
        x_all, labels_all = _batch(name, case, world, step)
        x = x_all[row_start : row_start + SIZES[world][rank]].clone().requires_grad_(True)
        labels = labels_all[row_start : row_start + SIZES[world][rank]]
        for param in module.parameters():
            param.grad = None
        loss = module(x, labels)
        loss.backward()
        out["steps"].append(
            {
                "loss": loss.detach(),
                "x_grad": x.grad,
                "param_grads": {n: p.grad for n, p in module.named_parameters()},
                "lambda": getattr(module, "current_lambda", None),
                "sampled": getattr(module, "last_sampled_classes", None),
                "stats": module.statistics(),
            }
        )
    if isinstance(module, ClassShardedMixin):
        out["final"] = module.shard_state()
    return out


def _single_rank_groups_take_no_collective(rank, world):
    """Each rank alone in a group of one: the loss must equal group=None and issue nothing."""
    groups = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    calls = []
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "barrier")}
    for name, original in originals.items():
        setattr(
            dist,
            name,
            lambda *a, _name=name, _orig=original, **k: calls.append(_name) or _orig(*a, **k),
        )
    try:
        x = torch.randn(5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
        labels = torch.tensor([0, 1, 1, 2, 0])
        values = {}
        for kind in ("softmax", "asoftmax", "center", "triplet"):
            case = dict(loss=kind, dtype=torch.float64, classes=3, kwargs={})
            values[kind] = [_build(case, world, group)(x, labels) for group in (groups[rank], None)]
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return {"calls": calls, "values": values}


def _all_cases(rank, world):
    group = dist.group.WORLD
    results = {name: _run_case(name, case, world, rank, group) for name, case in CASES.items()}
    results["single_rank_groups"] = _single_rank_groups_take_no_collective(rank, world)
    return results


@pytest.fixture(scope="module", params=[2, 3], ids=["N2", "N3"])
def ranks(request):
    world = request.param
    return world, run_ranks(_all_cases, world)


def _single(name, case, world):
    """The single-process twin: the same module with group=None on the concatenated batch."""
    module = _build(case, world, None)
    steps = []
    for step in range(case.get("steps", 1)):
        x_all, labels_all = _batch(name, case, world, step)
        x_all.requires_grad_(True)
        for param in module.parameters():
            param.grad = None
        loss = module(x_all, labels_all)
        loss.backward()
        steps.append(
            {
                "loss": loss.detach(),
                "x_grad": x_all.grad,
                "param_grads": {n: p.grad for n, p in module.named_parameters()},
                "lambda": getattr(module, "current_lambda", None),
                "stats": module.statistics(),
            }
        )
    return module, steps


def _tolerance(case):
    return (
        dict(rtol=1e-10, atol=1e-12)
        if case["dtype"] == torch.float64
        else dict(rtol=1e-5, atol=1e-6)
    )


EXACT = [name for name, case in CASES.items() if case["kwargs"].get("sample_rate", 1.0) == 1.0]


def test_group_of_one_rank_takes_no_collective(ranks):
    _, results = ranks
    for result in results:
        probe = result["single_rank_groups"]
        assert probe["calls"] == []
        for kind, (with_group, without) in probe["values"].items():
            assert torch.equal(with_group, without), kind


@pytest.mark.parametrize("name", EXACT)
def test_distributed_step_equals_single_process(ranks, name):
    world, results = ranks
    case = CASES[name]
    tol = _tolerance(case)
    module, single_steps = _single(name, case, world)
    for rank, result in enumerate(results):
        row_start, rows = sum(SIZES[world][:rank]), SIZES[world][rank]
        got = result[name]
        for step, (mine, ref) in enumerate(zip(got["steps"], single_steps, strict=True)):
            where = f"{name} rank {rank}/{world} step {step}"
            torch.testing.assert_close(mine["loss"], ref["loss"], **tol, msg=where)
            # N x convention: local embeddings get N · dL/dx.
            torch.testing.assert_close(
                mine["x_grad"] / world,
                ref["x_grad"][row_start : row_start + rows],
                **tol,
                msg=where,
            )
            for param_name, grad in mine["param_grads"].items():
                start, count = got["final"]["class_start"], got["final"]["num_local_classes"]
                torch.testing.assert_close(
                    grad, ref["param_grads"][param_name][start : start + count], **tol, msg=where
                )
            assert mine["lambda"] == ref["lambda"], where
            assert mine["stats"] == ref["stats"], where
        # Every rank returns the same value, bit for bit.
        assert all(
            torch.equal(r[name]["steps"][-1]["loss"], got["steps"][-1]["loss"]) for r in results
        )
    if "final" in results[0][name]:
        states = [r[name]["final"] for r in results]
        assert [s["class_start"] for s in states] == [
            shard_range(_num_classes(case, world), r, world)[0] for r in range(world)
        ]
        for tensor_name, full in merge_shards(states).items():
            torch.testing.assert_close(
                full, getattr(module, tensor_name).detach(), **tol, msg=f"{name} {tensor_name}"
            )


@pytest.mark.parametrize(
    "name", ["softmax64", "asoftmax64", "softmax_sampled", "arcface64", "cosface64"]
)
def test_initial_shards_form_the_single_process_matrix(ranks, name):
    world, results = ranks
    module = _build(CASES[name], world, None)
    full = merge_shards([r[name]["initial"] for r in results])
    assert torch.equal(full["weight"], module.weight.detach())


def test_asoftmax_lambda_steps_together_on_all_ranks(ranks):
    world, results = ranks
    lambdas = [[step["lambda"] for step in r["asoftmax64"]["steps"]] for r in results]
    assert all(row == lambdas[0] for row in lambdas)
    assert lambdas[0] == pytest.approx([20.0 / (1 + 0.5 * it) for it in (1, 2, 3)], rel=1e-15)
    assert all(int(r["asoftmax64"]["final"]["num_classes"]) == NUM_CLASSES[world] for r in results)


def test_positives_on_other_ranks_are_used(ranks):
    world, results = ranks
    stats = results[0]["triplet_positives_elsewhere"]["steps"][0]["stats"]
    assert stats["valid_pairs"] > 0
    # Rank 0's anchors have positives only elsewhere, so their gradient must be non-zero.
    assert results[0]["triplet_positives_elsewhere"]["steps"][0]["x_grad"].abs().sum() > 0


@pytest.mark.parametrize(
    "name", ["softmax_sampled", "asoftmax_sampled", "arcface_sampled", "cosface_sampled"]
)
def test_sampled_classes_keep_targets_and_equal_restricted_softmax(ranks, name):
    world, results = ranks
    case = CASES[name]
    num_classes = _num_classes(case, world)
    x_all, labels_all = _batch(name, case, world, 0)
    kept_per_rank = [r[name]["steps"][0]["sampled"] for r in results]
    for rank, kept in enumerate(kept_per_rank):
        start, count = shard_range(num_classes, rank, world)
        targets_here = {int(c) for c in labels_all if start <= c < start + count}
        assert targets_here <= set(kept.tolist())
        assert kept.numel() == max(
            math.ceil(case["kwargs"]["sample_rate"] * count), len(targets_here)
        )
        assert ((kept >= start) & (kept < start + count)).all()
    kept = torch.cat(kept_per_rank)
    assert kept.numel() < num_classes

    full = merge_shards([r[name]["initial"] for r in results])
    weight = full["weight"][kept].clone().requires_grad_(True)
    position = {int(c): i for i, c in enumerate(kept)}
    restricted_labels = [position[int(v)] for v in labels_all]
    x_ref = x_all.clone().requires_grad_(True)
    if case["loss"] == "softmax":
        bias = full["bias"][kept].clone().requires_grad_(True)
        expected = references.softmax_loss(x_ref, weight, bias, restricted_labels)
    elif case["loss"] == "asoftmax":
        expected = references.asoftmax_loss(x_ref, weight, restricted_labels, 4, 1000.0 / 1.12)
    else:
        margins = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.35)}[case["loss"]]
        expected = references.combined_margin_loss(
            x_ref, weight, restricted_labels, *margins, case["kwargs"]["scale"]
        )
    expected.backward()
    for rank, result in enumerate(results):
        step = result[name]["steps"][0]
        torch.testing.assert_close(step["loss"], expected.detach(), rtol=1e-10, atol=1e-12)
        row_start, rows = sum(SIZES[world][:rank]), SIZES[world][rank]
        torch.testing.assert_close(
            step["x_grad"] / world, x_ref.grad[row_start : row_start + rows], rtol=1e-9, atol=1e-11
        )
        # Only sampled rows get gradient; they match the reference rows.
        start, count = shard_range(num_classes, rank, world)
        local_kept = kept_per_rank[rank] - start
        grad = step["param_grads"]["weight"]
        unsampled = torch.ones(count, dtype=torch.bool)
        unsampled[local_kept] = False
        assert torch.equal(grad[unsampled], torch.zeros_like(grad[unsampled]))
        offset = sum(k.numel() for k in kept_per_rank[:rank])
        torch.testing.assert_close(
            grad[local_kept],
            weight.grad[offset : offset + local_kept.numel()],
            rtol=1e-9,
            atol=1e-11,
        )
