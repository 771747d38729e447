"""insightface .bin files: a round trip on a file written here, and refusal of foreign pickles."""

import pickle

import numpy as np
import pytest
from facetrain.pipeline.eval.bin_format import encode_image, read_bin, write_bin


def _faces(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(count)]


def test_round_trip(tmp_path):
    faces = _faces(6)
    images = [encode_image(face) for face in faces]  # PNG: lossless, so pixels compare exactly
    path = write_bin(tmp_path / "lfw.bin", images, [True, False, True])
    loaded = read_bin(path)
    assert loaded.images == images
    assert loaded.is_same.tolist() == [True, False, True]
    pairs = loaded.pairs(n_folds=3)
    assert pairs.keys_a == ("0", "2", "4") and pairs.keys_b == ("1", "3", "5")

    import io

    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(loaded.images[3]))), faces[3])


def test_reads_the_python2_style_file_insightface_ships(tmp_path):
    """insightface's files are (list of bytes, list of bool) pickled by python 2; numpy
    buffers appear in re-packed files. Both load."""
    images = [np.frombuffer(encode_image(face), dtype=np.uint8) for face in _faces(2)]
    path = tmp_path / "agedb_30.bin"
    with path.open("wb") as handle:
        pickle.dump((images, [False]), handle, protocol=2)
    loaded = read_bin(path)
    assert loaded.images[0] == images[0].tobytes()


class Evil:
    def __reduce__(self):
        return (print, ("should never run",))


def test_refuses_pickles_that_would_run_code(tmp_path):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Evil(), b""], [True])))
    with pytest.raises(ValueError, match="not an insightface .bin pickle"):
        read_bin(path)


def test_count_mismatch_is_named(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True, False])))
    with pytest.raises(ValueError, match="2 pairs need 4 images, found 3"):
        read_bin(path)
