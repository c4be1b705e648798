"""Pyramid Vision Transformer v2 (PVTv2) in Keras 3: one implementation for the TensorFlow and JAX back ends.

Wang et al., "PVT v2", https://arxiv.org/abs/2106.13797. The architecture, config and checkpoint names are those of
pvtkit's PyTorch PVTv2 (`pvtkit.models.pvt_v2`, transformers' names), held to it at 1e-5 by the parity tests.

Inputs are `(B, C, H, W)` pixels, as for the PyTorch model; inside, maps are channels-last `(B, h, w, C)` (the
layout Keras' convolutions take on every back end) and tokens `(B, h*w, C)` in row-major order, a reshape of the
map. Outputs are the PyTorch model's: NCHW stage maps. The overlapping patch embeddings pad symmetrically as
PyTorch's `padding=k//2` does (Keras' "same" would pad 1/2 for stride 4); SRA's reduction of a map smaller than
its window zero-pads it to one window, as pvtkit's PyTorch model does; linear SRA pools with PyTorch's adaptive
average windows (as a matrix).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import layers, ops

from ..models.pvt_v2.configuration import PvtV2Config
from ..models.pvt_v2.conversion import LAYOUTS, infer_config
from ..models.pyramid.configuration import check_pixel_values
from ..outputs import BaseModelOutput, ImageClassifierOutput
from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .layers import ACTIVATIONS, DropPath, depthwise_conv, pool_matrix
from .modeling import ClassifierTraining, KerasPreTrainedModel, Weight, dense_weights, norm_weights


class Conv(layers.Layer):
    """A PyTorch-style Conv2d on channels-last maps: symmetric zero padding `pad`, then a valid conv (depth-wise:
    stride 1 only)."""

    def __init__(
        self, filters: int, kernel: int, stride: int = 1, pad: int = 0, depthwise: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.k, self.stride, self.pad, self.depthwise = filters, kernel, stride, pad, depthwise

    def build(self, input_shape: Any) -> None:
        channels = input_shape[-1]
        shape = (self.k, self.k, channels, 1) if self.depthwise else (self.k, self.k, channels, self.filters)
        self.kernel = self.add_weight(shape=shape, initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    def call(self, x: Any) -> Any:
        if self.depthwise:  # stride 1 (the MLP's 3x3)
            return depthwise_conv(x, self.kernel, self.pad) + self.bias
        if self.pad:
            p = self.pad
            x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        return ops.conv(x, self.kernel, strides=self.stride, padding="valid") + self.bias

    def hf_weights(self, name: str) -> dict[str, Weight]:
        kind = "depthwise" if self.depthwise else "conv"
        return {f"{name}.weight": Weight(self.kernel, kind), f"{name}.bias": Weight(self.bias)}


class OverlapPatchEmbed(layers.Layer):
    """A strided conv whose kernel overlaps its neighbours, then LayerNorm: (B, H, W, C_in) -> (B, h*w, C)."""

    def __init__(self, dim: int, patch: int, stride: int, eps: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj = Conv(dim, patch, stride, pad=patch // 2)
        self.layer_norm = layers.LayerNormalization(epsilon=eps)

    def build(self, input_shape: Any) -> None:
        self.proj.build(input_shape)
        self.layer_norm.build((None, None, self.proj.filters))
        self.built = True

    def call(self, x: Any) -> tuple[Any, int, int]:
        x = self.proj(x)  # (B, h, w, C)
        h, w, C = x.shape[1], x.shape[2], x.shape[3]
        return self.layer_norm(ops.reshape(x, (-1, h * w, C))), h, w

    def hf_weights(self, prefix: str) -> dict[str, Weight]:
        return {**self.proj.hf_weights(prefix + "proj"), **norm_weights(self.layer_norm, prefix + "layer_norm")}


class SpatialReductionAttention(layers.Layer):
    """Multi-head attention whose keys and values come from a spatially reduced copy of the tokens (SRA: an
    `sr_ratio`-strided conv + LayerNorm; linear SRA: 7x7 average pooling, 1x1 conv, LayerNorm, GELU)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        sr_ratio: int,
        linear: bool,
        qkv_bias: bool,
        attn_drop: float,
        drop: float,
        eps: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.sr_ratio, self.linear = sr_ratio, linear
        self.query = layers.Dense(dim, use_bias=qkv_bias)
        self.key = layers.Dense(dim, use_bias=qkv_bias)
        self.value = layers.Dense(dim, use_bias=qkv_bias)
        self.proj = layers.Dense(dim)
        self.reduction = Conv(dim, 1) if linear else Conv(dim, sr_ratio, sr_ratio) if sr_ratio > 1 else None
        self.layer_norm = layers.LayerNormalization(epsilon=eps) if self.reduction is not None else None
        self.attention_dropout = layers.Dropout(attn_drop) if attn_drop > 0 else None
        self.dropout = layers.Dropout(drop) if drop > 0 else None

    def build(self, input_shape: Any) -> None:
        tokens = (None, None, self.dim)
        for layer in (self.query, self.key, self.value, self.proj):
            layer.build(tokens)
        if self.reduction is not None:
            self.reduction.build((None, None, None, self.dim))
            self.layer_norm.build(tokens)
        self.built = True

    def _reduce(self, x: Any, h: int, w: int) -> Any:
        """(B, h*w, C) -> the (B, M, C) tokens keys and values are computed from."""
        if self.reduction is None:
            return x
        grid = ops.reshape(x, (-1, h, w, self.dim))  # (B, h, w, C)
        if self.linear:
            rows, cols = ops.convert_to_tensor(pool_matrix(h, 7)), ops.convert_to_tensor(pool_matrix(w, 7))
            grid = ops.einsum("ih,bhwc,jw->bijc", rows, grid, cols)  # (B, 7, 7, C)
        elif h < self.sr_ratio or w < self.sr_ratio:  # smaller than one window: zero-padded to one
            r = self.sr_ratio
            grid = ops.pad(grid, [[0, 0], [0, max(0, r - h)], [0, max(0, r - w)], [0, 0]])
        grid = self.reduction(grid)  # (B, h', w', C)
        tokens = self.layer_norm(ops.reshape(grid, (-1, grid.shape[1] * grid.shape[2], self.dim)))
        return ops.gelu(tokens, approximate=False) if self.linear else tokens

    def call(self, x: Any, h: int, w: int, need_weights: bool = False, training: bool | None = None) -> tuple[Any, Any]:
        N = x.shape[1]
        reduced = self._reduce(x, h, w)
        M = reduced.shape[1]
        q = ops.reshape(self.query(x), (-1, N, self.heads, self.head_dim))  # (B, N, heads, d)
        k = ops.reshape(self.key(reduced), (-1, M, self.heads, self.head_dim))  # (B, M, heads, d)
        v = ops.reshape(self.value(reduced), (-1, M, self.heads, self.head_dim))
        weights = None
        if need_weights or (training and self.attention_dropout is not None):
            scores = ops.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(self.head_dim))  # (B, heads, N, M)
            weights = ops.softmax(scores, axis=-1)
            dropped = self.attention_dropout(weights, training=training) if self.attention_dropout else weights
            out = ops.einsum("bhqk,bkhd->bqhd", dropped, v)
        else:
            out = ops.dot_product_attention(q, k, v)  # (B, N, heads, d)
        out = self.proj(ops.reshape(out, (-1, N, self.dim)))
        return (self.dropout(out, training=training) if self.dropout is not None else out), weights

    def hf_weights(self, prefix: str) -> dict[str, Weight]:
        found = {
            **dense_weights(self.query, prefix + "query"),
            **dense_weights(self.key, prefix + "key"),
            **dense_weights(self.value, prefix + "value"),
            **dense_weights(self.proj, prefix + "proj"),
        }
        if self.reduction is not None:
            found.update(self.reduction.hf_weights(prefix + "spatial_reduction"))
            found.update(norm_weights(self.layer_norm, prefix + "layer_norm"))
        return found


