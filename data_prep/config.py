"""The one typed config of `facetrain prep`; its resolved form is saved in dataset.json."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PrepConfig(BaseModel):
    """Everything that decides the content of a shard set (plus how the work is spread).

    Fields that change the output are part of the resume fingerprint; `workers`, `ray_address`,
    `executor` and `dry_run` only change how the work runs, not what it produces.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="image-folder root (ROOT/<identity>/<image>) or a .rec file")
    out: str = Field(description="output directory")
    landmarks: str | None = Field(
        default=None,
        description="landmark list: whitespace `relpath x1 y1 .. x5 y5`, or CSV/Parquet "
        "with path[, identity], x1..y5 or left, top, width, height",
    )
    align: Literal["arcface", "sphereface", "none"] = "arcface"
    detect: bool = Field(
        default=False,
        description="find the main face and its five landmarks in folder images without a "
        "landmark row (dlib, the `detect` extra); no face or several similar faces: rejected",
    )
    detector: Literal["hog", "cnn"] = Field(
        default="hog",
        description="--detect's face detector: dlib HOG, or the MMOD CNN (slower, finds more "
        "faces: profile, small, dark)",
    )
    upsample: int | None = Field(
        default=None,
        ge=0,
        description="--detect: upsample the image N times before detection (small faces); "
        "default 1 below 400 px, else 0",
    )
    min_images: int = Field(default=1, ge=1, description="drop identities with fewer images")
    max_images: int | None = Field(
        default=None, ge=1, description="cap per identity (deterministic subset, by content hash)"
    )
    min_face_size: float = Field(
        default=0.0, ge=0, description="reject faces narrower than this in source pixels"
    )
    shard_size: int = Field(
        default=5000,
        ge=1,
        description="most samples per shard (shards are packed about equally full)",
    )
    val_identities: int | list[str] = Field(
        default=0, description="hold out N identities (chosen with `seed`) or these names"
    )
    seed: int = 0
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    reencode: bool = Field(
        default=False, description="with --align none: re-encode JPEGs that could pass through"
    )
    image_library: Literal["auto", "pil", "opencv"] = Field(
        default="auto",
        validate_default=True,
        description="decode/warp/encode with OpenCV (faster, measured in BENCHMARKS.md) or "
        "PIL; auto = OpenCV when it imports, else PIL (resolved here, so dataset.json and the "
        "resume fingerprint name the library that made the faces)",
    )
    max_image_pixels: int = Field(
        default=64_000_000, ge=1, description="larger images are rejected as decompression bombs"
    )
    images_per_scan_task: int = Field(
        default=500,
        ge=1,
        description="images per process task (whole identities; small enough that the last "
        "tasks do not leave CPUs idle)",
    )
    executor: Literal["ray", "inline"] = Field(
        default="ray", description="inline = one process, no Ray (small jobs and unit tests)"
    )
    ray_address: str | None = None
    workers: int | None = Field(default=None, ge=1, description="CPUs for embedded Ray")
    dry_run: bool = False
    progress: bool = True

    @field_validator("image_library")
    @classmethod
    def _resolve_auto(cls, value: str) -> str:
        if value != "auto":
            return value
        try:
            import cv2  # noqa: F401
        except ImportError:
            return "pil"
        return "opencv"

    @field_validator("val_identities")
    @classmethod
    def _non_negative(cls, value: int | list[str]) -> int | list[str]:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or a list of identity names")
        return value

    def output_fingerprint(self) -> dict:
        """The fields that decide the output bytes: a rerun with equal ones may resume."""
        runtime_only = {
            "workers",
            "ray_address",
            "executor",
            "dry_run",
            "progress",
            "images_per_scan_task",
        }
        return self.model_dump(mode="json", exclude=runtime_only)
