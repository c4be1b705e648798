"""Feature extraction: an encoder's or a backbone's features per image."""

from __future__ import annotations

from typing import Any

import torch

from ..modeling import PreTrainedModel
from .base import Pipeline


class ImageFeatureExtractionPipeline(Pipeline):
    """Per image, a dict of named feature tensors (on the CPU, float32).

    For a PVTv2 backbone: one NCHW map per selected stage (`stage1`..`stage4`, strides 4..32), or with `pooled`
    their spatial means (`stage{i}`: `(C,)`). For a ViT encoder: `last_hidden_state` (tokens x hidden), or with
    `pooled` the final [CLS] token.
    """

    task = "image-feature-extraction"

    def __init__(self, model: PreTrainedModel, image_processor: Any, pooled: bool = False, **kwargs: Any) -> None:
        super().__init__(model, image_processor, **kwargs)
        self.pooled = pooled

    def forward(self, pixels: torch.Tensor, sizes: Any = None) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            out = self.model(pixel_values=pixels)
        if getattr(out, "feature_maps", None) is not None:
            names = self.model.out_features
            maps = [m.float().cpu() for m in out.feature_maps]
            feats = {name: (m.mean(dim=(2, 3)) if self.pooled else m) for name, m in zip(names, maps)}
        else:
            hidden = out.last_hidden_state.float().cpu()
            if hidden.dim() == 4:  # a PVTv2 encoder's NCHW map
                feats = {"last_hidden_state": hidden.mean(dim=(2, 3)) if self.pooled else hidden}
            else:
                feats = {"pooled" if self.pooled else "last_hidden_state": hidden[:, 0] if self.pooled else hidden}
        return [{name: t[i] for name, t in feats.items()} for i in range(pixels.shape[0])]
