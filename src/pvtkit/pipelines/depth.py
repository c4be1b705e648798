"""Monocular depth: a depth map per image at the input's size, transformers' records."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

from ..processing import depth_maps
from ..tasks.depth import predict_depth
from .base import Pipeline


class DepthEstimationPipeline(Pipeline):
    """Monocular depth, in transformers' format: per image `{"predicted_depth": (H, W) tensor, "depth": PIL image}`
    at the input's size (bicubic), the image being the depth scaled from its minimum (0) to its maximum (255).

    Args:
        model, image_processor: A depth model (GLPN) and its processor.
        flip: Average each prediction with the prediction of the horizontally flipped image, flipped back (GLPN's
            evaluation; two forward passes per image).
        **kwargs: `Pipeline`'s options.
    """

    task = "depth-estimation"

    def __init__(self, model: Any, image_processor: Any, flip: bool = False, **kwargs: Any) -> None:
        super().__init__(model, image_processor, **kwargs)
        self.flip = bool(flip)
        self.labels: list[str] = []  # depth has no classes

    def forward(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image, its `(H, W)` float32 depth at its own size."""
        with torch.inference_mode():
            predicted = predict_depth(self.model, pixels, self.flip)
        return [d["predicted_depth"].cpu() for d in depth_maps(predicted, sizes)]

    def postprocess(self, depth: torch.Tensor) -> dict[str, Any]:
        return {"predicted_depth": depth, "depth": PIL.Image.fromarray(depth_to_uint8(depth.numpy()))}


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """Depth scaled from its minimum (0) to its maximum (255), truncated, as transformers' pipeline draws it; a flat
    map is all 0."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return (scaled * 255).astype(np.uint8)
