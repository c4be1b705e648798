"""Vision Transformer (ViT) in Keras 3: one implementation for the TensorFlow and JAX back ends.

Dosovitskiy et al., "An Image is Worth 16x16 Words", https://arxiv.org/abs/2010.11929. The architecture, the config
and the checkpoint names are those of pvtkit's PyTorch ViT (`pvtkit.models.vit`), which are transformers'; the
parity tests hold the two to 1e-5 on the same weights.

Inputs are `(B, C, H, W)` pixels, as for the PyTorch model and transformers' TF and Flax classes. Layout: the patch
projection (a strided conv in PyTorch) is a reshape into patches and one matmul, exact and the same on every back
end; tokens are `(B, 1 + h*w, C)`, [CLS] first, patches row-major; attention runs on `(B, N, heads, head_dim)`
through `keras.ops.dot_product_attention` (explicit softmax only when the weights are asked for or dropped out).
Position embeddings for another grid are resampled exactly as PyTorch's bicubic `interpolate` (a = -0.75,
align_corners=False, border clamped), written as two small interpolation matrices fixed at trace time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from ..config import pair
from ..models.vit.configuration import ViTConfig, check_pixel_values
from ..models.vit.conversion import LAYOUTS, infer_config
from ..outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from .layers import ACTIVATIONS
from .modeling import ClassifierTraining, KerasPreTrainedModel, Weight, dense_weights, norm_weights


@lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`(n_out, n_in)` weights of PyTorch's 1-D bicubic resize (`mode="bicubic", align_corners=False`, a target
    size): source `(i + 0.5) * n_in / n_out - 0.5`, Keys' cubic with a = -0.75, indices clamped at the border.
    Computed in float32 as PyTorch does."""
    A = np.float32(-0.75)

    def near(x: np.float32) -> np.float32:  # |x| <= 1
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x: np.float32) -> np.float32:  # 1 < |x| < 2
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    scale = np.float32(n_in) / np.float32(n_out)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        real = scale * (np.float32(i) + np.float32(0.5)) - np.float32(0.5)
        start = int(np.floor(real))
        t = np.float32(real - start)
        for j, c in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[i, min(max(start - 1 + j, 0), n_in - 1)] += c
    return matrix


