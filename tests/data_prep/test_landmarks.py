"""Landmark lists: whitespace (LFW/SphereFace), CSV and Parquet, points or a face box."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from facetrain.data_prep.align import TEMPLATES
from facetrain.data_prep.landmarks import POINT_COLUMNS, read_landmark_table, read_landmarks


def test_whitespace_lines_with_bad_rows_reported(tmp_path):
    path = tmp_path / "landmarks.txt"
    path.write_text(
        "Ann/Ann_0001.jpg 1 2 3 4 5 6 7 8 9 10\n"
        "\n"
        "Bob/Bob_0001.jpg 1 2 3\n"
        "Bob/Bob_0002.jpg 1 2 3 4 5 6 7 8 9 nan\n"
        "Bob/Bob_0003.jpg 10 20 30 40 50 60 70 80 90 100\n"
    )
    found = read_landmark_table(path)
    assert found.table.column("identity").to_pylist() == ["Ann", "Bob"]
    assert [line for line, _ in found.bad_rows] == [f"{path}:3", f"{path}:4"]
    points = read_landmarks(path)
    np.testing.assert_array_equal(points["Bob/Bob_0003.jpg"], np.arange(10, 101, 10).reshape(5, 2))


def test_csv_and_parquet_manifests_with_points_or_boxes(tmp_path):
    rows = {
        "path": ["a/1.jpg", "b/2.jpg"],
        "identity": ["alice", None],
        **{column: [float(i), float(i + 100)] for i, column in enumerate(POINT_COLUMNS)},
    }
    pq.write_table(pa.table(rows), tmp_path / "m.parquet")
    table = read_landmark_table(tmp_path / "m.parquet").table
    assert table.column("identity").to_pylist() == ["alice", "b"]  # missing identity: the folder
    assert table.column("landmarks").to_pylist()[1] == [float(i + 100) for i in range(10)]

    (tmp_path / "boxes.csv").write_text(
        "path,left,top,width,height\nc/3.jpg,10,20,224,224\nc/4.jpg,0,0,-1,5\n"
    )
    found = read_landmark_table(tmp_path / "boxes.csv")
    box_points = np.reshape(found.table.column("landmarks").to_pylist()[0], (5, 2))
    np.testing.assert_allclose(box_points, TEMPLATES["arcface"].points * 2 + [10, 20])
    assert len(found.bad_rows) == 1 and "box of size" in found.bad_rows[0][1]
