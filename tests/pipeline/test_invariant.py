"""The data-parallel invariant: N ranks == one process on the same global batches.

Two gloo ranks train the tiny CNN with softmax + centre + triplet (classifier rows, centres
sharded across ranks; triplets mined over the gathered batch) for a few steps, under ZeRO 0
and ZeRO 2. The reference is written plainly here: one process, the same losses without a
process group, torch SGD, and BatchNorm run per rank-sized chunk (each rank normalises its
own batch; running statistics are the mean of the ranks' updates, as the trainer syncs them).
"""

import pytest
import torch
import torch.distributed as dist

from tests.dist import run_ranks

NUM_CLASSES, P, K, STEPS, WORLD = 11, 3, 2, 3, 2
LOSS = [
    {"type": "softmax"},
    {"type": "center", "weight": 0.01, "alpha": 0.5},
    {"type": "triplet", "weight": 0.5, "mining": "hard"},
]


def make_config(zero_stage: int):
    from facetrain.pipeline.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "data": {"shards": "unused", "batch": {"p": P, "k": K}},
            "model": {"backbone": "tiny", "embedding_size": 8},
            "loss": LOSS,
            "train": {
                "steps": STEPS,
                "lr": 0.1,
                "schedule": "constant",
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "grad_clip": 1.0,
                "zero_stage": zero_stage,
                "seed": 3,
            },
        }
    )


def global_batches():
    """STEPS global batches of WORLD*P identities x K images; rank r gets rows r*P*K..."""
    generator = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(STEPS):
        labels = torch.randperm(NUM_CLASSES, generator=generator)[: WORLD * P].repeat_interleave(K)
        images = torch.rand(WORLD * P * K, 3, 112, 112, generator=generator) * 2 - 1
        batches.append((images, labels))
    return batches


def train_ranks(rank, world_size):
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.trainer import Trainer

    results = {}
    for stage in (0, 2):
        trainer = Trainer(make_config(stage), NUM_CLASSES, world_group())
        losses = []
        for images, labels in global_batches():
            rows = slice(rank * P * K, (rank + 1) * P * K)
            losses.append(trainer.train_step(images[rows], labels[rows]).loss)
        shards = {}
        for name, loss in trainer.objective.sharded_terms().items():
            for tensor_name, rows in loss.shard_state()["tensors"].items():
                parts = [torch.empty(0)] * world_size
                dist.all_gather_object(parts, rows)
                shards[f"{name}.{tensor_name}"] = torch.cat(parts)
        results[stage] = {
            "losses": losses,
            "backbone": {k: v.detach().clone() for k, v in trainer.backbone.state_dict().items()},
            "shards": shards,
        }
    return results


def ghost_batchnorm_forward(net, chunks):
    """Forward each rank's chunk separately; running stats = mean of the per-chunk updates.

    Buffers are swapped for fresh tensors (never written in place) so autograd's saved
    tensors of earlier chunks stay valid."""
    owners = [
        (module, name)
        for module in net.modules()
        for name, _ in module.named_buffers(recurse=False)
    ]
    before = [getattr(module, name).clone() for module, name in owners]
    outputs, after = [], []
    for chunk in chunks:
        for (module, name), value in zip(owners, before, strict=True):
            setattr(module, name, value.clone())
        outputs.append(net(chunk))
        after.append([getattr(module, name) for module, name in owners])
    for index, (module, name) in enumerate(owners):
        stacked = torch.stack([state[index] for state in after])
        setattr(
            module,
            name,
            stacked.float().mean(0).to(stacked.dtype)
            if stacked.is_floating_point()
            else stacked[0],
        )
    return torch.cat(outputs)


def single_process_reference():
    from facetrain.losses import CenterLoss, SoftmaxLoss, TripletLoss
    from facetrain.pipeline.models import build_backbone

    cfg = make_config(0)
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone("tiny", 8)
    softmax = SoftmaxLoss(8, NUM_CLASSES, seed=cfg.train.seed)
    center = CenterLoss(8, NUM_CLASSES, alpha=0.5)
    triplet = TripletLoss(mining="hard")
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    backbone_opt = torch.optim.SGD(backbone.parameters(), **sgd)
    head_opt = torch.optim.SGD(softmax.parameters(), **sgd)
    losses = []
    for images, labels in global_batches():
        embeddings = ghost_batchnorm_forward(backbone, images.chunk(WORLD))
        total = (
            softmax(embeddings, labels)
            + 0.01 * center(embeddings, labels)
            + 0.5 * triplet(embeddings, labels)
        )
        backbone_opt.zero_grad()
        head_opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        torch.nn.utils.clip_grad_norm_(softmax.parameters(), 1.0)
        backbone_opt.step()
        head_opt.step()
        losses.append(float(total))
    shards = {
        "softmax.weight": softmax.weight.detach(),
        "softmax.bias": softmax.bias.detach(),
        "center.centers": center.centers.detach(),
    }
    return losses, backbone.state_dict(), shards


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_same_global_batches():
    ranks = run_ranks(train_ranks, WORLD)
    ref_losses, ref_backbone, ref_shards = single_process_reference()
    for stage in (0, 2):
        first, second = ranks[0][stage], ranks[1][stage]
        # Every rank holds the same backbone, bit for bit, and reports the same global loss.
        for name, value in first["backbone"].items():
            assert torch.equal(value, second["backbone"][name]), (
                f"ZeRO {stage}: {name} differs across ranks"
            )
        assert first["losses"] == second["losses"]
        # ...and backbone + gathered shards equal the single process on the global batches.
        torch.testing.assert_close(first["losses"], ref_losses, rtol=1e-5, atol=1e-6)
        for name, value in ref_backbone.items():
            torch.testing.assert_close(
                first["backbone"][name],
                value,
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, n=name, s=stage: f"ZeRO {s}: {n}: {m}",
            )
        assert set(first["shards"]) == set(ref_shards)
        for name, value in ref_shards.items():
            torch.testing.assert_close(first["shards"][name], value, rtol=1e-4, atol=1e-5)
