"""GLPN's image processors: `GLPNImageProcessor` (PIL and NumPy, transformers' `GLPNImageProcessorPil`) and
`GLPNImageProcessorFast` (batched torch tensors). No PyTorch at import (see `pvtkit.processing`).
"""

from __future__ import annotations

from typing import Any

from ...processing import (
    ImageLoadError,
    _BaseImageProcessor,
    _TorchBackend,
    depth_maps,
    register_image_processors,
    torch,
)
from ..vit.processing import ViTImageProcessor


class GLPNImageProcessor(ViTImageProcessor):
    """GLPN preprocessing with PIL and NumPy, equal to transformers' `GLPNImageProcessorPil`.

    Defaults: RGB, each side rounded down to a multiple of `size_divisor` (32, so the decoder's maps align) by a
    bilinear resize, x/255, no normalization.
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

    def post_process_depth_estimation(self, outputs: Any, target_sizes: Any = None) -> list[dict[str, torch.Tensor]]:
        """Depth maps from a depth model's output, resized to `target_sizes` (see `depth_maps`)."""
        return depth_maps(outputs.predicted_depth, target_sizes)


class GLPNImageProcessorFast(_TorchBackend, GLPNImageProcessor):
    """GLPN preprocessing on batched torch tensors, as transformers' tensor back end."""

    image_processor_type = "GLPNImageProcessorFast"


register_image_processors(
    {
        "GLPNImageProcessor": GLPNImageProcessor,
        "GLPNImageProcessorPil": GLPNImageProcessor,
        "GLPNFeatureExtractor": GLPNImageProcessor,
        "GLPNImageProcessorFast": GLPNImageProcessorFast,
    }
)

__all__ = ["GLPNImageProcessor", "GLPNImageProcessorFast"]
