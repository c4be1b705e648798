"""Building blocks both model families share: activations, stochastic depth, attention, and the heavy-op helpers.

`linear`, `conv` and `attend` run the matmul-like ops. They are plain calls, except under CPU bf16 autocast on a
CPU without bf16 matrix instructions (no AVX512-BF16 / AMX, e.g. AVX2-only x86): there PyTorch's bf16 kernels fall
back to slow generic loops (a depth-wise conv runs one channel at a time), 10-20x slower than fp32. The helpers then
compute what a bf16 kernel computes, the product of bf16-rounded operands accumulated in fp32 and rounded to a bf16
result, on the fp32 units. Outputs are bf16 as under autocast; only the speed differs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """`16` -> `(16, 16)`; `(224, 320)` stays (height, width)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


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
        if emulating_bf16(q):
            q, k, v = rounded_bf16(q), rounded_bf16(k), rounded_bf16(v)
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # type: ignore[arg-type]
            return out.to(torch.bfloat16), None
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v, weights


# Tensors up to about this size stay in the CPU's caches; the eager CPU inference paths work in pieces this big.
SMALL_BYTES = 4 << 20


def tracing() -> bool:
    """Whether the forward is being traced, compiled or exported rather than run eagerly."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """Eager fp32 CPU inference without autograd: where the piecewise and fused fast paths may run."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() and not tracing()
        and not emulating_bf16(x)
    )  # fmt: skip


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 matmul/conv kernels for this CPU (AVX512-BF16, AMX, or Arm BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: leave autocast alone


def emulating_bf16(x: torch.Tensor) -> bool:
    """True under CPU bf16 autocast on a CPU without native bf16 kernels, for a float32/bf16 CPU tensor `x`."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not _cpu_has_native_bf16()
    )


def rounded_bf16(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` rounded to bf16 and held in fp32 (exact: every bf16 value is an fp32 value)."""
    if t is None:
        return None
    return t.float() if t.dtype == torch.bfloat16 else t.to(torch.bfloat16).float()


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)`; under emulated bf16 autocast, bf16 operands on fp32 units (see the module docstring)."""
    if not emulating_bf16(x):
        return layer(x)
    with torch.autocast("cpu", enabled=False):
        return F.linear(rounded_bf16(x), rounded_bf16(layer.weight), rounded_bf16(layer.bias)).to(torch.bfloat16)


def conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """`layer(x)` for an `nn.Conv2d`; under emulated bf16 autocast, bf16 operands on fp32 units."""
    if not emulating_bf16(x):
        return layer(x)
    weight, bias = rounded_bf16(layer.weight), rounded_bf16(layer.bias)
    with torch.autocast("cpu", enabled=False):
        return layer._conv_forward(rounded_bf16(x), weight, bias).to(torch.bfloat16)  # type: ignore[arg-type]
