"""`data.landmark_jitter`: training faces re-aligned as if their five points were found with
a detector's scatter.

References: for small noise the least-squares similarity moves the template points by minus
the projection of the noise onto the 4-dimensional space of similarity motions (a linear
algebra fact, computed here with numpy's lstsq); the warp is checked by where a single bright
pixel lands; the loader by determinism and by leaving flips and labels alone.
"""

import numpy as np
import pytest
import torch
from facetrain.data_prep.align import ARCFACE_112, transform_points
from facetrain.pipeline.config import DataConfig
from facetrain.pipeline.data.loader import FaceBatches
from facetrain.pipeline.data.shards import read_dataset_index
from facetrain.pipeline.data.transforms import landmark_jitter_matrix, warp_face

from tests.pipeline.shards import write_shards


def similarity_motions(points: np.ndarray) -> np.ndarray:
    """(10, 4): how the 10 coordinates move per unit of scale, rotation, x and y shift."""
    centred = points - points.mean(axis=0)
    scale = centred.ravel()
    rotation = np.stack([-centred[:, 1], centred[:, 0]], axis=1).ravel()
    shift_x = np.tile([1.0, 0.0], len(points))
    shift_y = np.tile([0.0, 1.0], len(points))
    return np.stack([scale, rotation, shift_x, shift_y], axis=1)


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_jitter_moves_the_points_by_the_projected_noise(sigma):
    basis = similarity_motions(ARCFACE_112)
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    squares = []
    for _ in range(400):
        matrix = landmark_jitter_matrix(rng, sigma, ARCFACE_112)
        noise = twin.normal(0.0, sigma, ARCFACE_112.shape).ravel()  # the same draw
        coefficients, *_ = np.linalg.lstsq(basis, noise, rcond=None)
        expected = -(basis @ coefficients)
        moved = (transform_points(matrix, ARCFACE_112) - ARCFACE_112).ravel()
        # Exact to first order; the remainder is quadratic in the noise (measured: at most
        # 0.24 sigma^2 pixels over 400 draws at every sigma from 0.01 to 1).
        assert np.abs(moved - expected).max() < 0.3 * sigma**2
        squares.append(moved @ moved)
    # A rank-4 projection keeps 4 of 10 coordinates' variance: 0.4 sigma^2 a coordinate.
    assert np.mean(squares) / 10 == pytest.approx(0.4 * sigma**2, rel=0.1)


def test_zero_jitter_is_the_identity():
    matrix = landmark_jitter_matrix(np.random.default_rng(0), 0.0, ARCFACE_112)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_warp_moves_content_where_the_matrix_sends_it():
    image = np.zeros((112, 112, 3), np.uint8)
    image[40, 30] = 255  # row 40, column 30: the point (x=30, y=40)
    matrix = np.array([[0.98, -0.05, 4.0], [0.05, 0.98, -2.5]])
    moved = warp_face(image, matrix)[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:112, 0:112]
    centroid = np.array([(xs * moved).sum(), (ys * moved).sum()]) / moved.sum()
    np.testing.assert_allclose(centroid, transform_points(matrix, [[30.0, 40.0]])[0], atol=0.05)
    assert moved.shape == (112, 112)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), [4] * 8, num_shards=2, size=112)


def _batches(shard_root, jitter: float, seed: int = 7, steps: int = 3):
    index = read_dataset_index(str(shard_root))
    data = DataConfig(
        shards=str(shard_root), batch={"p": 2, "k": 2}, workers=1, landmark_jitter=jitter
    )
    stream = FaceBatches(index, data, "pk", rank=0, world_size=1, seed=seed)
    picks = stream.picks(first_step=0, worker=0)
    return [stream.collate(*next(picks)) for _ in range(steps)]


def test_loader_jitters_deterministically_and_changes_nothing_else(shard_root):
    plain = _batches(shard_root, 0.0)
    jittered = _batches(shard_root, 1.5)
    again = _batches(shard_root, 1.5)
    for a, b, c in zip(plain, jittered, again, strict=True):
        assert torch.equal(b["images"], c["images"])  # a resumed run sees the same faces
        assert torch.equal(a["labels"], b["labels"]) and a["step"] == b["step"]
        difference = (a["images"].float() - b["images"].float()).abs().mean(dim=(1, 2, 3))
        assert (difference > 1.0).all()  # every face moved
    # Each face is a small move of the plain one (flips unchanged): closer to its own plain
    # face than to that face mirrored.
    a, b = plain[0]["images"].float(), jittered[0]["images"].float()
    assert ((a - b).abs().mean() < (a.flip(2) - b).abs().mean()).item()


def test_jitter_is_bounded_in_config():
    with pytest.raises(ValueError, match="landmark_jitter"):
        DataConfig(shards="x", landmark_jitter=-1)
