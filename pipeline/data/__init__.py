"""Training data: identity-balanced streaming over WebDataset shards, and image transforms."""

from facetrain.pipeline.data.transforms import decode_rgb, hflip, normalize_batch, to_tensor

__all__ = ["decode_rgb", "hflip", "normalize_batch", "to_tensor"]
