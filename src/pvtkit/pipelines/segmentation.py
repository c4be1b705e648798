"""Semantic segmentation: a mask per class present, at the input's size; whole-image or sliding-window
inference."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..modeling import PreTrainedModel
from ..processing import semantic_segmentation
from .base import Pipeline


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmsegmentation's `slide` grid: `(top, bottom, left, right)` windows of `crop` (clipped to the image) every
    `stride`, the last row and column shifted back to end at the image's edge; together they cover every pixel."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(bottom - ch, 0), bottom, max(right - cw, 0), right))
    return windows


def sliding_window_logits(
    model: Any, pixels: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int = 8
) -> torch.Tensor:
    """Logits `(1, num_labels, H, W)` of one image `(1, C, H, W)` by sliding windows (`slide_windows`), each
    window's logits upsampled to the window and averaged where windows overlap; `batch_size` windows per forward."""
    height, width = pixels.shape[-2:]
    windows = slide_windows(height, width, crop, stride)
    total = pixels.new_zeros((1, model.config.num_labels, height, width), dtype=torch.float32)
    count = pixels.new_zeros((1, 1, height, width), dtype=torch.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crops = torch.cat([pixels[..., t:b, left:r] for t, b, left, r in chunk])  # windows share one size
        logits = model(pixel_values=crops).logits.float()
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        for (t, b, left, r), window in zip(chunk, logits):
            total[0, :, t:b, left:r] += window
            count[0, :, t:b, left:r] += 1
    return total / count


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
        **kwargs: Any,
    ) -> None:
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        super().__init__(model, image_processor, **kwargs)
        self.mode, self.labels = mode, self.label_names()
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
            if self.mode == "whole":
                return [m.cpu() for m in semantic_segmentation(self.model(pixel_values=pixels).logits.float(), sizes)]
            return [self.slide_logits(image[None])[0].argmax(0).cpu() for image in pixels]

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
