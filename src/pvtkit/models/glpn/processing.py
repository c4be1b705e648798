"""GLPN's image processors: `GLPNImageProcessor` (PIL and NumPy, transformers' `GLPNImageProcessorPil`, depth maps
included) and `GLPNImageProcessorFast` (batched torch tensors). No PyTorch at import (see `pvtkit.processing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...processing import (
    DEPTH_RESAMPLES,
    BatchFeature,
    ImageInput,
    ImageLoadError,
    _BaseImageProcessor,
    _describe,
    _flatten_depth_maps,
    _TorchBackend,
    depth_array,
    depth_maps,
    register_image_processors,
    resize_depth,
    resize_depth_torch,
    torch,
)
from ..vit.processing import ViTImageProcessor


class GLPNImageProcessor(ViTImageProcessor):
    """GLPN preprocessing with PIL and NumPy, equal to transformers' `GLPNImageProcessorPil`.

    Defaults: RGB, each side rounded down to a multiple of `size_divisor` (32, so the decoder's maps align) by a
    bilinear resize, x/255, no normalization. `depth_maps` come back as `labels` (float32 metres, resized to the
    images' size without mixing the pixels without a measurement, 0, into the others), which transformers' GLPN
    processor does not offer.
    """

    image_processor_type = "GLPNImageProcessor"
    _defaults = {
        **_BaseImageProcessor._defaults,
        "size": None,
        "do_normalize": False,
        "image_mean": None,
        "image_std": None,
        "size_divisor": 32,
    }

    def _resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        opts = super()._resolve(overrides)
        d = opts["size_divisor"]
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"size_divisor must be a positive int, got {opts['size_divisor']!r}")
        return opts

    def _target_size(self, height: int, width: int, opts: dict[str, Any], name: str) -> tuple[int, int]:
        d = opts["size_divisor"]
        if height < d or width < d:
            raise ImageLoadError(
                f"{name}: {height}x{width} (height x width) is smaller than size_divisor {d}; "
                f"expected both sides at least {d} pixels"
            )
        return height // d * d, width // d * d

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        depth_maps: Any = None,
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        exif_transpose: bool | None = None,
        device: str | torch.device | None = None,
        depth_scale: float = 1.0,
        depth_resample: str = "nearest",
        **overrides: Any,
    ) -> BatchFeature:
        """Images (as `ViTImageProcessor.preprocess` takes them) and, optionally, one depth map per image.

        Args:
            images: The images.
            depth_maps: Per image an `(H, W)` map of depths at the image's size, 0 (or non-finite) where there is no
                measurement: a float array or tensor of metres, a PIL image of mode F, I or I;16 or a path to one
                (divided by `depth_scale`), or a list / `(B, H, W)` batch of those.
            depth_scale: What PIL images' (and files') values are divided by to give metres (NYU's millimetre PNGs:
                1000, KITTI's: 256); arrays and tensors are taken as metres.
            depth_resample: "nearest" (each output pixel one source pixel's depth) or "area" (the mean of the valid
                source pixels it covers, weighted by the area covered; 0 where it covers none).
            return_tensors, input_data_format, exif_transpose, device, **overrides: As in `ViTImageProcessor`.

        Returns:
            A `BatchFeature` with `pixel_values`, and `labels` (float32 `(N, H, W)` metres) when maps were given.

        Raises:
            ValueError: A map that is not 2-d, has another size than its image, or holds a negative depth (the
                message names the map's index and the shape or value); a bad `depth_scale` or `depth_resample`.
        """
        if depth_maps is not None:
            if depth_resample not in DEPTH_RESAMPLES:
                raise ValueError(f"depth_resample must be one of {', '.join(DEPTH_RESAMPLES)}, got {depth_resample!r}")
            if isinstance(depth_scale, bool) or not (isinstance(depth_scale, (int, float)) and depth_scale > 0):
                raise ValueError(f"depth_scale must be a positive number, got {depth_scale!r}")
            if not math.isfinite(depth_scale):
                raise ValueError(f"depth_scale must be finite, got {depth_scale!r}")
        options = {"depth_scale": float(depth_scale), "depth_resample": depth_resample}
        return self._preprocess(
            images, depth_maps, return_tensors, input_data_format, exif_transpose, device, overrides, options
        )

    def _label_maps(
        self,
        maps: Any,
        sizes: list[tuple[int, int]],
        opts: dict[str, Any],
        exif: bool,
        device: Any,
        depth_scale: float = 1.0,
        depth_resample: str = "nearest",
    ) -> list[Any]:
        """Depth maps read into metres, checked against their images' sizes, resized to their images' output
        sizes (`processing.resize_depth`)."""
        flat = _flatten_depth_maps(maps)
        if len(flat) != len(sizes):
            raise ValueError(f"got {len(flat)} depth maps for {len(sizes)} images; expected one per image")
        out = []
        for index, (raw, size) in enumerate(zip(flat, sizes)):
            name = "depth map" + _describe(raw, index).removeprefix("image")
            depth = depth_array(self._load(raw, index, exif), depth_scale, name)
            if depth.shape != size:
                raise ValueError(
                    f"{name} is {depth.shape[0]}x{depth.shape[1]} but image {index} is "
                    f"{size[0]}x{size[1]} (height x width); a depth map must have its image's size"
                )
            target = self._target_size(*size, opts, name) if opts["do_resize"] else size
            out.append(self._resize_depth(depth, target, depth_resample, device))
        return out

    @staticmethod
    def _resize_depth(depth: np.ndarray, size: tuple[int, int], resample: str, device: Any) -> Any:
        return resize_depth(depth, size, resample)

    def post_process_depth_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, torch.Tensor]]:
        """Depth maps from a depth model's output, resized to `target_sizes` (see `depth_maps`)."""
        return depth_maps(outputs.predicted_depth, target_sizes)


class GLPNImageProcessorFast(_TorchBackend, GLPNImageProcessor):
    """GLPN preprocessing on batched torch tensors, as transformers' tensor back end."""

    image_processor_type = "GLPNImageProcessorFast"

    @staticmethod
    def _resize_depth(depth: np.ndarray, size: tuple[int, int], resample: str, device: Any) -> Any:
        return resize_depth_torch(depth, size, resample, device)


register_image_processors(
    {
        "GLPNImageProcessor": GLPNImageProcessor,
        "GLPNImageProcessorPil": GLPNImageProcessor,
        "GLPNFeatureExtractor": GLPNImageProcessor,
        "GLPNImageProcessorFast": GLPNImageProcessorFast,
    }
)

__all__ = ["GLPNImageProcessor", "GLPNImageProcessorFast"]
