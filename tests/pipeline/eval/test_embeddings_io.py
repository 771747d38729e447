"""Embedding files: Parquet and .npz round trips and the errors on bad files."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable, read_embeddings, write_embeddings


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    keys = [f"Person_{i}/Person_{i}_0001.jpg" for i in range(7)]
    table = EmbeddingTable(keys, rng.normal(size=(7, 5)).astype(np.float32))
    loaded = read_embeddings(write_embeddings(tmp_path / f"e{suffix}", table))
    assert loaded.keys == keys
    np.testing.assert_array_equal(loaded.embeddings, table.embeddings)
    np.testing.assert_array_equal(loaded.rows([keys[3], keys[0]]), table.embeddings[[3, 0]])


def test_reads_parquet_written_by_other_tools_as_plain_lists(tmp_path):
    path = tmp_path / "other.parquet"
    vectors = [[float(row), float(row) + 0.5] for row in range(5)]
    keys = [f"p{row}/1.jpg" for row in range(5)]
    # float64 lists in several row groups (several chunks once read back)
    pq.write_table(pa.table({"key": keys, "embedding": vectors}), path, row_group_size=2)
    loaded = read_embeddings(path)
    assert loaded.keys == keys
    np.testing.assert_array_equal(loaded.embeddings, vectors)


def test_bad_files_are_named(tmp_path):
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]}), ragged)
    with pytest.raises(
        ValueError, match="ragged.parquet: every 'embedding' must be a list of the same length"
    ):
        read_embeddings(ragged)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"name": ["a"], "vector": [[1.0]]}), wrong)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['embedding', 'key'\]"):
        read_embeddings(wrong)
    with pytest.raises(ValueError, match="key 'a' appears more than once"):
        EmbeddingTable(["a", "a"], np.zeros((2, 3), np.float32))
