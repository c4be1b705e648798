"""Object detection: scored, labelled boxes in the input's pixels, transformers' records."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..processing import pad_batch
from .base import Pipeline


class ObjectDetectionPipeline(Pipeline):
    """Object detection, in transformers' format: per image a list of `{"score": float, "label": str, "box":
    {"xmin", "ymin", "xmax", "ymax"}}` (integer pixels of the input image), best first.

    Images of different sizes share a batch: each is resized by the processor (shortest edge, longest edge) and
    the batch is padded, the model told which pixels are padding (`pixel_mask`), as DETR's processors do.

    Args:
        model: A detection model (`DeformableDetrForObjectDetection`).
        image_processor: Its processor (`DeformableDetrImageProcessor`).
        threshold: Keep the detections scoring above this (transformers' default 0.5).
        top_k: Consider at most this many (query, class) pairs per image before the threshold (100, as
            `post_process_object_detection`).
        **kwargs: `Pipeline`'s options.
    """

    task = "object-detection"
    pads_batches = True

    def __init__(
        self, model: Any, image_processor: Any, threshold: float = 0.5, top_k: int = 100, **kwargs: Any
    ) -> None:
        check_threshold(threshold)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive number of detections, got {top_k!r}")
        super().__init__(model, image_processor, **kwargs)
        self.threshold, self.top_k = float(threshold), top_k
        self.labels = self.label_names()
        self.processor_options = {"do_pad": False}  # the batch is padded together (`stack`)

    def stack(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        pixels, mask = pad_batch([torch.from_numpy(a) for a in arrays])
        return {
            "pixel_values": pixels.to(self.device, self.dtype, non_blocking=True),
            "pixel_mask": mask.to(self.device, non_blocking=True),
        }

    def forward(
        self, pixels: dict[str, torch.Tensor], sizes: list[tuple[int, int]], threshold: float | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image `{"scores", "labels", "boxes", "size"}`: the processor's `post_process_object_detection` of the
        model's output (corners in the input image's pixels) and the image's `(height, width)`."""
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        with torch.inference_mode():
            output = self.model(**pixels)
            found = self.image_processor.post_process_object_detection(
                output, threshold=threshold, target_sizes=sizes, top_k=self.top_k
            )
        return [
            {"scores": d["scores"].float().cpu(), "labels": d["labels"].cpu(), "boxes": d["boxes"].float().cpu(),
             "size": torch.tensor(size)}
            for d, size in zip(found, sizes)
        ]  # fmt: skip

    def postprocess(self, found: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        return detection_records(found, self.labels)


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a score in [0, 1], got {threshold!r}")
    return float(threshold)


def detection_records(found: dict[str, torch.Tensor], labels: list[str]) -> list[dict[str, Any]]:
    """transformers' object-detection records of one image's `{"scores", "labels", "boxes"}`: `score`, `label`
    (the class name) and `box` (`xmin, ymin, xmax, ymax` truncated to integer pixels, as transformers does)."""
    records = []
    for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"]):
        xmin, ymin, xmax, ymax = box.int().tolist()
        name = labels[label] if 0 <= label < len(labels) else f"LABEL_{label}"
        records.append({"score": score, "label": name, "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}})
    return records
