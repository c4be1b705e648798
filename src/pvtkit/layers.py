"""Building blocks every model family shares: activations, stochastic depth, attention, the position-embedding
resize, the token layout, and adaptive pooling written so that an export keeps it dynamic. The heavy ops themselves
go through `cpu_kernels`, which decides their fast paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
