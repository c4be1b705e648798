"""Image classification: top-k labels with scores per image, transformers' records."""

from __future__ import annotations

from typing import Any

import torch

from ..modeling import PreTrainedModel
from .base import Pipeline


class ImageClassificationPipeline(Pipeline):
    """Top-k labels with scores per image: `[{"label": str, "score": float}, ...]`, best first.

    Scores are softmax probabilities, or per-class sigmoids for a `multi_label_classification` model (as
    transformers' pipeline does).
    """

    task = "image-classification"

    def __init__(self, model: PreTrainedModel, image_processor: Any, top_k: int = 5, **kwargs: Any) -> None:
        super().__init__(model, image_processor, **kwargs)
        self.top_k = top_k
        self.labels = self.label_names()

    def forward(self, pixels: torch.Tensor, sizes: Any = None, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits
        return self.records(logits, top_k)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits `(N, classes)` -> float32 scores: softmax, or per-class sigmoids for a multi-label model."""
        if self.model.config.problem_type == "multi_label_classification":
            return logits.float().sigmoid()
        return logits.float().softmax(-1)

    def records(self, logits: torch.Tensor, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        """Logits `(N, classes)` -> per image its top-k `{"label", "score"}` records, best first (the server's
        answers are these too)."""
        k = min(top_k or self.top_k, len(self.labels))
        if k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        values, indices = self.scores(logits).topk(k, dim=-1)
        return [
            [{"label": self.labels[j], "score": float(v)} for v, j in zip(vs.tolist(), js.tolist())]
            for vs, js in zip(values, indices)
        ]
