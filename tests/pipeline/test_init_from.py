"""`train.init_from`: a new run from another run's weights on data that shares some
identities: the backbone is taken, classifier and centre rows follow the identity names."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.dist import run_ranks
from tests.pipeline.shards import write_shards


def write_named_shards(root, names, counts, seed):
    """write_shards plus the identities.parquet prep writes: class i is identity names[i]."""
    write_shards(root, counts, num_shards=2, seed=seed)
    table = pa.table(
        {
            "split": ["train"] * len(names),
            "class": list(range(len(names))),
            "identity": names,
            "count": counts,
        }
    )
    pq.write_table(table, root / "identities.parquet")
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["files"] = {"identities": "identities.parquet"}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


def make_config(shards, ckpt_dir, tracking, init_from=None):
    from facetrain.pipeline.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "data": {"shards": str(shards), "batch": {"p": 3, "k": 2}, "workers": 0},
            "model": {"backbone": "tiny", "embedding_size": 8},
            "loss": [{"type": "softmax"}, {"type": "center"}],
            "train": {"steps": 3, "lr": 0.1, "seed": 5, "init_from": init_from},
            "checkpoint": {"dir": str(ckpt_dir), "every": 100},
            "mlflow": {"tracking_uri": tracking, "log_model": False, "experiment": "init"},
        }
    )


def class_rows(trainer):
    return {
        f"{term}.{name}": rows.clone()
        for term, loss in trainer.objective.sharded_terms().items()
        for name, rows in loss.shard_state()["tensors"].items()
    }


def old_then_new(rank, world_size, old_shards, new_shards, root):
    from facetrain.pipeline.train.collectives import world_group
    from facetrain.pipeline.train.hooks import Hook
    from facetrain.pipeline.train.loop import run_rank
    from facetrain.pipeline.train.trainer import Trainer

    tracking = f"sqlite:///{root}/mlflow.db"
    old = run_rank(make_config(old_shards, root / "old", tracking), progress=False)

    class AtStart(Hook):
        def on_start(self, trainer):
            self.rows = class_rows(trainer)
            self.backbone = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
            self.tags_parent = trainer.extra_state.get("parent_run")

    at_start = AtStart()
    new_cfg = make_config(new_shards, root / "new", tracking, init_from=str(root / "old"))
    new = run_rank(new_cfg, extra_hooks=[at_start], progress=False)
    fresh = class_rows(Trainer(new_cfg, 6, world_group()))
    return {
        "old": old,
        "new": new,
        "rows": at_start.rows,
        "backbone": at_start.backbone,
        "fresh": fresh,
    }


@pytest.mark.slow
def test_init_from_maps_rows_by_identity_name_and_starts_a_child_run(tmp_path):
    import mlflow
    from facetrain.losses import reshard
    from facetrain.pipeline.train import checkpoint

    old_names = ["ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal"]
    new_names = ["gus", "zed", "ann", "yan", "eve", "bob"]  # 4 shared, in other places
    old_shards = write_named_shards(tmp_path / "old-data", old_names, [3, 4, 2, 3, 5, 2, 3, 4], 0)
    new_shards = write_named_shards(tmp_path / "new-data", new_names, [4, 3, 2, 3, 4, 2], 1)
    out = run_ranks(old_then_new, 1, old_shards, new_shards, tmp_path)[0]

    saved = checkpoint.find_checkpoint(tmp_path / "old")
    old_rows = reshard(checkpoint.load_shards(saved), 0, len(old_names))
    old_backbone, _ = checkpoint.load_replicated(saved)
    for key, rows in out["rows"].items():
        for new_class, name in enumerate(new_names):
            if name in old_names:
                expected = old_rows[key][old_names.index(name)]
            else:  # fresh: what a new run's rows are for that class
                expected = out["fresh"][key][new_class]
            assert torch.equal(rows[new_class], expected), (key, name)
    assert {"softmax.weight", "softmax.bias", "center.centers"} <= set(out["rows"]), out["rows"]
    for name, tensor in old_backbone.items():
        assert torch.equal(out["backbone"][name].float(), tensor.float()), name

    assert out["new"]["steps"] == 3  # a new run: from step 0, not the old run's step
    assert out["new"]["mlflow_run_id"] != out["old"]["mlflow_run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(
        out["new"]["mlflow_run_id"]
    )
    assert run.data.tags["facetrain.parent_run"] == out["old"]["mlflow_run_id"]
