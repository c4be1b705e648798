"""ViT's configuration, published variants and input check: no PyTorch, shared by the PyTorch models
(`pvtkit.models.vit.modeling`) and the Keras ones (`pvtkit.keras`). The checkpoint layouts are in `conversion.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import PretrainedConfig, check_activation
from ...config import pair as _pair

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class ViTConfig(PretrainedConfig):
    """Configuration of a ViT model; field names and defaults are transformers' (the defaults are ViT-B/16 at 224).

    Args:
        hidden_size: Width of the token embeddings; must be divisible by `num_attention_heads`.
        num_hidden_layers: Number of transformer layers.
        num_attention_heads: Attention heads per layer.
        intermediate_size: Hidden width of each layer's MLP.
        hidden_act: MLP activation (transformers' names: "gelu" is the exact erf GELU).
        hidden_dropout_prob: Dropout on the embeddings and after the attention projection and the MLP.
        attention_probs_dropout_prob: Dropout on the attention weights.
        initializer_range: Std of the truncated normal init of Linear/Conv weights and of the [CLS] and position
            embeddings.
        layer_norm_eps: Epsilon of every LayerNorm (1e-12 as in transformers; timm's weights use 1e-6).
        image_size: Input size the position embeddings are laid out for, an int or (height, width).
        patch_size: Side of the square patches, an int or (height, width); must divide `image_size`.
        num_channels: Input channels.
        qkv_bias: Bias in the query/key/value projections.
        encoder_stride: Upsampling factor of the masked-image-modeling decoder; must equal `patch_size` there.
        pooler_output_size: Width of the pooler's output; None means `hidden_size`.
        pooler_act: Activation of the pooler ("tanh").
        interpolate_pos_encoding: pvtkit field: the default of the forward argument of the same name, so a training
            loop or an exported model can run at other resolutions without passing it on every call. transformers
            keeps the key on load and ignores it.
        attn_implementation: "sdpa" (fused kernels, the default) or "eager" (explicit softmax). As in transformers,
            it is a run-time choice and is not written to `config.json`. Attention weights, when asked for, always
            come from the eager path.
        **kwargs: The common fields of `PretrainedConfig` (num_labels, id2label, problem_type, ...).
    """

    model_type = "vit"
    title = "ViT"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        image_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        num_channels: int = 3,
        qkv_bias: bool = True,
        encoder_stride: int = 16,
        pooler_output_size: int | None = None,
        pooler_act: str = "tanh",
        interpolate_pos_encoding: bool = False,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.intermediate_size = int(intermediate_size)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_probs_dropout_prob = float(attention_probs_dropout_prob)
        self.initializer_range = float(initializer_range)
        self.layer_norm_eps = float(layer_norm_eps)
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)
        self.patch_size = list(patch_size) if isinstance(patch_size, (list, tuple)) else int(patch_size)
        self.num_channels = int(num_channels)
        self.qkv_bias = bool(qkv_bias)
        self.encoder_stride = int(encoder_stride)
        self.pooler_output_size = int(pooler_output_size) if pooler_output_size else self.hidden_size
        self.pooler_act = pooler_act
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.attn_implementation = attn_implementation  # type: ignore[assignment]  # the setter validates
        self._validate()

    @property
    def attn_implementation(self) -> str:
        """ "sdpa" or "eager"; kept out of `config.json` (underscore attribute), as transformers does."""
        return self._attn_implementation or "sdpa"

    @attn_implementation.setter
    def attn_implementation(self, value: str | None) -> None:
        if value is not None and value not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"ViTConfig: attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {value!r}")
        self._attn_implementation = value

    def _validate(self) -> None:
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_channels",
            "encoder_stride",
            "pooler_output_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ViTConfig: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ViTConfig: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; expected a multiple of {self.num_attention_heads}"
            )
        (ih, iw), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
        if min(ih, iw, ph, pw) <= 0 or ih % ph or iw % pw:
            raise ValueError(
                f"ViTConfig: patch_size {self.patch_size} must divide image_size {self.image_size}; "
                f"expected an image side that is a positive multiple of the patch side"
            )
        check_activation(self.hidden_act)
        check_activation(self.pooler_act, "pooler_act")

    def copy(self, **changes: Any) -> ViTConfig:
        changes.setdefault("attn_implementation", self._attn_implementation)  # not in to_dict(), so carry it over
        return super().copy(**changes)

    variant_prefixes = ("vit_",)


def check_pixel_values(shape: Sequence[Any], config: ViTConfig, interpolate: bool, sizes: bool = True) -> None:
    """Raise the ViT models' ValueError for `pixel_values` of `shape`: rank and channels; with `sizes`, a size
    that is not the config's (without `interpolate`) or not a multiple of the patch. One rule and one wording for
    the PyTorch and the Keras models."""
    C, shape = config.num_channels, tuple(shape)
    if len(shape) != 4 or shape[1] != C:
        raise ValueError(f"pixel_values must have shape (batch, {C}, height, width), got {shape}")
    if not sizes:
        return
    H, W = shape[2:]
    (ph, pw), (ih, iw) = _pair(config.patch_size), _pair(config.image_size)
    if not interpolate and (H, W) != (ih, iw):
        raise ValueError(
            f"Input image size ({H}*{W}) doesn't match model ({ih}*{iw}): expected {ih}x{iw}, "
            "or pass interpolate_pos_encoding=True (or set it in the config)"
        )
    if H % ph or W % pw:
        raise ValueError(
            f"Input image size ({H}*{W}) is not a multiple of the patch size ({ph}*{pw}); "
            "expected height and width divisible by it"
        )


# ---------------------------------------------------------------------------------------------------------------
# The published variants. Widths and depths: ViT-B/L/H from the ViT paper (Table 1); Ti and S from DeiT
# (arXiv:2012.12877) and "How to train your ViT?" (AugReg, arXiv:2106.10270), whose weights timm and the Hub carry.
# Only the (patch, resolution) pairs with released weights are listed; ViT-H exists only as H/14 at 224.

_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768},
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "huge": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "intermediate_size": 5120},
}
_PUBLISHED = (
    ("tiny", 16, 224),
    ("tiny", 16, 384),
    ("small", 16, 224),
    ("small", 16, 384),
    ("small", 32, 224),
    ("small", 32, 384),
    ("base", 16, 224),
    ("base", 16, 384),
    ("base", 32, 224),
    ("base", 32, 384),
    ("large", 16, 224),
    ("large", 16, 384),
    ("large", 32, 224),
    ("large", 32, 384),
    ("huge", 14, 224),
)
VARIANTS: dict[str, dict[str, Any]] = {
    f"{size}_patch{patch}_{res}": {**_SIZES[size], "patch_size": patch, "encoder_stride": patch, "image_size": res}
    for size, patch, res in _PUBLISHED
}
ViTConfig.variants = VARIANTS
