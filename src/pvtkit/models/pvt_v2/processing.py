"""PVTv2's image processors: `PvtImageProcessor` (PIL and NumPy, transformers' `PvtImageProcessorPil`) and
`PvtImageProcessorFast` (batched torch tensors). No PyTorch at import (see `pvtkit.processing`).
"""

from __future__ import annotations

from ...processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    _BaseImageProcessor,
    _TorchBackend,
    register_image_processors,
)
from ..vit.processing import ViTImageProcessor


class PvtImageProcessor(ViTImageProcessor):
    """PVT/PVTv2 preprocessing with PIL and NumPy, equal to transformers' `PvtImageProcessorPil`.

    Defaults: RGB, 224x224 bicubic resize (as transformers 5's class; checkpoints' configs state `resample`,
    which wins), x/255, ImageNet mean/std.
    """

    image_processor_type = "PvtImageProcessor"
    _defaults = {
        **_BaseImageProcessor._defaults,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "resample": 3,
    }


class PvtImageProcessorFast(_TorchBackend, PvtImageProcessor):
    """PVT/PVTv2 preprocessing on batched torch tensors (CPU or GPU), following transformers' tensor back end."""

    image_processor_type = "PvtImageProcessorFast"


register_image_processors(
    {
        "PvtImageProcessor": PvtImageProcessor,
        "PvtImageProcessorPil": PvtImageProcessor,
        "PvtImageProcessorFast": PvtImageProcessorFast,
    }
)

__all__ = ["PvtImageProcessor", "PvtImageProcessorFast"]
