"""Building blocks both model families share: activations, stochastic depth, and attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# transformers' `hidden_act` names -> functions. "gelu" is the exact (erf) GELU, as in transformers.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called `name` in transformers' configs."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown hidden_act {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


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


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over `(B, heads, N, head_dim)` queries and `(B, heads, M, head_dim)` keys/values.

    Runs `F.scaled_dot_product_attention` (fused kernels, no N x M matrix kept for backward) unless the attention
    weights are asked for; then the explicit softmax path computes and returns them `(B, heads, N, M)`.
    """
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v, weights
