"""insightface verification `.bin` files (lfw.bin, cfp_fp.bin, agedb_30.bin).

A `.bin` is a pickle of `(images, is_same)`: `images` holds 2P encoded images (JPEG/PNG bytes,
already aligned to 112x112), pair p being images 2p and 2p+1; `is_same` holds P booleans.
The files are pickles, so they are read with an unpickler that only builds plain containers,
bytes and numpy arrays: a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from facetrain.pipeline.eval.pairs import DEFAULT_FOLDS, PairList, contiguous_folds

# What numpy needs to rebuild arrays and scalars; everything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy", "bool_"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by python 3 spell bytes
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


@dataclass(frozen=True)
class VerificationBin:
    images: list[bytes]  # 2P encoded images
    is_same: np.ndarray  # [P] bool

    def pairs(self, n_folds: int = DEFAULT_FOLDS, source: str = "bin") -> PairList:
        """Pairs whose keys are image indices as strings ("0", "1", ...), insightface's folds."""
        count = self.is_same.size
        keys_a = tuple(str(2 * p) for p in range(count))
        keys_b = tuple(str(2 * p + 1) for p in range(count))
        return PairList(
            keys_a, keys_b, self.is_same, contiguous_folds(self.is_same, n_folds), source
        )


def read_bin(path: str | Path) -> VerificationBin:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification bin {path}: not found")
    try:
        with path.open("rb") as handle:
            loaded = _SafeUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(
            f"verification bin {path}: not an insightface .bin pickle ({err})"
        ) from err
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise ValueError(f"verification bin {path}: expected a pickled (images, is_same) pair")
    images, is_same = loaded
    images = [_as_bytes(image, path, index) for index, image in enumerate(images)]
    is_same = np.asarray(list(is_same), dtype=bool)
    if len(images) != 2 * is_same.size:
        raise ValueError(
            f"verification bin {path}: {is_same.size} pairs need {2 * is_same.size} images, "
            f"found {len(images)}"
        )
    return VerificationBin(images, is_same)


def write_bin(path: str | Path, images: list[bytes], is_same: np.ndarray | list[bool]) -> Path:
    """Write a `.bin` insightface's `load_bin` reads (protocol 2 keeps old readers working)."""
    is_same = [bool(flag) for flag in is_same]
    if len(images) != 2 * len(is_same):
        raise ValueError(
            f"write_bin: {len(is_same)} pairs need {2 * len(is_same)} images, got {len(images)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(([bytes(image) for image in images], is_same), handle, protocol=2)
    return path


def _as_bytes(image, path: Path, index: int) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image.tobytes()
    raise ValueError(
        f"verification bin {path}: image {index} is a {type(image).__name__}, expected encoded bytes"
    )


def encode_image(array: np.ndarray, format: str = "PNG") -> bytes:
    """An [H, W, 3] uint8 RGB array as encoded bytes (to build .bin files)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()
