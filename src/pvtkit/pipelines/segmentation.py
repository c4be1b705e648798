"""Semantic segmentation: a mask per class present, at the input's size; whole-image or sliding-window
inference."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

from ..modeling import PreTrainedModel
from ..processing import class_map, segmentation_labels, semantic_segmentation
from ..tta import as_augmentation, probability_scores, slide_windows, sliding_window_logits, tta_probabilities
from .base import Pipeline

__all__ = ["ImageSegmentationPipeline", "class_areas", "slide_windows", "sliding_window_logits"]


class ImageSegmentationPipeline(Pipeline):
    """Semantic segmentation, in transformers' format: per image one `{"score": None, "label": str, "mask": PIL
    image}` per class present (mask: mode L, 255 where the class is), at the input's size.

    Args:
        model: A segmentation model (`SegformerForSemanticSegmentation`, `PvtV2ForSemanticSegmentation`).
        image_processor: Its processor.
        mode: "whole" (the default): the image resized as the processor says, the logits resized back to the
            image's size (transformers' way). "slide": mmsegmentation's sliding window over the image at its own
            resolution; `crop`-sized windows every `stride`, the logits of overlapping windows averaged.
        crop: Window (height, width) in slide mode; default: the processor's size (what the model was trained at).
        stride: Window step (height, width) in slide mode; default: two thirds of `crop`.
        aug: Test-time augmentation (`pvtkit.tta`): None (the default: one forward), a dict `{"scales": [0.5, 1,
            1.5], "flip": True, "aligned": False}`, an `Augmentation`, or a preset: "flip", "ms" (mmsegmentation's
            ratios 0.5, 0.75, 1, 1.25, 1.5, 1.75), "ms-flip" (both: 12 views). Each view is resized by its ratio
            (whole: from the processor's size; slide: from the image), forwarded in `mode`, and its softmax
            probabilities at the input's size averaged; the class is their argmax.
        **kwargs: `Pipeline`'s options.
    """

    task = "semantic-segmentation"

    def __init__(
        self,
        model: PreTrainedModel,
        image_processor: Any,
        mode: str = "whole",
        crop: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        aug: Any = None,
        **kwargs: Any,
    ) -> None:
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        self.aug = as_augmentation(aug)
        super().__init__(model, image_processor, **kwargs)
        self.mode, self.labels = mode, segmentation_labels(model.config)
        self.crop = self.stride = None
        if mode == "slide":
            size = getattr(image_processor, "size", None) or {}
            crop = crop or (size.get("height"), size.get("width"))
            if not all(isinstance(v, int) and v > 0 for v in crop):
                raise ValueError(f"slide mode needs a crop size (height, width) of positive ints, got {crop}")
            stride = stride or (max(crop[0] * 2 // 3, 1), max(crop[1] * 2 // 3, 1))
            if not all(isinstance(v, int) and 0 < v for v in stride) or stride[0] > crop[0] or stride[1] > crop[1]:
                raise ValueError(f"stride {stride} must be positive and at most the crop {crop}, or pixels are skipped")
            self.crop, self.stride = tuple(crop), tuple(stride)
            self.processor_options = {"do_resize": False}  # the windows see the image at its own resolution

    def forward(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image, its `(H, W)` int64 class map at its own size."""
        with torch.inference_mode():
            if self.aug.active:
                return [class_map(probability_scores(p), dim=1)[0].cpu() for p in self.probabilities(pixels, sizes)]
            if self.mode == "whole":
                return [m.cpu() for m in semantic_segmentation(self.model(pixel_values=pixels).logits.float(), sizes)]
            return [class_map(self.slide_logits(image[None])[0], dim=0).cpu() for image in pixels]

    def probabilities(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image of a batch, its class probabilities `(1, num_labels, H, W)` at its size `sizes[i]`, averaged
        over the test-time augmentation's views (`tta.tta_probabilities`; one view without `aug`)."""
        return tta_probabilities(
            self.model, pixels, sizes, self.aug, self.mode, self.crop, self.stride, self.batch_size
        )

    def slide_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits `(1, num_labels, H, W)` of one image by sliding windows (`sliding_window_logits`)."""
        return sliding_window_logits(self.model, pixels, self.crop, self.stride, self.batch_size)

    def postprocess(self, classes: torch.Tensor) -> list[dict[str, Any]]:
        array = classes.numpy()
        masks = ((k, PIL.Image.fromarray(((array == k) * 255).astype(np.uint8))) for k in np.unique(array))
        return [{"score": None, "label": self.labels[int(k)], "mask": mask} for k, mask in masks]


def class_areas(classes: Any, labels: list[str]) -> list[dict[str, Any]]:
    """Per class present: id, label, pixel count and fraction of the image, largest first."""
    ids, counts = np.unique(classes, return_counts=True)
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")
    return [
        {
            "id": int(ids[i]),
            "label": labels[int(ids[i])],
            "pixels": int(counts[i]),
            "fraction": round(int(counts[i]) / total, 6),
        }
        for i in order
    ]
