"""Building blocks every model family shares: activations, stochastic depth, attention, the position-embedding
resize, the token layout, adaptive pooling written so that an export keeps it dynamic, and multi-scale deformable
attention. The heavy ops themselves go through `cpu_kernels`, which decides their fast paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .config import check_activation


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# transformers' `hidden_act` names -> functions. "gelu" is the exact (erf) GELU, as in transformers.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": cpu_kernels.gelu_tanh,
    "gelu_pytorch_tanh": cpu_kernels.gelu_tanh,
    "gelu_fast": cpu_kernels.gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called `name` in transformers' configs."""
    check_activation(name)
    return ACTIVATIONS[name]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch for a random subset of samples while training.

    Args:
        drop_prob: Probability of dropping a sample's branch; survivors are scaled by `1 / (1 - drop_prob)`.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Dense(nn.Module):
    """One Linear layer under the name `dense` (transformers' checkpoints nest it one level down)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_kernels.linear(x, self.dense)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over `(B, heads, N, head_dim)` queries and `(B, heads, M, head_dim)` keys/values.

    Runs `F.scaled_dot_product_attention` (fused kernels, no N x M matrix kept for backward) unless the attention
    weights are asked for; then the explicit softmax path computes and returns them `(B, heads, N, M)`.
    """
    if not need_weights:
        return cpu_kernels.sdpa(q, k, v, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v, weights


def resize_position_embeddings(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize `(1, 1 + h*w, C)` position embeddings laid out on `grid` to `new_grid` (bicubic, align_corners=False).

    The [CLS] position is kept as is. Resampling runs in fp32 (also under autocast or with bf16 weights, where
    bicubic weights lose too much precision) and the result is cast back to `pos.dtype`. As in transformers, a
    square input of the nominal size is returned untouched, and the target is given by `size=`, not a scale factor;
    exported, the resize is always in the graph (bicubic to the same size is the identity), so the size stays dynamic.
    """
    if not torch.compiler.is_exporting() and tuple(new_grid) == tuple(grid):
        return pos
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    C = pos.shape[-1]
    patch_pos = patch_pos.reshape(1, grid[0], grid[1], C).permute(0, 3, 1, 2)  # (1, C, h, w)
    with torch.autocast(device_type=pos.device.type, enabled=False):
        patch_pos = F.interpolate(patch_pos.float(), size=new_grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, C)  # (1, h'*w', C)
    return torch.cat((cls_pos, patch_pos), dim=1)


# Tokens are (B, N, C) with N = h * w in row-major order. A token tensor seen as a map is channels-last in memory,
# so the two conversions below are views, not copies, whenever the memory allows it.


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`(B, h*w, C)` tokens -> `(B, C, h, w)`, a view (channels-last in memory) of contiguous tokens."""
    return x.view(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """`(B, C, h, w)` -> `(B, h*w, C)` tokens, a view of a channels-last map."""
    return x.flatten(2).transpose(1, 2)


def _pool_matrix(n: int | torch.SymInt, out: int, like: torch.Tensor) -> torch.Tensor:
    """The (out, n) matrix whose rows average the windows of `F.adaptive_avg_pool1d` from n to `out` cells."""
    i = torch.arange(out, device=like.device)
    start = torch.div(i * n, out, rounding_mode="floor")  # floor(i * n / out)
    end = torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")  # ceil((i + 1) * n / out)
    j = torch.arange(n, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])  # (out, n)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: torch.Tensor, out: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, out)`: (B, C, H, W) -> (B, C, out, out).

    Traced or exported, it is `P_h @ x @ P_w^T` with averaging matrices built from the input's size: PyTorch's own
    op is recorded as an `AveragePool` whose kernel is fixed by the example input, so a file exported at 224 would
    silently return wrong numbers at 193x257. The matrices reproduce PyTorch's windows (floor start, ceil end) for
    every size, smaller than `out` included.
    """
    if not cpu_kernels.tracing():
        return F.adaptive_avg_pool2d(x, out)
    rows = _pool_matrix(x.shape[-2], out, x)  # (out, H)
    cols = _pool_matrix(x.shape[-1], out, x)  # (out, W)
    return rows @ x @ cols.transpose(0, 1)


def multi_scale_deformable_attention(
    value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The sampling of multi-scale deformable attention (Zhu et al., "Deformable DETR",
    https://arxiv.org/abs/2010.04159): each query's heads take `points` bilinear samples of every level's value map
    and sum them, weighted by their attention weights.

    Args:
        value: `(B, S, heads, head_dim)`: the levels' maps, each flattened row-major, concatenated (S = sum h*w).
        shapes: `(h, w)` of each level, in order.
        locations: `(B, Q, heads, levels, points, 2)`: the samples' `(x, y)`, 0..1 across each level's map; samples
            reaching outside the map read zeros.
        weights: `(B, Q, heads, levels, points)`: their attention weights.

    Returns:
        `(B, Q, heads * head_dim)`.

    Sampling is `F.grid_sample` (bilinear, align_corners=False, zero padding), as transformers' PyTorch path, level
    by level; each level's weighted sum over its points is added into the result, so no tensor of every level's
    samples is built (transformers stacks them: 4x the memory of one level). Traced or exported, this is the graph
    (ONNX: GridSample). CPU inference takes `cpu_kernels.deformable_sampling`, equal up to rounding.
    """
    fast = cpu_kernels.deformable_sampling(value, shapes, locations, weights)
    if fast is not None:
        return fast
    B, _, heads, dim = value.shape
    Q, points = locations.shape[1], locations.shape[4]
    grids = 2 * locations - 1  # grid_sample's coordinates, -1..1
    out = None
    for level, (v, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], dim=1), shapes)):
        v = v.permute(0, 2, 3, 1).reshape(B * heads, dim, h, w)  # (B*heads, head_dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*heads, Q, points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = weights[:, :, :, level].transpose(1, 2).reshape(B * heads, 1, Q, points)
        term = (sampled * weight).sum(-1)  # (B*heads, head_dim, Q)
        out = term if out is None else out + term
    return out.view(B, heads * dim, Q).transpose(1, 2)  # type: ignore[union-attr]  # (B, Q, heads*head_dim)


class MultiscaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (Deformable DETR's): each query's heads sample `points` locations per level,
    offset from its reference point by a linear map of the query, and average them with softmax weights (another
    linear map of the query). Parameter names are the ones transformers' deformable-attention models use.

    Args:
        dim: Width of queries and values.
        heads: Heads; must divide `dim`.
        levels: Feature levels sampled.
        points: Samples per head and level.
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj, self.output_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original's init: uniform attention, head h's points 1..points steps along a ray at 2 pi h / heads."""
        angle = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        ray = torch.stack([angle.cos(), angle.sin()], -1)
        ray = ray / ray.abs().max(-1, keepdim=True).values  # (heads, 2), on the unit square
        steps = torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_((ray[:, None, None] * steps).expand(-1, self.levels, -1, -1).flatten())
        nn.init.zeros_(self.sampling_offsets.weight)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        shapes: Sequence[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`query` `(B, Q, dim)` with `reference` `(B, Q, levels, 2)` points or `(B, Q, levels, 4)` boxes, 0..1 across
        each level; `value` `(B, S, dim)`: the levels of `shapes`, flattened and concatenated; `mask` `(B, S)`, False
        on padding (None: none) -> `(B, Q, dim)` and the attention weights `(B, Q, heads, levels, points)`."""
        B, Q, dim = query.shape
        heads, levels, points = self.heads, self.levels, self.points
        v = self.value_proj(value)
        if mask is not None:
            v = v.masked_fill_(~mask[..., None], 0.0)  # padding has no value
        v = v.view(B, -1, heads, dim // heads)  # (B, S, heads, head_dim)
        offsets = self.sampling_offsets(query).view(B, Q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(B, Q, heads, levels * points).softmax(-1)
        weights = weights.view(B, Q, heads, levels, points)
        ref = reference[:, :, None, :, None]  # (B, Q, 1, levels, 1, 2 or 4)
        if reference.shape[-1] == 2:  # offsets are in pixels of each level
            size = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
            locations = ref + offsets / size[None, None, None, :, None, :]
        else:  # offsets are in eighths (points = 4) of the reference box's half size
            locations = ref[..., :2] + offsets / points * ref[..., 2:] * 0.5
        out = multi_scale_deformable_attention(v, shapes, locations, weights)
        return self.output_proj(out), weights