class Block(layers.Layer):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) with the MLP's depth-wise 3x3 conv; stochastic
    depth on each branch."""

    def __init__(
        self,
        dim: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        linear: bool,
        qkv_bias: bool,
        act: str,
        drop: float,
        attn_drop: float,
        drop_path: float,
        eps: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        hidden = int(dim * mlp_ratio)
        self.hidden, self.linear, self.act = hidden, linear, ACTIVATIONS[act]
        self.layer_norm_1 = layers.LayerNormalization(epsilon=eps)
        self.attention = SpatialReductionAttention(dim, heads, sr_ratio, linear, qkv_bias, attn_drop, drop, eps)
        self.layer_norm_2 = layers.LayerNormalization(epsilon=eps)
        self.dense1 = layers.Dense(hidden)
        self.dwconv = Conv(hidden, 3, 1, pad=1, depthwise=True)
        self.dense2 = layers.Dense(dim)
        self.dropout = layers.Dropout(drop) if drop > 0 else None
        self.drop_path = DropPath(drop_path)

    def build(self, input_shape: Any) -> None:
        tokens = (None, None, input_shape[-1])
        for layer in (self.layer_norm_1, self.attention, self.layer_norm_2, self.dense1):
            layer.build(tokens)
        self.dwconv.build((None, None, None, self.hidden))
        self.dense2.build((None, None, self.hidden))
        self.built = True

    def _drop(self, x: Any, training: bool | None) -> Any:
        return self.dropout(x, training=training) if self.dropout is not None else x

    def call(self, x: Any, h: int, w: int, need_weights: bool = False, training: bool | None = None) -> tuple[Any, Any]:
        attn, weights = self.attention(self.layer_norm_1(x), h=h, w=w, need_weights=need_weights, training=training)
        x = x + self.drop_path(attn, training=training)
        z = self.dense1(self.layer_norm_2(x))  # (B, N, hidden)
        z = ops.relu(z) if self.linear else z
        z = self.dwconv(ops.reshape(z, (-1, h, w, self.hidden)))  # (B, h, w, hidden)
        z = self._drop(self.act(ops.reshape(z, (-1, h * w, self.hidden))), training)
        x = x + self.drop_path(self._drop(self.dense2(z), training), training=training)
        return x, weights

    def hf_weights(self, prefix: str) -> dict[str, Weight]:
        return {
            **norm_weights(self.layer_norm_1, prefix + "layer_norm_1"),
            **self.attention.hf_weights(prefix + "attention."),
            **norm_weights(self.layer_norm_2, prefix + "layer_norm_2"),
            **dense_weights(self.dense1, prefix + "mlp.dense1"),
            **self.dwconv.hf_weights(prefix + "mlp.dwconv.dwconv"),
            **dense_weights(self.dense2, prefix + "mlp.dense2"),
        }


class PvtV2Encoder(layers.Layer):
    """The stages (`encoder.layers.{i}`: patch embedding, blocks, LayerNorm); each stage's output a map."""

    def __init__(self, config: PvtV2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c, eps = config, config.layer_norm_eps
        self.config = c
        total = sum(c.depths)
        rates = [c.drop_path_rate * j / max(total - 1, 1) for j in range(total)]
        # Flat lists (Keras tracks the layers of a list attribute): stage i's blocks are blocks[starts[i]:starts[i+1]].
        self.starts = [sum(c.depths[:i]) for i in range(c.num_encoder_blocks + 1)]
        self.embeds = [
            OverlapPatchEmbed(c.hidden_sizes[i], c.patch_sizes[i], c.strides[i], eps)
            for i in range(c.num_encoder_blocks)
        ]
        self.blocks = [
            Block(
                c.hidden_sizes[i],
                c.num_attention_heads[i],
                c.sr_ratios[i],
                c.mlp_ratios[i],
                c.linear_attention,
                c.qkv_bias,
                c.hidden_act,
                c.hidden_dropout_prob,
                c.attention_probs_dropout_prob,
                rates[self.starts[i] + j],
                eps,
            )
            for i in range(c.num_encoder_blocks)
            for j in range(c.depths[i])
        ]
        self.norms = [layers.LayerNormalization(epsilon=eps) for _ in range(c.num_encoder_blocks)]

    def build(self, input_shape: Any) -> None:
        c = self.config
        for i in range(c.num_encoder_blocks):
            embed, blocks, norm = self.stage(i)
            embed.build((None, None, None, c.num_channels if i == 0 else c.hidden_sizes[i - 1]))
            for layer in (*blocks, norm):
                layer.build((None, None, c.hidden_sizes[i]))
        self.built = True

    def stage(self, i: int) -> tuple[OverlapPatchEmbed, list[Block], Any]:
        return self.embeds[i], self.blocks[self.starts[i] : self.starts[i + 1]], self.norms[i]

    def call(self, pixel_values: Any, need_weights: bool = False, training: bool | None = None) -> tuple[list, list]:
        """Returns the stage maps (B, C, h, w) and, per stage, each block's attention weights (or Nones)."""
        x = ops.transpose(pixel_values, (0, 2, 3, 1))  # (B, H, W, C): channels-last inside
        maps, attentions = [], []
        for i in range(len(self.embeds)):
            embed, blocks, norm = self.stage(i)
            x, h, w = embed(x)  # (B, h*w, C)
            weights = []
            for block in blocks:
                x, a = block(x, h=h, w=w, need_weights=need_weights, training=training)
                weights.append(a)
            x = ops.reshape(norm(x), (-1, h, w, x.shape[-1]))  # (B, h, w, C)
            maps.append(x)
            attentions.append(tuple(weights))
        return maps, attentions

    def hf_weights(self, prefix: str) -> dict[str, Weight]:
        found: dict[str, Weight] = {}
        for i in range(len(self.embeds)):
            embed, blocks, norm = self.stage(i)
            stage = f"{prefix}encoder.layers.{i}."
            found.update(embed.hf_weights(stage + "patch_embedding."))
            for j, block in enumerate(blocks):
                found.update(block.hf_weights(f"{stage}blocks.{j}."))
            found.update(norm_weights(norm, stage + "layer_norm"))
        return found


class PvtV2PreTrainedModel(KerasPreTrainedModel):
    """Shared plumbing of the Keras PVTv2 models: config class, checkpoint layouts, the forward's flags."""

    config_class = PvtV2Config
    base_model_prefix = "pvt_v2"
    layouts = LAYOUTS
    infer_config = staticmethod(infer_config)
    processor_defaults = {"image_mean": list(IMAGENET_DEFAULT_MEAN), "image_std": list(IMAGENET_DEFAULT_STD)}

    def __call__(self, pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
        # Checked before Keras' __call__, which would wrap the message in its own report of the failing layer.
        if hasattr(pixel_values, "shape"):
            check_pixel_values(tuple(pixel_values.shape), self.config)
        return super().__call__(pixel_values, *args, **kwargs)

    def _encode(
        self,
        pixel_values: Any,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        training: bool | None,
    ) -> tuple[Any, Any, Any]:
        c = self.config
        keep_attn = c.output_attentions if output_attentions is None else output_attentions
        keep_hidden = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        maps, attentions = self.encoder(pixel_values, need_weights=keep_attn, training=training)
        hidden = tuple(ops.transpose(m, (0, 3, 1, 2)) for m in maps) if keep_hidden else None  # NCHW, as PyTorch's
        return maps[-1], hidden, (tuple(attentions) if keep_attn else None)

    def dummy_inputs(self) -> np.ndarray:
        return np.zeros((1, self.config.num_channels, 64, 64), dtype=np.float32)

    def image_size_for_export(self) -> tuple[int, int]:
        size = self.config.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class PvtV2Model(PvtV2PreTrainedModel):
    """The PVTv2 encoder: `last_hidden_state` is the last stage's NCHW map `(B, C, H/32, W/32)`; `hidden_states`
    every stage's map, `attentions` nested per stage, when asked for.

    Args:
        config: The architecture.
    """

    def __init__(self, config: PvtV2Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.encoder = PvtV2Encoder(config)

    def call(
        self,
        pixel_values: Any,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        training: bool | None = None,
    ) -> BaseModelOutput:
        last, hidden, attentions = self._encode(pixel_values, output_attentions, output_hidden_states, training)
        last = hidden[-1] if hidden else ops.transpose(last, (0, 3, 1, 2))
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden, attentions=attentions)

    def build(self, input_shape: Any) -> None:
        self.encoder.build(input_shape)
        self.built = True

    def hf_weights(self) -> dict[str, Weight]:
        return self.encoder.hf_weights("")


class PvtV2ForImageClassification(ClassifierTraining, PvtV2PreTrainedModel):
    """PVTv2 with a linear classifier on the mean of the last stage's tokens (`logits` `(B, num_labels)`).

    Trains the Keras way, as `pvtkit.keras.ViTForImageClassification` does (the loss and metrics see the logits).

    Args:
        config: The architecture; `num_labels` sizes the head.
    """

    head_prefixes = ("classifier.",)

    def __init__(self, config: PvtV2Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.encoder = PvtV2Encoder(config)
        self.classifier = layers.Dense(config.num_labels) if config.num_labels > 0 else None

    def call(
        self,
        pixel_values: Any,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        training: bool | None = None,
    ) -> ImageClassifierOutput:
        last, hidden, attentions = self._encode(pixel_values, output_attentions, output_hidden_states, training)
        pooled = ops.mean(last, axis=(1, 2))  # (B, C)
        logits = self.classifier(pooled) if self.classifier is not None else pooled
        return ImageClassifierOutput(logits=logits, hidden_states=hidden, attentions=attentions)

    def build(self, input_shape: Any) -> None:
        self.encoder.build(input_shape)
        self._build_classifier(self.config.hidden_sizes[-1])
        self.built = True

    def hf_weights(self) -> dict[str, Weight]:
        return {**self.encoder.hf_weights("pvt_v2."), **self._classifier_weights()}
