"""Images -> flip-augmented, L2-normalised embeddings with a torch backbone.

embedding(image) = normalise(model(image) + model(horizontal flip of image)), the usual test-time
augmentation of ArcFace/insightface evaluation. Images come from an image source: a folder
(optionally aligned with its landmark file, by the same code and template as `facetrain prep`)
or an insightface `.bin`. An image that is missing or unreadable is recorded in `failures` with
the reason, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from facetrain.pipeline.eval.embeddings_io import EmbeddingTable

if TYPE_CHECKING:
    import torch
    from PIL import Image

FACE_SIZE = (112, 112)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageProblem(ValueError):
    """This one image cannot be embedded (missing, unreadable, no landmarks); others can."""


class ImageSource(Protocol):
    def load(self, key: str) -> Image.Image:
        """The 112x112 RGB face of `key`, or ImageProblem."""
        ...


class FolderImages:
    """Images under `root` by relative key; aligned with `landmarks` when given.

    Without landmarks the images must already be aligned 112x112 faces (`facetrain prep`
    output); any other size is a usage error, not a per-image problem, since every image of the
    folder would then be evaluated unaligned.
    """

    def __init__(
        self,
        root: str | Path,
        landmarks: Mapping[str, np.ndarray] | None = None,
        template: str = "arcface",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"images root {self.root}: not a folder")
        self.landmarks = landmarks
        self.template = template

    def load(self, key: str) -> Image.Image:
        from facetrain.data_prep.align import align_face
        from facetrain.data_prep.images import ImageError, load_rgb

        points = None
        if self.landmarks is not None:
            points = self.landmarks.get(key)
            if points is None:
                raise ImageProblem("no landmark row for this image")
        try:
            image = load_rgb(self.root / key, name=key)
        except ImageError as err:
            raise ImageProblem(err.reason) from err
        if points is not None:
            return align_face(image, points, self.template)
        if image.size != FACE_SIZE:
            raise ValueError(
                f"image {self.root / key} is {image.size[0]}x{image.size[1]}, expected an aligned "
                f"112x112 face; pass --landmarks FILE to align raw images"
            )
        return image

    def keys(self) -> list[str]:
        """Every image under the root, as sorted relative keys."""
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )


class BinImages:
    """The encoded, already aligned images of an insightface `.bin`, keyed by index ("0", "1"...)."""

    def __init__(self, images: Sequence[bytes]) -> None:
        self.images = images

    def load(self, key: str) -> Image.Image:
        from facetrain.data_prep.images import ImageError, load_rgb

        try:
            image = load_rgb(self.images[int(key)], name=f"bin image {key}")
        except ImageError as err:
            raise ImageProblem(err.reason) from err
        if image.size != FACE_SIZE:
            # Resizing another crop (SphereFace's 96x112) would distort faces, not align them.
            raise ValueError(
                f"bin image {key} is {image.size[0]}x{image.size[1]}, expected an aligned 112x112 face"
            )
        return image


def to_input(faces: np.ndarray) -> torch.Tensor:
    """[B, 112, 112, 3] uint8 RGB -> [B, 3, 112, 112] float in [-1, 1] (pixel / 127.5 - 1)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float()
    return tensor / 127.5 - 1.0


def embed_faces(
    model: torch.nn.Module, faces: np.ndarray, device: str = "cpu", flip: bool = True
) -> np.ndarray:
    """[B, 112, 112, 3] uint8 faces -> [B, D] float32 unit-length embeddings."""
    import torch

    batch = to_input(faces).to(device)
    with torch.inference_mode():
        if flip:
            both = model(torch.cat([batch, batch.flip(3)]))
            embeddings = both[: len(batch)] + both[len(batch) :]
        else:
            embeddings = model(batch)
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
    return embeddings.cpu().numpy()


def embed_images(
    model: torch.nn.Module,
    keys: Sequence[str],
    source: ImageSource,
    batch_size: int = 128,
    device: str = "cpu",
    flip: bool = True,
    workers: int = 4,
    progress: bool = True,
) -> tuple[EmbeddingTable, dict[str, str]]:
    """Embed each key once; returns the table and {key: reason} for images that failed."""
    from tqdm import tqdm

    model = model.to(device).eval()
    keys = list(dict.fromkeys(keys))
    embedded_keys: list[str] = []
    chunks: list[np.ndarray] = []
    failures: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(total=len(keys), desc="embedding", unit="img", disable=not progress) as bar,
    ):
        for batch_keys, loaded in _prefetched_batches(pool, source, keys, batch_size):
            good_keys, faces = [], []
            for key, outcome in zip(batch_keys, loaded, strict=True):
                if isinstance(outcome, ImageProblem):
                    failures[key] = str(outcome)
                else:
                    good_keys.append(key)
                    faces.append(np.asarray(outcome, dtype=np.uint8))
            if faces:
                chunks.append(embed_faces(model, np.stack(faces), device, flip))
                embedded_keys.extend(good_keys)
            bar.update(len(batch_keys))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    return EmbeddingTable(embedded_keys, embeddings), failures


def _prefetched_batches(
    pool: ThreadPoolExecutor, source: ImageSource, keys: list[str], batch_size: int
) -> Iterator[tuple[list[str], list]]:
    """Decode batch k+1 on the pool while the caller runs the model on batch k."""

    def load(key: str):
        try:
            return source.load(key)
        except ImageProblem as problem:
            return problem

    batches = [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]
    pending = [pool.submit(load, key) for key in batches[0]] if batches else []
    for index, batch_keys in enumerate(batches):
        current = pending
        if index + 1 < len(batches):
            pending = [pool.submit(load, key) for key in batches[index + 1]]
        yield batch_keys, [future.result() for future in current]
