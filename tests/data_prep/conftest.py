"""One synthetic dataset (with a corrupt-file corpus) and one local Ray session per run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from facetrain.jobs.demo.synthetic_faces import jpeg_bytes
from PIL import Image

from tests.data_prep.synth import face_image, make_folder_dataset, write_landmark_lines


@dataclass
class Synthetic:
    root: Path
    landmarks_file: Path
    landmarks: dict[str, np.ndarray]  # every row written, good and bad
    good: set[str]  # relpaths that must come out as samples
    expected_rejects: dict[str, str]  # source -> reason
    max_image_pixels: int


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Synthetic:
    root = tmp_path_factory.mktemp("faces")
    counts = {f"person_{n:02d}": 3 + n % 3 for n in range(10)}
    landmarks = make_folder_dataset(root, counts, seed=0)
    good = set(landmarks)
    rejects: dict[str, str] = {}

    def bad(
        relpath: str, data: bytes | None, reason: str, points: np.ndarray | None = None
    ) -> None:
        if data is not None:
            (root / relpath).write_bytes(data)
        if points is not None:
            landmarks[relpath] = points
        rejects[relpath] = reason

    some_points = next(iter(landmarks.values()))
    good_jpeg = jpeg_bytes(face_image(some_points, (160, 180), seed=5))
    bad("person_00/empty.jpg", b"", "empty file", some_points)
    bad("person_00/notes.jpg", b"shopping list, not a face", "not an image", some_points)
    bad(
        "person_01/cut.jpg",
        good_jpeg[: len(good_jpeg) // 3],
        "truncated or corrupt image",
        some_points,
    )
    bomb = Image.new("L", (1500, 1000))
    bomb.save(root / "person_01/bomb.png")
    bad("person_01/bomb.png", None, "decompression bomb", some_points)
    (root / "person_02/folder.png").mkdir()
    bad("person_02/folder.png", None, "unreadable file", some_points)
    bad("person_02/outside.jpg", good_jpeg, "landmarks outside image", some_points + [150, 0])
    bad("person_03/ghost.jpg", None, "missing file", some_points)
    bad("person_03/unlisted.jpg", good_jpeg, "no landmarks")
    # Same bytes twice in one identity: the second (by name) is a duplicate.
    shutil.copy(root / "person_04/0000.png", root / "person_04/zz_copy.png")
    landmarks["person_04/zz_copy.png"] = landmarks["person_04/0000.png"]
    rejects["person_04/zz_copy.png"] = "duplicate within identity"
    # The same image under two identities: a label conflict, both copies dropped.
    shutil.copy(root / "person_05/0000.png", root / "person_06/conflict.png")
    landmarks["person_06/conflict.png"] = landmarks["person_05/0000.png"]
    rejects["person_05/0000.png"] = rejects["person_06/conflict.png"] = (
        "label conflict (same image under several identities)"
    )
    good.discard("person_05/0000.png")
    # A large JPEG whose face is 4x the output: decoded at reduced scale (PIL draft).
    rng = np.random.default_rng(9)
    big_points = (landmarks["person_07/0000.png"] - [80, 90]) * 6 + [600, 450]
    (root / "person_07/big.jpg").write_bytes(
        jpeg_bytes(face_image(big_points, (1200, 900), seed=int(rng.integers(99)), radius=20))
    )
    landmarks["person_07/big.jpg"] = big_points
    good.add("person_07/big.jpg")

    landmarks_file = write_landmark_lines(root.parent / "faces_landmarks.txt", landmarks)
    with landmarks_file.open("a") as lines:
        lines.write("person_09/0000.png 1 2 3\n")  # a row cut short
    rejects[f"{landmarks_file}:{len(landmarks) + 1}"] = "bad landmark row"
    return Synthetic(root, landmarks_file, landmarks, good, rejects, max_image_pixels=1_200_000)


@pytest.fixture(scope="module")
def ray_session():
    """A small local Ray for a module's Ray-path tests (start-up costs seconds); module-scoped so
    that no Ray outlives this package's tests in a full-suite run."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            _system_config={"worker_niceness": 0},
        )
    yield ray
    if started:
        ray.shutdown()
