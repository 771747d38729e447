"""LFW pairs files: both line kinds, both header kinds, and errors that name the line."""

import numpy as np
import pytest
from facetrain.pipeline.eval.pairs import contiguous_folds, read_pairs, stratified_folds

VIEW2 = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdul_Rahman\t1\tPortia_de_Rossi\t1
Ann_Veneman\t10\t11
Anna_Kournikova\t2\t7
Ben_Wallace\t1\tDarcy_Regier\t2
Bill_Gates\t3\tTim_Allen\t1
"""


def test_view2_file_with_both_line_kinds(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(VIEW2)
    pairs = read_pairs(path)
    assert len(pairs) == 8
    assert pairs.keys_a[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs.keys_b[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pairs.keys_a[2] == "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg"
    assert pairs.keys_b[2] == "Dean_Barker/Dean_Barker_0001.jpg"
    assert pairs.keys_b[4] == "Ann_Veneman/Ann_Veneman_0011.jpg"
    assert pairs.is_same.tolist() == [True, True, False, False, True, True, False, False]
    assert pairs.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # the header's folds, in file order
    assert pairs.unique_keys()[:2] == [
        "Abel_Pacheco/Abel_Pacheco_0001.jpg",
        "Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg",
    ]


def test_view1_single_count_header_means_same_block_then_different_block(tmp_path):
    same = [f"Person_{i}\t1\t2" for i in range(20)]
    different = [f"Person_{i}\t1\tOther_{i}\t1" for i in range(20)]
    path = tmp_path / "pairsDevTest.txt"
    path.write_text("20\n" + "\n".join(same + different) + "\n")
    pairs = read_pairs(path)
    assert pairs.is_same.tolist() == [True] * 20 + [False] * 20
    # Stratified folds: each fold holds both classes (contiguous tenths would hold one each).
    for fold in range(10):
        in_fold = pairs.is_same[pairs.folds == fold]
        assert in_fold.sum() == 2 and (~in_fold).sum() == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("ten 300\n", "line 1: expected a header"),
        ("1 1\nA\t1\t2\n", "promises 2 pair lines, found 1"),
        ("1 1\nA\t1\tB\t2\nC\t1\t2\n", "line 2: header '1 1' puts a same-person"),
        ("1 1\nA\t1\t2\nB\tx\tC\t2\n", "line 3: expected 'name i j' or 'name1 i name2 j'"),
        ("1 1\nA\t1\t2\nB\t1\t2\n", "line 3: header '1 1' puts a different-person"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: not found"):
        read_pairs(tmp_path / "nope.txt")


def test_fold_helpers():
    is_same = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    folds = stratified_folds(is_same, 10)
    assert np.bincount(folds[is_same]).tolist() == [3] * 10
    assert np.bincount(folds[~is_same]).tolist() == [3] * 10
    # Contiguous folds would be one-class here, so they fall back to stratified.
    np.testing.assert_array_equal(contiguous_folds(is_same, 10), folds)
    interleaved = np.tile([True, False], 30)
    np.testing.assert_array_equal(contiguous_folds(interleaved, 10), np.arange(60) // 6)


def test_real_lfw_pairs_files(lfw_root):
    view2 = read_pairs(lfw_root / "pairs.txt")
    assert len(view2) == 6000 and view2.is_same.sum() == 3000
    assert np.bincount(view2.folds).tolist() == [600] * 10
    dev_test = read_pairs(lfw_root / "pairsDevTest.txt")
    assert (
        len(dev_test) == 1000 and dev_test.is_same[:500].all() and not dev_test.is_same[500:].any()
    )
