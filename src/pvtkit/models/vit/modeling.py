"""Vision Transformer (ViT).

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
https://arxiv.org/abs/2010.11929. Masked image modeling head after SimMIM, https://arxiv.org/abs/2111.09886.

The image is cut into non-overlapping patches (one strided conv), a learned [CLS] token is put in front, learned
absolute position embeddings are added, and a stack of pre-norm transformer layers runs over the sequence. The
classifier reads the final-layernormed [CLS] token.

Module names are the ones transformers writes to disk (`vit.encoder.layer.0.attention.attention.query.weight`,
`vit.encoder.layer.0.intermediate.dense.weight`, ...), so hub checkpoints load with no conversion and pvtkit's saves
load in transformers; timm's layout converts by the rules in `conversion.py`. Tokens are `(B, 1 + h*w, C)`:
the [CLS] token, then the patches in row-major order. This one forward is what eager, torch.compile, torch.export
and ONNX run; exported, it always interpolates the position embeddings, so the graph takes any multiple of the patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ... import cpu_kernels as kernels
from ...config import pair as _pair
from ...layers import Dense, attend, get_activation, map_to_tokens, resize_position_embeddings
from ...modeling import PreTrainedModel, checkpointed, classification_loss
from ...outputs import BaseModelOutputWithPooling, ImageClassifierOutput, MaskedImageModelingOutput
from .. import family as registry
from ..family import Family
from .configuration import VARIANTS, ViTConfig, check_pixel_values
from .conversion import LAYOUTS, infer_config

__all__ = [
    "VARIANTS",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTForMaskedImageModeling",
    "ViTModel",
    "ViTPreTrainedModel",
]

Tensors = tuple[torch.Tensor, ...]


# ---------------------------------------------------------------------------------------------------------------
# Layers


class PatchEmbeddings(nn.Module):
    """Non-overlapping patches, linearly embedded by one strided conv: (B, C_in, H, W) -> (B, C, H/p, W/p)."""

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return kernels.conv(pixel_values, self.projection)


class ViTEmbeddings(nn.Module):
    """Patch embeddings, masked patches replaced by the mask token, [CLS] in front, position embeddings added.

    Args:
        in_channels: Input channels.
        dim: Embedding width.
        image_size: (height, width) the position embeddings are laid out for.
        patch_size: (height, width) of a patch.
        drop: Dropout on the summed embeddings.
        use_mask_token: Add the learned token that stands in for masked patches (masked image modeling).
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        image_size: tuple[int, int],
        patch_size: tuple[int, int],
        drop: float,
        use_mask_token: bool,
    ) -> None:
        super().__init__()
        self.grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if use_mask_token else None
        self.patch_embeddings = PatchEmbeddings(in_channels, dim, patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.dropout = nn.Dropout(drop)

    def forward(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate: bool
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.patch_embeddings(pixel_values)  # (B, C, h, w)
        B, C, h, w = x.shape
        x = map_to_tokens(x)  # (B, h*w, C)
        if bool_masked_pos is not None:
            masked = bool_masked_pos.reshape(B, h * w, 1).bool()  # (B, h*w, 1)
            x = torch.where(masked, self.mask_token, x)  # type: ignore[arg-type]
        # Mixed dtypes (bf16 patches under autocast, fp32 tokens) promote to fp32, as in transformers.
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)  # (B, 1 + h*w, C)
        pos = resize_position_embeddings(self.position_embeddings, self.grid, (h, w)) if interpolate else None
        x = x + (self.position_embeddings if pos is None else pos)
        return self.dropout(x), (h, w)


class QKV(nn.Module):
    """The query, key and value projections, split into heads: (B, N, C) -> 3 x (B, heads, N, head_dim)."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        q, k, v = kernels.linears(x, (self.query, self.key, self.value))  # each (B, N, C)
        heads = (B, N, self.num_heads, self.head_dim)
        return q.view(heads).transpose(1, 2), k.view(heads).transpose(1, 2), v.view(heads).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v projections, SDPA (or eager softmax when `eager`), output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float) -> None:
        super().__init__()
        self.attn_drop = attn_drop
        self.attention = QKV(dim, num_heads, qkv_bias)
        self.output = Dense(dim, dim)

    def forward(self, x: torch.Tensor, eager: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        q, k, v = self.attention(x)  # each (B, heads, N, head_dim)
        drop = self.attn_drop if self.training else 0.0
        out, weights = attend(q, k, v, dropout_p=drop, need_weights=eager)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.output(out), weights


class ViTLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x)); dropout closes each branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        act: str,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.attention = SelfAttention(dim, num_heads, qkv_bias, attn_drop)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)
        self.intermediate = Dense(dim, mlp_dim)
        self.output = Dense(mlp_dim, dim)
        self.act = get_activation(act)
        self.dropout = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, eager: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.attention(self.layernorm_before(x), eager)
        x = x + self.dropout(attn)
        x = x + self.dropout(self.output(self.act(self.intermediate(self.layernorm_after(x)))))
        return x, weights


class ViTEncoder(nn.Module):
    """The layers in sequence; collects each layer's output and attention weights."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = config
        self.layer = nn.ModuleList(
            ViTLayer(
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
        )
        self.gradient_checkpointing = False

    def forward(
        self, x: torch.Tensor, eager: bool = False, keep_hidden: bool = False, keep_attentions: bool = False
    ) -> tuple[torch.Tensor, Tensors | None, Tensors | None]:
        """Returns the last layer's output, and when asked for, the input with every layer's output and every
        layer's attention weights (which need `eager`)."""
        hidden_states, attentions = [x], []
        for layer in self.layer:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, weights = checkpointed(self, layer, x, eager)
            else:
                x, weights = layer(x, eager)
            if keep_hidden:
                hidden_states.append(x)
            if keep_attentions:
                attentions.append(weights)
        return x, (tuple(hidden_states) if keep_hidden else None), (tuple(attentions) if keep_attentions else None)


class ViTPooler(nn.Module):
    """Dense + activation on the [CLS] token: (B, N, C) -> (B, pooler_output_size)."""

    def __init__(self, dim: int, out_dim: int, act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, out_dim)
        self.activation = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x[:, 0]))


