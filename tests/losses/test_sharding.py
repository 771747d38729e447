import pytest
import torch
from facetrain.losses import (
    ASoftmaxLoss,
    CenterLoss,
    SoftmaxLoss,
    TripletLoss,
    build_loss,
    merge_shards,
    reshard,
    shard_range,
    slice_rows,
)
from facetrain.losses.sharding import INIT_BLOCK_CLASSES, init_class_rows


@pytest.mark.parametrize(("num_classes", "world"), [(10, 3), (7, 7), (5, 8), (100_003, 4)])
def test_shard_range_tiles_classes_with_extras_first(num_classes, world):
    ranges = [shard_range(num_classes, r, world) for r in range(world)]
    starts = [start for start, _ in ranges]
    counts = [count for _, count in ranges]
    assert sum(counts) == num_classes
    assert starts == [sum(counts[:r]) for r in range(world)]
    extra = num_classes % world
    assert counts == [num_classes // world + (r < extra) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3, 5])
def test_initial_rows_depend_only_on_seed_and_class(world):
    num_classes = 2 * INIT_BLOCK_CLASSES + 37  # shards start mid-block
    full = init_class_rows(5, 0, num_classes, 8, 0.01)
    shards = [
        init_class_rows(5, *shard_range(num_classes, r, world), 8, 0.01) for r in range(world)
    ]
    assert torch.equal(torch.cat(shards), full)
    assert not torch.equal(init_class_rows(6, 0, num_classes, 8, 0.01), full)


def test_modules_shard_and_restore_on_another_world_size():
    # A "run" on 3 ranks, saved, resumed on 2 ranks: rows follow their classes.
    num_classes = 11
    old = [SoftmaxLoss(4, num_classes, seed=1) for _ in range(3)]
    for rank, module in enumerate(old):
        module.class_start, module.num_local_classes = shard_range(num_classes, rank, 3)
        module.weight = torch.nn.Parameter(torch.randn(module.num_local_classes, 4))
        module.bias = torch.nn.Parameter(torch.randn(module.num_local_classes))
    states = [module.shard_state() for module in old]
    full = merge_shards(states)
    assert full["weight"].shape == (num_classes, 4)
    assert torch.equal(full["weight"], torch.cat([m.weight.detach() for m in old]))

    for rank in range(2):
        start, count = shard_range(num_classes, rank, 2)
        rows = reshard(states, start, count)
        assert torch.equal(rows["weight"], slice_rows(full["weight"], start, count))
        assert torch.equal(rows["bias"], full["bias"][start : start + count])

    single = SoftmaxLoss(4, num_classes)
    single.load_shard_states(reversed(states))
    assert torch.equal(single.weight.detach(), full["weight"])


def test_reshard_reports_missing_classes():
    states = [CenterLoss(2, 6).shard_state()]
    states[0]["num_local_classes"] = 4
    states[0]["tensors"]["centers"] = states[0]["tensors"]["centers"][:4]
    with pytest.raises(ValueError, match="cover 4 of the 6 classes"):
        reshard(states, 0, 6)


def test_load_rows_names_shape_mismatch():
    loss_fn = ASoftmaxLoss(4, 5)
    with pytest.raises(ValueError, match=r"weight rows have shape \(3, 4\), expected \(5, 4\)"):
        loss_fn.load_class_rows({"weight": torch.zeros(3, 4)})


def test_build_loss_by_type():
    assert isinstance(build_loss("triplet", margin=0.3), TripletLoss)
    assert build_loss("asoftmax", embedding_size=8, num_classes=3, margin=2).margin == 2
    with pytest.raises(ValueError, match="loss type 'magface'"):
        build_loss("magface")


def test_class_tensor_names_list_what_the_module_holds():
    assert SoftmaxLoss(4, 3).class_tensor_names == ("weight", "bias")
    assert SoftmaxLoss(4, 3, bias=False).class_tensor_names == ("weight",)
    assert ASoftmaxLoss(4, 3).class_tensor_names == ("weight",)
    assert CenterLoss(4, 3).class_tensor_names == ("centers",)
