import torch
import torch.distributed as dist

from tests.dist import run_ranks


def _sum_of_ranks(rank: int, world_size: int, offset: float) -> dict:
    value = torch.tensor([float(rank) + offset])
    dist.all_reduce(value)
    return {"rank": rank, "world": dist.get_world_size(), "sum": value.item()}


def test_run_ranks_returns_each_rank_result_after_a_real_collective():
    results = run_ranks(_sum_of_ranks, 2, 10.0)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 for r in results)
    # 0+10 + 1+10: only a real all-reduce over both processes gives 21.
    assert all(r["sum"] == 21.0 for r in results)
