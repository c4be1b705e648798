"""SegFormer's image processors: `SegformerImageProcessor` (PIL and NumPy, transformers'
`SegformerImageProcessorPil`, label maps included) and `SegformerImageProcessorFast` (batched torch tensors). No
PyTorch at import (see `pvtkit.processing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    BatchFeature,
    ImageInput,
    _BaseImageProcessor,
    _TorchBackend,
    register_image_processors,
    semantic_segmentation,
    torch,
)
from ..vit.processing import ViTImageProcessor


class SegformerImageProcessor(ViTImageProcessor):
    """SegFormer preprocessing with PIL and NumPy, equal to transformers' `SegformerImageProcessorPil`, label maps
    included.

    Defaults: RGB, 512x512 bilinear resize, x/255, ImageNet mean/std. `segmentation_maps` come back as `labels`
    (int64, resized by nearest neighbour to the images' size); `do_reduce_labels` maps 0 to 255 (ignored) and every
    other class k to k - 1, as ADE20k's checkpoints expect.
    """

    image_processor_type = "SegformerImageProcessor"
    _defaults = {
        **_BaseImageProcessor._defaults,
        "size": {"height": 512, "width": 512},
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "do_reduce_labels": False,
    }

    def __init__(self, *args: Any, reduce_labels: bool | None = None, **kwargs: Any) -> None:
        if reduce_labels is not None:  # the name in the configs of nvidia/segformer-*-ade-*, transformers 4's first
            kwargs.setdefault("do_reduce_labels", reduce_labels)
        super().__init__(*args, **kwargs)

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        segmentation_maps: Any = None,
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        exif_transpose: bool | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Images (as `ViTImageProcessor.preprocess` takes them) and, optionally, one label map per image.

        Args:
            images: The images.
            segmentation_maps: Per image an `(H, W)` map of class indices at the image's size: a one-band PIL image
                (L, P, I), an integer array or tensor, a path, or a list / `(B, H, W)` batch of those.
            return_tensors, input_data_format, exif_transpose, device, **overrides: As in `ViTImageProcessor`.

        Returns:
            A `BatchFeature` with `pixel_values`, and `labels` when maps were given.
        """
        return self._preprocess(
            images, segmentation_maps, return_tensors, input_data_format, exif_transpose, device, overrides
        )

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Any = None, return_segmentation_scores: bool = False
    ) -> list[Any]:
        """Class maps from a segmentation model's output (see `semantic_segmentation`)."""
        return semantic_segmentation(outputs.logits, target_sizes, return_segmentation_scores)


class SegformerImageProcessorFast(_TorchBackend, SegformerImageProcessor):
    """SegFormer preprocessing (label maps included) on batched torch tensors, as transformers' tensor back end."""

    image_processor_type = "SegformerImageProcessorFast"


register_image_processors(
    {
        "SegformerImageProcessor": SegformerImageProcessor,
        "SegformerImageProcessorPil": SegformerImageProcessor,
        "SegformerFeatureExtractor": SegformerImageProcessor,
        "SegformerImageProcessorFast": SegformerImageProcessorFast,
    }
)

__all__ = ["SegformerImageProcessor", "SegformerImageProcessorFast"]