# ---------------------------------------------------------------------------------------------------------------
# Models and heads


class ViTPreTrainedModel(PreTrainedModel):
    """Shared plumbing of the ViT models: config class, state-dict prefix, the ViT-specific init."""

    config_class = ViTConfig
    base_model_prefix = "vit"
    layout_registry = registry

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated normal (std `initializer_range`) for Linear, Conv, [CLS] and position embeddings; zero mask
        token and biases; unit LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, nn.Conv2d):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ViTEmbeddings):
            nn.init.trunc_normal_(module.position_embeddings, std=std)
            nn.init.trunc_normal_(module.cls_token, std=std)
            if module.mask_token is not None:
                nn.init.zeros_(module.mask_token)
        else:
            super()._init_weights(module)

    def _flag(self, value: bool | None, name: str) -> bool:
        return bool(getattr(self.config, name) if value is None else value)

    def _vit(self) -> ViTModel:
        return self if isinstance(self, ViTModel) else self.vit  # type: ignore[return-value]

    def get_input_embeddings(self) -> nn.Module:
        """The patch projection (`embeddings.patch_embeddings`), as transformers returns."""
        return self._vit().embeddings.patch_embeddings

    def depth_layers(self) -> list[list[nn.Module]]:
        """The encoder's modules by depth, as layer-wise learning-rate decay numbers them (BEiT's rule): layer 0 is
        the embeddings (patch projection, [CLS] and mask tokens, position table), then one per transformer layer;
        the final LayerNorm, the pooler and the heads come after them."""
        vit = self._vit()
        return [[vit.embeddings], *([layer] for layer in vit.encoder.layer)]

    def set_input_size(self, image_size: int | Sequence[int]) -> None:
        """Make `image_size` the native input size: the position embeddings are resampled once (bicubic) and the
        config updated, so the model (and its save) runs at that size without interpolating, in pvtkit and in
        transformers. Raises a ValueError when a side is not a multiple of the patch."""
        (h, w), (ph, pw) = _pair(image_size), _pair(self.config.patch_size)
        if h % ph or w % pw or min(h, w) <= 0:
            raise ValueError(
                f"a ViT with patch size {ph} needs height and width divisible by {ph}, got {h}x{w} "
                f"(e.g. {max(ph, h // ph * ph)}x{max(pw, w // pw * pw)})"
            )
        vit = self._vit()
        emb = vit.embeddings
        if (h // ph, w // pw) != emb.grid:
            with torch.no_grad():
                pos = resize_position_embeddings(emb.position_embeddings, emb.grid, (h // ph, w // pw))
            emb.position_embeddings = nn.Parameter(pos, requires_grad=emb.position_embeddings.requires_grad)
            emb.grid = (h // ph, w // pw)
        vit.image_size = (h, w)
        super().set_input_size(image_size)

    def attention_layers(
        self, out: Any, pixel_values: torch.Tensor
    ) -> list[tuple[str, torch.Tensor, tuple[int, int], int]]:
        """Every layer's attention for the first image over the patch grid, behind the [CLS] token (one prefix)."""
        ph, pw = _pair(self.config.patch_size)
        grid = (pixel_values.shape[-2] // ph, pixel_values.shape[-1] // pw)
        return [(f"layer {j + 1}", weights[0], grid, 1) for j, weights in enumerate(out.attentions)]


class ViTModel(ViTPreTrainedModel):
    """The ViT encoder: embeddings, transformer layers, final LayerNorm and (optionally) the [CLS] pooler.

    `last_hidden_state` is `(B, 1 + h*w, C)`, final-layernormed; `hidden_states` holds the embeddings and every
    layer's output (before the final LayerNorm), as in transformers.

    Args:
        config: The architecture.
        add_pooling_layer: Add the dense + tanh pooler on the [CLS] token (`pooler_output`).
        use_mask_token: Add the mask token, so `bool_masked_pos` can be passed (masked image modeling).
    """

    output_names = ("last_hidden_state", "pooler_output")

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config)
        c = config
        self.image_size, self.patch_size = _pair(c.image_size), _pair(c.patch_size)
        self.embeddings = ViTEmbeddings(
            c.num_channels, c.hidden_size, self.image_size, self.patch_size, c.hidden_dropout_prob, use_mask_token
        )
        self.encoder = ViTEncoder(c)
        self.layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.pooler = ViTPooler(c.hidden_size, c.pooler_output_size, c.pooler_act) if add_pooling_layer else None
        self.post_init()

    def _check_inputs(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate: bool):
        tracing = kernels.tracing()
        check_pixel_values(pixel_values.shape, self.config, interpolate, sizes=not tracing)
        H, W = pixel_values.shape[-2:]
        ph, pw = self.patch_size
        if tracing:  # symbolic sizes: a run-time assertion in an exported program, not a Python branch
            torch._check(
                H % ph == 0 and W % pw == 0,
                lambda: f"ViT input size {H}x{W} is not a multiple of the patch size {ph}x{pw}",
            )
            return
        if bool_masked_pos is None:
            return
        if self.embeddings.mask_token is None:
            raise ValueError("bool_masked_pos needs a mask token: build ViTModel with use_mask_token=True")
        B, n = pixel_values.shape[0], (H // ph) * (W // pw)
        if bool_masked_pos.shape[0] != B or bool_masked_pos[0].numel() != n:
            raise ValueError(
                f"bool_masked_pos must have shape (batch, num_patches) = ({B}, {n}), got {tuple(bool_masked_pos.shape)}"
            )

    def _encode(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None,
        interpolate: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> tuple[torch.Tensor, tuple[int, int], Tensors | None, Tensors | None]:
        """Returns (final-layernormed tokens, patch grid (h, w), hidden states or None, attentions or None)."""
        # Exported, the interpolation is always in the graph: the program then takes any multiple of the patch.
        interpolate = self._flag(interpolate, "interpolate_pos_encoding") or torch.compiler.is_exporting()
        self._check_inputs(pixel_values, bool_masked_pos, interpolate)
        weight = self.embeddings.patch_embeddings.projection.weight
        if pixel_values.dtype != weight.dtype:
            pixel_values = pixel_values.to(weight.dtype)
        x, grid = self.embeddings(pixel_values, bool_masked_pos, interpolate)
        keep_attentions = self._flag(output_attentions, "output_attentions")
        eager = keep_attentions or self.config.attn_implementation == "eager"
        keep_hidden = self._flag(output_hidden_states, "output_hidden_states")
        x, hidden_states, attentions = self.encoder(x, eager, keep_hidden, keep_attentions)
        return self.layernorm(x), grid, hidden_states, attentions

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode `pixel_values` `(B, num_channels, H, W)`.

        Args:
            bool_masked_pos: `(B, num_patches)`, True where a patch is replaced by the mask token.
            interpolate_pos_encoding: Resize the position embeddings to the input's patch grid (default: the
                config's), so any multiple of the patch size runs.
            output_attentions, output_hidden_states, return_dict: Override the config's defaults.
        """
        x, _, hidden, attn = self._encode(
            pixel_values, bool_masked_pos, interpolate_pos_encoding, output_attentions, output_hidden_states
        )
        pooled = self.pooler(x) if self.pooler is not None else None
        result = BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled, hidden_states=hidden, attentions=attn
        )
        return result if self._flag(return_dict, "return_dict") else result.to_tuple()


class ViTForImageClassification(ViTPreTrainedModel):
    """ViT with a linear classifier on the final-layernormed [CLS] token.

    Args:
        config: The architecture; `num_labels` sizes the head (0: no head, the [CLS] features are returned).
    """

    head_prefixes = ("classifier.",)
    output_names = ("logits",)

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.num_labels = n = config.num_labels
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.head_width = config.hidden_size
        self.classifier = nn.Linear(self.head_width, n) if n > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        x, _, hidden, attn = self.vit._encode(
            pixel_values, None, interpolate_pos_encoding, output_attentions, output_hidden_states
        )
        logits = self.classifier(x[:, 0])  # the [CLS] token: (B, num_labels)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attn)
        return result if self._flag(return_dict, "return_dict") else result.to_tuple()


class ViTForMaskedImageModeling(ViTPreTrainedModel):
    """ViT with the SimMIM decoder: a 1x1 conv to `encoder_stride**2 * num_channels` channels and a PixelShuffle
    turn the patch tokens back into an image; the loss is the L1 error over the masked patches only.

    Unlike transformers, the patch grid is taken from the input, so a non-square input (with interpolation)
    reconstructs and scores correctly.

    Args:
        config: The architecture; `encoder_stride` must equal `patch_size`.
    """

    head_prefixes = ("decoder.",)

    def __init__(self, config: ViTConfig) -> None:
        if _pair(config.patch_size) != (config.encoder_stride, config.encoder_stride):
            raise ValueError(
                f"ViTForMaskedImageModeling: encoder_stride ({config.encoder_stride}) must equal "
                f"patch_size ({config.patch_size}) so the reconstruction fits the input"
            )
        super().__init__(config)
        self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=True)
        s, c = config.encoder_stride, config.num_channels
        self.decoder = nn.Sequential(nn.Conv2d(config.hidden_size, s * s * c, kernel_size=1), nn.PixelShuffle(s))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MaskedImageModelingOutput | tuple:
        """Reconstruct `pixel_values` `(B, num_channels, H, W)`.

        Args:
            bool_masked_pos: `(B, num_patches)`, True where a patch is masked; the loss is computed when given.
            interpolate_pos_encoding: Resize the position embeddings to the input's patch grid (default: the
                config's).
            output_attentions, output_hidden_states, return_dict: Override the config's defaults.
        """
        x, (h, w), hidden, attn = self.vit._encode(
            pixel_values, bool_masked_pos, interpolate_pos_encoding, output_attentions, output_hidden_states
        )
        B, _, C = x.shape
        grid = x[:, 1:].transpose(1, 2).reshape(B, C, h, w)  # drop [CLS]: (B, C, h, w)
        reconstruction = self.decoder(grid)  # (B, num_channels, H, W)

        loss = None
        if bool_masked_pos is not None:  # mean L1 error over the masked pixels (and channels)
            p = self.config.encoder_stride
            mask = bool_masked_pos.reshape(B, 1, h, w).repeat_interleave(p, 2).repeat_interleave(p, 3)  # (B, 1, H, W)
            error = (reconstruction - pixel_values).abs()  # in the wider of the two dtypes under autocast
            mask = mask.to(error.dtype)
            loss = (error * mask).sum() / (mask.sum() + 1e-5) / self.config.num_channels
        result = MaskedImageModelingOutput(
            loss=loss, reconstruction=reconstruction, hidden_states=hidden, attentions=attn
        )
        return result if self._flag(return_dict, "return_dict") else result.to_tuple()


def describe(config: ViTConfig, out: Any) -> dict[str, Any]:
    """Patch size and grid, tokens, layers, widths and heads at the input size (`config.image_size`)."""
    (h, w), (ph, pw) = _pair(config.image_size), _pair(config.patch_size)
    return {
        "vit": {
            "patch_size": config.patch_size,
            "grid": [h // ph, w // pw],
            "tokens": out.hidden_states[-1].shape[1],
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "heads": config.num_attention_heads,
            "mlp_size": config.intermediate_size,
        }
    }


FAMILY = Family(
    model_type="vit",
    config_class=ViTConfig,
    processor="ViTImageProcessor",
    classes={
        "model": ViTModel,
        "image-classification": ViTForImageClassification,
        "masked-image-modeling": ViTForMaskedImageModeling,
    },
    layouts=LAYOUTS,
    infer_config=infer_config,
    size_multiple=lambda config: _pair(config.patch_size),
    min_export_side=lambda config: 2 * max(_pair(config.patch_size)),
    describe=describe,
    export_metadata=lambda config: {"patch_size": list(_pair(config.patch_size))},
    feature_options={"add_pooling_layer": False},
)
