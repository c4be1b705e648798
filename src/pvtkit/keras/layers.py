"""What pvtkit's Keras families share: the activations by transformers' names, stochastic depth, and PyTorch's
adaptive average pooling as a matrix."""

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
