"""What pvtkit's Keras families share: the activations by transformers' names, stochastic depth, PyTorch's
adaptive average pooling as a matrix, and the depth-wise convolution written the way each back end runs fastest."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import keras
import numpy as np
from keras import ops


def _gelu_tanh(x: Any) -> Any:
    return ops.gelu(x, approximate=True)


# transformers' `hidden_act` names (`pvtkit.config.ACTIVATION_NAMES`) -> Keras ops; "gelu" is the exact erf GELU.
ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "gelu": lambda x: ops.gelu(x, approximate=False),
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": lambda x: x * ops.sigmoid(1.702 * x),
    "relu": ops.relu,
    "silu": ops.silu,
    "swish": ops.silu,
    "tanh": ops.tanh,
    "sigmoid": ops.sigmoid,
}


class DropPath(keras.layers.Layer):
    """Stochastic depth: while training, drop the whole residual branch for a random subset of samples."""

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, x: Any, training: bool | None = None) -> Any:
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))
        return x / keep * mask


@lru_cache(maxsize=64)
def pool_matrix(n: int, out: int) -> np.ndarray:
    """`(out, n)` weights of PyTorch's 1-D adaptive average pooling: window `i` is `[floor(i n / out),
    ceil((i + 1) n / out))`, averaged (sizes smaller than `out` included)."""
    matrix = np.zeros((out, n), dtype=np.float32)
    for i in range(out):
        start, end = (i * n) // out, -((-(i + 1) * n) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def depthwise_conv(x: Any, kernel: Any, pad: int) -> Any:
    """A stride-1 depth-wise conv of channels-last `x` `(B, H, W, C)` with `kernel` `(k, k, C, 1)`, zero-padded by
    `pad` on every side. On JAX it is written as k*k shifted multiply-adds, which XLA fuses into one loop: XLA's CPU
    grouped convolution is several times slower (PVTv2-B2 batch 16, 2 cores: 9.1 s -> 1.6 s a batch). TensorFlow's
    own depth-wise kernel is the faster one there (1.45 s against 2.75 s), so it keeps it, as does eager JAX, where
    each op is dispatched (and compiled for its shape) on its own."""
    if pad:
        x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    if keras.backend.backend() != "jax" or not _traced(x):  # eager JAX: one op dispatch beats k*k of them
        return ops.depthwise_conv(x, kernel, strides=1, padding="valid")
    k = kernel.shape[0]
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = None
    for i in range(k):
        for j in range(k):
            term = x[:, i : i + h, j : j + w, :] * kernel[i, j, :, 0]
            out = term if out is None else out + term
    return out


def _traced(x: Any) -> bool:
    """Is `x` a JAX tracer (inside `jit`, Keras' compiled `fit`/`predict`, or an export)?"""
    import jax

    return isinstance(x, jax.core.Tracer)
