"""Small models and a synthetic face folder for the evaluation tests."""

from pathlib import Path

import numpy as np
import torch
from facetrain.jobs.demo.synthetic_faces import face_relpath, jpeg_bytes
from torch import nn


class ProjectionNet(nn.Module):
    """A fixed random projection of the pixels: keeps image similarity, is not flip-symmetric."""

    def __init__(self, embedding_size: int = 16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.pool = nn.AvgPool2d(4)  # 112 -> 28: a small linear layer
        self.linear = nn.Linear(3 * 28 * 28, embedding_size)
        with torch.no_grad():
            self.linear.weight.copy_(
                torch.randn(embedding_size, 3 * 28 * 28, generator=generator) * 0.02
            )
            self.linear.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(images).flatten(1))


def write_face_folder(
    root: Path, identities: int = 6, per_identity: int = 3, seed: int = 0
) -> list[str]:
    """ROOT/Person_k/Person_k_000i.jpg: noisy JPEG copies of one random base image per identity.

    Not the demo's rendered faces: those share a face's layout, so a random projection of the
    pixels (ProjectionNet) scores two people up to ~0.93 and cannot be perfect; these tests
    need a set on which raw pixel similarity alone is. The layout and JPEG writing are the
    demo's (LFW's names)."""
    rng = np.random.default_rng(seed)
    keys = []
    for person in range(identities):
        name = f"Person_{person}"
        base = rng.integers(0, 256, (112, 112, 3)).astype(np.float64)
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(1, per_identity + 1):
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            key = face_relpath(name, number)
            (root / key).write_bytes(jpeg_bytes(noisy))
            keys.append(key)
    return keys


def write_pairs_file(path: Path, identities: int, per_identity: int) -> Path:
    """A View-1 style file: N same lines then N different lines over write_face_folder's names."""
    same = [f"Person_{p}\t1\t{i}" for p in range(identities) for i in range(2, per_identity + 1)]
    different = [
        f"Person_{p}\t1\tPerson_{(p + 1) % identities}\t{i}"
        for p in range(identities)
        for i in range(2, per_identity + 1)
    ]
    path.write_text(f"{len(same)}\n" + "\n".join(same + different) + "\n")
    return path