class Embeddings(layers.Layer):
    """Patches embedded by one matmul, [CLS] in front, position embeddings (resampled for another grid) added."""

    def __init__(
        self, channels: int, dim: int, image_size: tuple[int, int], patch: tuple[int, int], drop: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.channels, self.dim, self.patch = channels, dim, patch
        self.grid = (image_size[0] // patch[0], image_size[1] // patch[1])
        self.dropout = layers.Dropout(drop) if drop > 0 else None

    def build(self, input_shape: Any = None) -> None:
        ph, pw = self.patch
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.cls_token = self.add_weight(shape=(1, 1, self.dim), initializer=init, name="cls_token")
        self.position_embeddings = self.add_weight(
            shape=(1, 1 + self.grid[0] * self.grid[1], self.dim), initializer=init, name="position_embeddings"
        )
        self.kernel = self.add_weight(shape=(self.channels * ph * pw, self.dim), initializer=init, name="kernel")
        self.bias = self.add_weight(shape=(self.dim,), initializer="zeros", name="bias")

    def positions(self, h: int, w: int) -> Any:
        """`(1, 1 + h*w, C)` position embeddings for an `h x w` patch grid."""
        if (h, w) == self.grid:
            return self.position_embeddings
        gh, gw = self.grid
        cls_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        patch_pos = ops.reshape(patch_pos, (gh, gw, self.dim))  # (gh, gw, C)
        rows, cols = ops.convert_to_tensor(bicubic_matrix(gh, h)), ops.convert_to_tensor(bicubic_matrix(gw, w))
        patch_pos = ops.einsum("ih,hwc,jw->ijc", rows, patch_pos, cols)  # (h, w, C)
        return ops.concatenate([cls_pos, ops.reshape(patch_pos, (1, h * w, self.dim))], axis=1)

    def call(self, pixel_values: Any, training: bool | None = None) -> Any:
        _, C, H, W = pixel_values.shape
        (ph, pw) = self.patch
        h, w = H // ph, W // pw
        x = ops.reshape(pixel_values, (-1, C, h, ph, w, pw))
        x = ops.transpose(x, (0, 2, 4, 1, 3, 5))  # (B, h, w, C, ph, pw)
        x = ops.matmul(ops.reshape(x, (-1, h * w, C * ph * pw)), self.kernel) + self.bias  # (B, h*w, dim)
        cls = ops.zeros_like(x[:, :1]) + self.cls_token  # (B, 1, dim), batch size symbolic or not
        x = ops.concatenate([cls, x], axis=1) + self.positions(h, w)  # (B, 1 + h*w, dim)
        return self.dropout(x, training=training) if self.dropout is not None else x

    def hf_weights(self, prefix: str) -> dict[str, Weight]:
        ph, pw = self.patch
        proj = f"{prefix}patch_embeddings.projection."
        return {
            f"{prefix}cls_token": Weight(self.cls_token),
            f"{prefix}position_embeddings": Weight(self.position_embeddings),
            proj + "weight": Weight(self.kernel, "patch", (self.dim, self.channels, ph, pw)),
            proj + "bias": Weight(self.bias),
        }


class EncoderLayer(layers.Layer):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x)); dropout closes each branch."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        act: str,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        eps: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.heads, self.head_dim, self.attn_drop = heads, dim // heads, attn_drop
        self.layernorm_before = layers.LayerNormalization(epsilon=eps)
        self.query = layers.Dense(dim, use_bias=qkv_bias)
        self.key = layers.Dense(dim, use_bias=qkv_bias)
        self.value = layers.Dense(dim, use_bias=qkv_bias)
        self.proj = layers.Dense(dim)
        self.layernorm_after = layers.LayerNormalization(epsilon=eps)
        self.intermediate = layers.Dense(mlp_dim)
        self.out = layers.Dense(dim)
        self.act = ACTIVATIONS[act]
        self.dropout = layers.Dropout(drop) if drop > 0 else None
        self.attention_dropout = layers.Dropout(attn_drop) if attn_drop > 0 else None

    def build(self, input_shape: Any) -> None:  # every variable from the shapes alone, no forward needed
        tokens = (None, None, input_shape[-1])
        for layer in (
            self.layernorm_before,
            self.query,
            self.key,
            self.value,
            self.proj,
            self.layernorm_after,
            self.intermediate,
        ):
            layer.build(tokens)
        self.out.build((None, None, self.intermediate.units))
        self.built = True

    def _drop(self, x: Any, training: bool | None) -> Any:
        return self.dropout(x, training=training) if self.dropout is not None else x

    def call(self, x: Any, need_weights: bool = False, training: bool | None = None) -> tuple[Any, Any]:
        N, C = x.shape[1], x.shape[2]
        h = self.layernorm_before(x)
        q, k, v = (
            ops.reshape(proj(h), (-1, N, self.heads, self.head_dim)) for proj in (self.query, self.key, self.value)
        )
        weights = None
        if need_weights or (training and self.attention_dropout is not None):
            scores = ops.einsum("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(self.head_dim))  # (B, heads, N, N)
            weights = ops.softmax(scores, axis=-1)
            dropped = self.attention_dropout(weights, training=training) if self.attention_dropout else weights
            attn = ops.einsum("bhqk,bkhd->bqhd", dropped, v)  # (B, N, heads, head_dim)
        else:
            attn = ops.dot_product_attention(q, k, v)  # (B, N, heads, head_dim)
        x = x + self._drop(self.proj(ops.reshape(attn, (-1, N, C))), training)
        x = x + self._drop(self.out(self.act(self.intermediate(self.layernorm_after(x)))), training)
        return x, weights

    def hf_weights(self, prefix: str) -> dict[str, Weight]:
        return {
            **norm_weights(self.layernorm_before, prefix + "layernorm_before"),
            **dense_weights(self.query, prefix + "attention.attention.query"),
            **dense_weights(self.key, prefix + "attention.attention.key"),
            **dense_weights(self.value, prefix + "attention.attention.value"),
            **dense_weights(self.proj, prefix + "attention.output.dense"),
            **norm_weights(self.layernorm_after, prefix + "layernorm_after"),
            **dense_weights(self.intermediate, prefix + "intermediate.dense"),
            **dense_weights(self.out, prefix + "output.dense"),
        }


class ViTEncoder(layers.Layer):
    """Embeddings, the transformer layers, the final LayerNorm and (optionally) the [CLS] pooler.

    Args:
        config: The architecture.
        add_pooling_layer: Add the dense + activation pooler on the [CLS] token (`pooler_output`).
    """

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = config
        self.config = c
        self.image_size, self.patch_size = pair(c.image_size), pair(c.patch_size)
        self.embeddings = Embeddings(
            c.num_channels, c.hidden_size, self.image_size, self.patch_size, c.hidden_dropout_prob
        )
        self.layer = [
            EncoderLayer(
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.hidden_act,
                c.qkv_bias,
                c.hidden_dropout_prob,
                c.attention_probs_dropout_prob,
                c.layer_norm_eps,
            )
            for _ in range(c.num_hidden_layers)
        ]
        self.layernorm = layers.LayerNormalization(epsilon=c.layer_norm_eps)
        self.pooler = layers.Dense(c.pooler_output_size) if add_pooling_layer else None
        self.pooler_act = ACTIVATIONS[c.pooler_act]

    def build(self, input_shape: Any) -> None:
        tokens = (None, None, self.config.hidden_size)
        self.embeddings.build(input_shape)
        for layer in self.layer:
            layer.build(tokens)
        self.layernorm.build(tokens)
        if self.pooler is not None:
            self.pooler.build((None, self.config.hidden_size))
        self.built = True

    def check_inputs(self, shape: tuple, interpolate: bool) -> None:
        """The PyTorch model's checks and messages, on the static shape (which must know height and width)."""
        check_pixel_values(shape, self.config, interpolate, sizes=False)
        if shape[2] is None or shape[3] is None:
            (ih, iw), C = self.image_size, self.config.num_channels
            raise ValueError(
                f"pixel_values needs a static height and width, got shape {tuple(shape)}; trace or export "
                f"the model at a fixed size (e.g. (None, {C}, {ih}, {iw}))"
            )
        check_pixel_values(shape, self.config, interpolate)

    def call(
        self,
        pixel_values: Any,
        interpolate: bool = False,
        keep_hidden: bool = False,
        keep_attentions: bool = False,
        training: bool | None = None,
    ) -> tuple[Any, Any, Any, Any]:
        """Returns (final-layernormed tokens, pooled or None, hidden states or None, attentions or None)."""
        self.check_inputs(tuple(pixel_values.shape), interpolate)
        x = self.embeddings(pixel_values, training=training)
        hidden_states, attentions = [x], []
        for layer in self.layer:
            x, weights = layer(x, need_weights=keep_attentions, training=training)
            hidden_states.append(x)
            attentions.append(weights)
        x = self.layernorm(x)
        pooled = self.pooler_act(self.pooler(x[:, 0])) if self.pooler is not None else None
        return (
            x,
            pooled,
            tuple(hidden_states) if keep_hidden else None,
            tuple(attentions) if keep_attentions else None,
        )

    def hf_weights(self, prefix: str = "") -> dict[str, Weight]:
        found = self.embeddings.hf_weights(prefix + "embeddings.")
        for i, layer in enumerate(self.layer):
            found.update(layer.hf_weights(f"{prefix}encoder.layer.{i}."))
        found.update(norm_weights(self.layernorm, prefix + "layernorm"))
        if self.pooler is not None:
            found.update(dense_weights(self.pooler, prefix + "pooler.dense"))
        return found


class ViTPreTrainedModel(KerasPreTrainedModel):
    """Shared plumbing of the Keras ViT models: config class, checkpoint layouts, the flags' defaults."""

    config_class = ViTConfig
    base_model_prefix = "vit"
    layouts = LAYOUTS
    infer_config = staticmethod(infer_config)

    def _flag(self, value: bool | None, name: str) -> bool:
        return bool(getattr(self.config, name) if value is None else value)

    def __call__(self, pixel_values: Any, *args: Any, **kwargs: Any) -> Any:
        # Checked before Keras' __call__, which would wrap the message in its own report of the failing layer.
        interpolate = kwargs.get("interpolate_pos_encoding", args[0] if args else None)
        if hasattr(pixel_values, "shape"):
            self.vit.check_inputs(tuple(pixel_values.shape), self._flag(interpolate, "interpolate_pos_encoding"))
        return super().__call__(pixel_values, *args, **kwargs)

    def _encode(
        self,
        pixel_values: Any,
        interpolate: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        training: bool | None,
    ) -> tuple[Any, Any, Any, Any]:
        return self.vit(
            pixel_values,
            interpolate=self._flag(interpolate, "interpolate_pos_encoding"),
            keep_hidden=self._flag(output_hidden_states, "output_hidden_states"),
            keep_attentions=self._flag(output_attentions, "output_attentions"),
            training=training,
        )

    def dummy_inputs(self) -> np.ndarray:
        h, w = pair(self.config.image_size)
        return np.zeros((1, self.config.num_channels, h, w), dtype=np.float32)

    def image_size_for_export(self) -> tuple[int, int]:
        return pair(self.config.image_size)


class ViTModel(ViTPreTrainedModel):
    """The ViT encoder: `last_hidden_state` `(B, 1 + h*w, C)` (final-layernormed), `pooler_output`, and on request
    `hidden_states` (the embeddings and every layer's output) and `attentions`, as transformers' `TFViTModel`.

    Args:
        config: The architecture.
        add_pooling_layer: Add the dense + tanh pooler on the [CLS] token.
    """

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.vit = ViTEncoder(config, add_pooling_layer)

    def call(
        self,
        pixel_values: Any,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        training: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Encode `pixel_values` `(B, num_channels, H, W)`; `interpolate_pos_encoding` lets any multiple of the
        patch size run (default: the config's)."""
        x, pooled, hidden, attn = self._encode(
            pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, training
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled, hidden_states=hidden, attentions=attn
        )

    def build(self, input_shape: Any) -> None:
        self.vit.build(input_shape)
        self.built = True

    def hf_weights(self) -> dict[str, Weight]:
        return self.vit.hf_weights()


class ViTForImageClassification(ClassifierTraining, ViTPreTrainedModel):
    """ViT with a linear classifier on the final-layernormed [CLS] token (`logits` `(B, num_labels)`).

    Trains the Keras way: `compile(optimizer, loss=..., metrics=...)` then `fit(pixels, labels)`; the loss and
    metrics see the logits. Compiled without a loss, it uses transformers' loss for the config's problem type
    (cross-entropy for single-label classification).

    Args:
        config: The architecture; `num_labels` sizes the head.
    """

    head_prefixes = ("classifier.",)

    def __init__(self, config: ViTConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.vit = ViTEncoder(config, add_pooling_layer=False)
        self.classifier = layers.Dense(config.num_labels) if config.num_labels > 0 else None

    def call(
        self,
        pixel_values: Any,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        training: bool | None = None,
    ) -> ImageClassifierOutput:
        x, _, hidden, attn = self._encode(
            pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, training
        )
        cls = x[:, 0]  # (B, C)
        logits = self.classifier(cls) if self.classifier is not None else cls
        return ImageClassifierOutput(logits=logits, hidden_states=hidden, attentions=attn)

    def build(self, input_shape: Any) -> None:
        self.vit.build(input_shape)
        self._build_classifier(self.config.hidden_size)
        self.built = True

    def hf_weights(self) -> dict[str, Weight]:
        return {**self.vit.hf_weights("vit."), **self._classifier_weights()}
