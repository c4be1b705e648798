"""SegFormer's all-MLP decode head (Xie et al., https://arxiv.org/abs/2105.15203), which PVTv2's segmentation model
uses too: per stage a linear projection, upsampled to the 1/4 map, fused and classified."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ... import cpu_kernels as kernels
from ...layers import map_to_tokens, tokens_to_map


class _Projection(nn.Module):
    """One stage's projection to the decoder width, under the checkpoints' name (`linear_c.{i}.proj`)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)


class AllMlpDecodeHead(nn.Module):
    """Per stage a linear projection to `decoder_hidden_size`, upsampled to the first stage's 1/4 map, concatenated
    (deepest first), fused by a 1x1 conv + BatchNorm + ReLU, then a 1x1 classifier: `(B, num_labels, H/4, W/4)`.

    Computed in an equal order: the fuse conv is linear per pixel and bilinear upsampling is linear per channel
    (a constant stays constant), so they commute, and each stage's slice of the fuse conv folds into its projection
    (one `width x C_i` matrix); each stage is then mapped at its own resolution, upsampled and summed. The
    concatenation (4 x width channels at 1/4 resolution, 805 MB for SegFormer-B2 at 1024x1024) and the fuse conv
    over it (most of the head's FLOPs) never happen; the numbers differ from transformers' by rounding only. Layers
    that something replaced or wraps (a LoRA adapter on the projections) run as they are, in transformers' order."""

    def __init__(self, hidden_sizes: Sequence[int], width: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(_Projection(c, width) for c in hidden_sizes)
        self.linear_fuse = nn.Conv2d(width * len(hidden_sizes), width, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(width, num_labels, kernel_size=1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        plain = type(self.linear_fuse) is nn.Conv2d and all(type(layer.proj) is nn.Linear for layer in self.linear_c)
        fused = self._folded(maps) if plain else self._concatenated(maps)
        fused = F.relu(self.batch_norm(fused), inplace=True)
        return kernels.conv(self.dropout(fused), self.classifier).contiguous()  # (B, num_labels, H/4, W/4)

    def _concatenated(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size, projected = maps[0].shape[-2:], []
        for x, layer in zip(maps, self.linear_c):
            y = tokens_to_map(layer.proj(map_to_tokens(x)), *x.shape[-2:])  # (B, width, h, w)
            projected.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.linear_fuse(torch.cat(projected[::-1], dim=1))  # (B, width, H/4, W/4)

    def _folded(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size, n = maps[0].shape[-2:], len(maps)
        width = self.linear_fuse.out_channels
        fuse = self.linear_fuse.weight.flatten(1)  # (width, n * width), the stages' columns deepest first
        fused = None
        for i, (x, layer) in enumerate(zip(maps, self.linear_c)):
            block = fuse[:, (n - 1 - i) * width : (n - i) * width]  # (width, width): what stage i's projection feeds
            B, C, h, w = x.shape
            y = kernels.affine(map_to_tokens(x), block @ layer.proj.weight, block @ layer.proj.bias)  # (B, h*w, width)
            y = tokens_to_map(y, h, w)  # (B, width, h, w), channels-last
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            fused = y if fused is None else fused.add_(y)  # in place: neither op's backward needs its output
        return fused  # type: ignore[return-value]
