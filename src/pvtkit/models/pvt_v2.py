"""Pyramid Vision Transformer v2 (PVTv2).

Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", https://arxiv.org/abs/2106.13797.

Four stages, each an overlapping patch embedding (a strided conv) followed by transformer blocks whose attention
attends to a spatially reduced copy of the tokens (SRA: a strided conv; linear SRA: average pooling to 7x7) and
whose MLP carries a depth-wise 3x3 conv in place of position embeddings, so any input resolution works.

Module names are transformers' (`pvt_v2.encoder.layers.0.blocks.0.attention.query.weight`, ...), so checkpoints
move between the two libraries with no conversion; timm's and the authors' layouts convert by the rules at the end
of this file. Tokens are kept as `(B, N, C)` with N = H * W in row-major order; stage outputs are NCHW. This one
forward is what eager, torch.compile, torch.export and ONNX run: size-dependent steps stay symbolic when traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import convert
from .. import cpu_kernels as kernels
from ..config import BackboneConfigMixin, PretrainedConfig, check_lengths
from ..layers import DropPath, adaptive_avg_pool2d, attend, get_activation, map_to_tokens, tokens_to_map
from ..modeling import BackboneMixin, PreTrainedModel, classification_loss
from ..outputs import BackboneOutput, BaseModelOutput, ImageClassifierOutput
from .family import Family, Layout, StateDict


class PvtV2Config(BackboneConfigMixin, PretrainedConfig):
    """Configuration of a PVTv2 model; field names and defaults are transformers' (the defaults are PVTv2-B0).

    Args:
        image_size: Nominal input size (informative: the model runs at any size).
        num_channels: Input channels.
        num_encoder_blocks: Number of stages; every per-stage list below has this many entries.
        depths: Transformer blocks per stage.
        sr_ratios: Spatial-reduction ratio of the keys/values per stage (ignored with `linear_attention`).
        hidden_sizes: Channels per stage.
        patch_sizes: Kernel of each stage's overlapping patch embedding.
        strides: Stride of each stage's patch embedding.
        num_attention_heads: Heads per stage; must divide the stage's hidden size.
        mlp_ratios: MLP hidden width / hidden size, per stage.
        hidden_act: MLP activation (transformers' names: "gelu", "relu", ...).
        hidden_dropout_prob: Dropout after the attention projection and in the MLP.
        attention_probs_dropout_prob: Dropout on the attention weights.
        initializer_range: Std of the truncated normal init of Linear layers.
        drop_path_rate: Stochastic depth rate, rising linearly from 0 over all blocks.
        layer_norm_eps: Epsilon of every LayerNorm.
        qkv_bias: Bias in the query/key/value projections.
        linear_attention: Linear SRA (pool to 7x7 + 1x1 conv) instead of strided-conv SRA.
        out_features: Stages a backbone returns, by name (`stage1`..`stageN`).
        out_indices: The same, by index (0-based); give either, the other follows.
        **kwargs: The common fields of `PretrainedConfig` (num_labels, id2label, problem_type, ...).
    """

    model_type = "pvt_v2"
    title = "PVTv2"

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        num_channels: int = 3,
        num_encoder_blocks: int = 4,
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        hidden_sizes: Sequence[int] = (32, 64, 160, 256),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        num_attention_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        linear_attention: bool = False,
        out_features: Sequence[str] | None = None,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("stage_names", None)  # derived from depths; transformers writes it
        super().__init__(**kwargs)
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.num_channels = int(num_channels)
        self.num_encoder_blocks = int(num_encoder_blocks)
        self.depths = list(depths)
        self.sr_ratios = list(sr_ratios)
        self.hidden_sizes = list(hidden_sizes)
        self.patch_sizes = list(patch_sizes)
        self.strides = list(strides)
        self.num_attention_heads = list(num_attention_heads)
        self.mlp_ratios = list(mlp_ratios)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_probs_dropout_prob = float(attention_probs_dropout_prob)
        self.initializer_range = float(initializer_range)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_eps = float(layer_norm_eps)
        self.qkv_bias = bool(qkv_bias)
        self.linear_attention = bool(linear_attention)
        self.stage_names = [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self._set_stage_outputs(out_features, out_indices)
        self._validate()

    def _validate(self) -> None:
        n = self.num_encoder_blocks
        check_lengths(
            "PvtV2Config", n, depths=self.depths, sr_ratios=self.sr_ratios, hidden_sizes=self.hidden_sizes,
            patch_sizes=self.patch_sizes, strides=self.strides, num_attention_heads=self.num_attention_heads,
            mlp_ratios=self.mlp_ratios,
        )  # fmt: skip
        for i, (size, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if heads <= 0 or size % heads:
                raise ValueError(f"PvtV2Config: stage {i + 1} hidden size {size} is not divisible by {heads} heads")
        for name in ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "mlp_ratios"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ValueError(f"PvtV2Config: every entry of {name} must be positive, got {getattr(self, name)}")
        if self.num_channels <= 0:
            raise ValueError(f"PvtV2Config: num_channels must be positive, got {self.num_channels}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"PvtV2Config: drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        get_activation(self.hidden_act)

    variant_prefixes = ("pvt_v2_", "pvtv2_")
    variant_aliases = {"b2_li": "b2_linear", "b2li": "b2_linear"}


# ---------------------------------------------------------------------------------------------------------------
# Layers


class OverlapPatchEmbed(nn.Module):
    """A strided conv whose kernel overlaps its neighbours, then LayerNorm: (B, C_in, H, W) -> (B, h*w, C)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # Channels-last in memory (a no-op for the previous stage's output, which already is): oneDNN's conv runs
        # faster on it, its output is channels-last too, and then the (B, h*w, C) tokens below are a view, no copy.
        x = kernels.conv(x.contiguous(memory_format=torch.channels_last), self.proj)  # (B, C, h, w)
        h, w = x.shape[-2:]
        return self.layer_norm(map_to_tokens(x)), h, w  # (B, h*w, C)


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced copy of the tokens.

    SRA reduces with a `sr_ratio`-strided conv + LayerNorm (a map smaller than one window is zero-padded to one
    window instead of failing); linear SRA pools to 7x7, then 1x1 conv, LayerNorm and GELU, so its cost stays
    linear in the number of tokens.
    """

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, linear: bool, qkv_bias: bool, attn_drop: float,
        proj_drop: float, eps: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.sr_ratio, self.linear, self.attn_drop = sr_ratio, linear, attn_drop
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if linear:
            self.spatial_reduction = nn.Conv2d(dim, dim, kernel_size=1)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)
        elif sr_ratio > 1:
            self.spatial_reduction = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def _reduce(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h*w, C) -> the (B, M, C) tokens keys and values are computed from."""
        if self.linear:
            B, N, C = x.shape
            grid = adaptive_avg_pool2d(x.transpose(1, 2).reshape(B, C, h, w), 7)  # (B, C, 7, 7)
            return F.gelu(self.layer_norm(map_to_tokens(kernels.conv(grid, self.spatial_reduction))))  # (B, 49, C)
        if self.sr_ratio == 1:
            return x
        return self.layer_norm(kernels.window_conv(x, h, w, self.spatial_reduction))  # (B, h/r * w/r, C)

    def forward(
        self, x: torch.Tensor, h: int, w: int, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        q = kernels.linear(x, self.query).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)
        k, v = kernels.linears(self._reduce(x, h, w), (self.key, self.value))  # each (B, M, C)
        k = k.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, M, head_dim)
        v = v.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, M, head_dim)
        drop = self.attn_drop if self.training else 0.0
        out, weights = attend(q, k, v, dropout_p=drop, need_weights=need_weights)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(kernels.linear(out, self.proj)), weights


class DepthWiseConv(nn.Module):
    """A 3x3 depth-wise conv over the token grid; it gives the MLP (and so the model) its sense of position."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int, act: Any) -> torch.Tensor:
        """`(B, N, C) -> act(conv) (B, N, C)`. The conv sees the tokens as a channels-last map (a view): oneDNN's
        channels-last depth-wise conv is several times faster than the NCHW one, and no transposes are needed."""
        B, N, C = x.shape
        out = kernels.conv_act(tokens_to_map(x, h, w), self.dwconv, act)  # (B, C, h, w), channels-last
        return out.permute(0, 2, 3, 1).reshape(B, N, C)  # (B, N, C), a view when channels-last


class ConvMlp(nn.Module):
    """Linear -> (ReLU, linear SRA only) -> depth-wise conv -> activation -> Linear."""

    def __init__(self, dim: int, hidden: int, act: str, drop: float, linear: bool) -> None:
        super().__init__()
        self.dense1 = nn.Linear(dim, hidden)
        self.dwconv = DepthWiseConv(hidden)
        self.dense2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(drop)
        self.act = get_activation(act)
        self.linear = linear

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if kernels.choose(x).nchw_mlp:
            return self._nchw(x, h, w)
        # The hidden activations are the model's largest tensors: CPU inference takes a few images at a time.
        return kernels.in_pieces(self._tokens, x, h * w * self.dense1.out_features * 4, h, w)

    def _tokens(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = kernels.linear(x, self.dense1)  # (B, N, hidden)
        if self.linear:
            x = F.relu(x)
        x = self.dwconv(x, h, w, self.act)
        return self.dropout(kernels.linear(self.dropout(x), self.dense2))  # (B, N, C)

    def _nchw(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The same maths on an NCHW map, the Linear layers as 1x1 convs: the layout for ONNX Runtime, which would
        otherwise materialise the transposes around the depth-wise conv at the hidden width (8x the model width in
        stages 1-2; a third of B0's kernel time) and reorder them for its blocked convs. Here the transposes happen
        at the model width and ORT chains its blocked convs (B0 batch 32: 20 -> 34 img/s, README "Export")."""
        B, N, C = x.shape
        z = F.conv2d(x.transpose(1, 2).reshape(B, C, h, w), self.dense1.weight[:, :, None, None], self.dense1.bias)
        z = F.relu(z) if self.linear else z  # (B, hidden, h, w)
        z = self.dropout(self.act(self.dwconv.dwconv(z)))
        z = F.conv2d(z, self.dense2.weight[:, :, None, None], self.dense2.bias)  # (B, C, h, w)
        return self.dropout(z.flatten(2).transpose(1, 2))  # (B, N, C)

class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), each branch with stochastic depth."""

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float, linear: bool, qkv_bias: bool, act: str,
        drop: float, attn_drop: float, drop_path: float, eps: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(dim, eps=eps)
        self.attention = SpatialReductionAttention(dim, num_heads, sr_ratio, linear, qkv_bias, attn_drop, drop, eps)
        self.layer_norm_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act, drop, linear)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, h: int, w: int, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.attention(self.layer_norm_1(x), h, w, need_weights)
        x = x + self.drop_path(attn)
        x = x + self.drop_path(self.mlp(self.layer_norm_2(x), h, w))
        return x, weights


# ---------------------------------------------------------------------------------------------------------------
# Stage and encoder


class Stage(nn.Module):
    """Patch embedding, `depth` blocks, LayerNorm: (B, C_in, H, W) -> (B, C, H / stride, W / stride)."""

    def __init__(self, config: PvtV2Config, index: int, drop_paths: Sequence[float]) -> None:
        super().__init__()
        c, i = config, index
        in_channels = c.num_channels if i == 0 else c.hidden_sizes[i - 1]
        dim = c.hidden_sizes[i]
        self.patch_embedding = OverlapPatchEmbed(in_channels, dim, c.patch_sizes[i], c.strides[i], c.layer_norm_eps)
        self.blocks = nn.ModuleList(
            Block(
                dim, c.num_attention_heads[i], c.sr_ratios[i], c.mlp_ratios[i], c.linear_attention, c.qkv_bias,
                c.hidden_act, c.hidden_dropout_prob, c.attention_probs_dropout_prob, p, c.layer_norm_eps,
            )  # fmt: skip
            for p in drop_paths
        )
        self.layer_norm = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x, h, w = self.patch_embedding(x)  # (B, h*w, C)
        attentions = []
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, weights = checkpoint(block, x, h, w, need_weights, use_reentrant=False)
            else:
                x, weights = block(x, h, w, need_weights)
            attentions.append(weights)
        # (B, C, h, w) as a view of the tokens: channels-last in memory, no copy. The models hand users
        # NCHW-contiguous maps, as transformers does; inside, the next stage and the classifier take this view as is.
        return tokens_to_map(self.layer_norm(x), h, w), tuple(attentions)


class PvtV2Encoder(nn.Module):
    """The stages in sequence; the stochastic-depth rate rises linearly over all blocks of all stages."""

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__()
        n = sum(config.depths)
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        starts = [sum(config.depths[:i]) for i in range(config.num_encoder_blocks)]
        self.layers = nn.ModuleList(
            Stage(config, i, rates[s : s + d]) for i, (s, d) in enumerate(zip(starts, config.depths))
        )

    def forward(self, pixel_values: torch.Tensor, need_weights: bool = False) -> BaseModelOutput:
        x, hidden_states, attentions = pixel_values, [], []
        for stage in self.layers:
            x, weights = stage(x, need_weights)
            hidden_states.append(x)
            attentions.append(weights)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(hidden_states), attentions=tuple(attentions))


# ---------------------------------------------------------------------------------------------------------------
# Models and heads


class PvtV2PreTrainedModel(PreTrainedModel):
    """The PVTv2 forward, written once: input check, the stages, the outputs asked for, then the class's head."""

    config_class = PvtV2Config
    base_model_prefix = "pvt_v2"

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """`pixel_values` `(B, num_channels, H, W)`, any size; the flags override the config's defaults."""
        return self._forward(pixel_values, None, output_attentions, output_hidden_states, return_dict)

    def _forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None, output_attentions: bool | None,
                 output_hidden_states: bool | None, return_dict: bool | None) -> Any:  # fmt: skip
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1] != c.num_channels:
            raise ValueError(f"pixel_values must have shape (batch, {c.num_channels}, height, width), "
                             f"got {tuple(pixel_values.shape)}")  # fmt: skip
        keep_attn = c.output_attentions if output_attentions is None else output_attentions
        keep_hidden = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        encoder = getattr(self, self.base_model_prefix, self).encoder  # a task model holds the encoder model
        out = encoder(pixel_values, need_weights=keep_attn)
        hidden = tuple(h.contiguous() for h in out.hidden_states) if keep_hidden else None  # type: ignore[union-attr]
        result = self._head(out, hidden, out.attentions if keep_attn else None, labels)
        return result if (c.return_dict if return_dict is None else return_dict) else result.to_tuple()

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: torch.Tensor | None) -> Any:
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Module:
        """The first stage's overlapping patch embedding (a strided conv and LayerNorm)."""
        return getattr(self, self.base_model_prefix, self).encoder.layers[0].patch_embedding

    def attention_layers(self, out: Any, pixel_values: torch.Tensor) -> list[tuple[str, torch.Tensor, tuple[int, int], int]]:
        """Per stage, its last block's attention for the first image; queries are the stage's map, keys its
        spatially reduced copy (7x7 with linear SRA); no prefix tokens."""
        return [(f"stage {i + 1}", stage[-1][0], tuple(hidden.shape[-2:]), 0)
                for i, (stage, hidden) in enumerate(zip(out.attentions, out.hidden_states))]  # fmt: skip


class PvtV2Model(PvtV2PreTrainedModel):
    """The PVTv2 encoder. `last_hidden_state` is the last stage's NCHW map `(B, C, H/32, W/32)`.

    Args:
        config: The architecture.
    """

    output_names = ("last_hidden_state",)

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.encoder = PvtV2Encoder(config)

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: None) -> BaseModelOutput:
        last = hidden[-1] if hidden else out.last_hidden_state.contiguous()  # one copy when both are returned
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden, attentions=attentions)


class PvtV2ForImageClassification(PvtV2PreTrainedModel):
    """PVTv2 with a linear classifier on the mean of the last stage's tokens (there is no [CLS] token).

    Args:
        config: The architecture; `num_labels` sizes the head (0: no head, the pooled features are returned).
    """

    head_prefixes = ("classifier.",)
    output_names = ("logits",)

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.num_labels = n = config.num_labels
        self.pvt_v2 = PvtV2Model(config)
        self.head_width = config.hidden_sizes[-1]
        self.classifier = nn.Linear(self.head_width, n) if n > 0 else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        """`pixel_values` `(B, num_channels, H, W)`; with `labels`, the loss `config.problem_type` names."""
        return self._forward(pixel_values, labels, output_attentions, output_hidden_states, return_dict)

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: Any) -> ImageClassifierOutput:
        logits = self.classifier(out.last_hidden_state.mean(dim=(2, 3)))  # global average pool: (B, num_labels)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attentions)


class PvtV2Backbone(BackboneMixin, PvtV2PreTrainedModel):
    """PVTv2 as a multi-scale backbone for detection and segmentation: the stages in `config.out_features`.

    `channels` and `strides` describe the returned maps (stride 4, 8, 16, 32 for the standard stages).

    Args:
        config: The architecture; `out_features` / `out_indices` pick the stages.
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.encoder = PvtV2Encoder(config)

    @property
    def stage_channels(self) -> list[int]:
        return list(self.config.hidden_sizes)

    @property
    def stage_strides(self) -> list[int]:
        return torch.tensor(self.config.strides).cumprod(0).tolist()

    @property
    def stage_modules(self) -> list[str]:
        return [f"encoder.layers.{i}" for i in range(len(self.config.stage_names))]

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: None) -> BackboneOutput:
        # the returned hidden states are contiguous already (no second copy); otherwise copy just these stages
        stages = hidden or out.hidden_states
        maps = tuple(stages[i].contiguous() for i in self.config.out_indices)  # type: ignore[index]
        return BackboneOutput(feature_maps=maps, hidden_states=hidden, attentions=attentions)


# ---------------------------------------------------------------------------------------------------------------
# The published variants (Table 1 of the paper). Fields not listed keep PvtV2Config's defaults.

_WIDE = {"hidden_sizes": (64, 128, 320, 512)}
VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"depths": (2, 2, 2, 2), "hidden_sizes": (32, 64, 160, 256)},
    "b1": {"depths": (2, 2, 2, 2), **_WIDE},
    "b2": {"depths": (3, 4, 6, 3), **_WIDE},
    "b2_linear": {"depths": (3, 4, 6, 3), **_WIDE, "linear_attention": True},
    "b3": {"depths": (3, 4, 18, 3), **_WIDE},
    "b4": {"depths": (3, 8, 27, 3), **_WIDE},
    "b5": {"depths": (3, 6, 40, 3), **_WIDE, "mlp_ratios": (4, 4, 4, 4)},
}
PvtV2Config.variants = VARIANTS


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: timm's and the authors' (whai362/PVT) names -> transformers', and config inference.

_BLOCK_RULES: convert.Rules = [  # block-level names timm and the authors share
    (r"\.norm1\.", ".layer_norm_1."), (r"\.norm2\.", ".layer_norm_2."), (r"\.attn\.q\.", ".attention.query."),
    (r"\.attn\.kv\.", ".attention.kv."), (r"\.attn\.proj\.", ".attention.proj."),
    (r"\.attn\.sr\.", ".attention.spatial_reduction."), (r"\.attn\.norm\.", ".attention.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."), (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv.dwconv."),
    (r"\.mlp\.dwconv\.(weight|bias)$", r".mlp.dwconv.dwconv.\1"), (r"\.mlp\.fc2\.", ".mlp.dense2."),
]  # fmt: skip
_TIMM_STAGES = convert.stage_renamer([
    (r"^patch_embed\.proj\.", lambda m: "encoder.layers.0.patch_embedding.proj."),
    (r"^patch_embed\.norm\.", lambda m: "encoder.layers.0.patch_embedding.layer_norm."),
    (r"^stages\.(\d+)\.downsample\.proj\.", lambda m: f"encoder.layers.{m[1]}.patch_embedding.proj."),
    (r"^stages\.(\d+)\.downsample\.norm\.", lambda m: f"encoder.layers.{m[1]}.patch_embedding.layer_norm."),
    (r"^stages\.(\d+)\.blocks\.", lambda m: f"encoder.layers.{m[1]}.blocks."),
    (r"^stages\.(\d+)\.norm\.", lambda m: f"encoder.layers.{m[1]}.layer_norm."),
    (r"^head\.", lambda m: "classifier."),
])  # fmt: skip
_ORIGINAL_STAGES = convert.stage_renamer([
    (r"^patch_embed(\d)\.proj\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.proj."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.layer_norm."),
    (r"^block(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.blocks."),
    (r"^norm(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.layer_norm."),
    (r"^head\.", lambda m: "classifier."),
])  # fmt: skip


def _converter(stages: Any) -> Any:
    """timm's or the authors' state dict -> transformers' names (fused `kv` split into key and value)."""

    def to_transformers(state: StateDict) -> StateDict:
        state = convert.rename(stages(state), _BLOCK_RULES)
        state = convert.split(state, "attention.kv", ("attention.key", "attention.value"))
        return convert.prefix_encoder(state, "pvt_v2.")

    return to_transformers


def infer_config(state: StateDict) -> dict[str, Any]:
    """PvtV2Config fields read off a transformers-named state dict. Head counts cannot be read off the tensors:
    every published PVTv2 has one head in stage 1 and keeps that head width in every stage (B0: 32; others: 64)."""
    s = convert.strip_prefix(state, "pvt_v2.")
    n = 0
    while f"encoder.layers.{n}.patch_embedding.proj.weight" in s:
        n += 1
    if n == 0:
        raise ValueError("cannot infer a PVTv2 config: no encoder.layers.0.patch_embedding.proj.weight")
    fields: dict[str, Any] = {"num_encoder_blocks": n, "depths": [], "hidden_sizes": [], "patch_sizes": [],
                              "sr_ratios": [], "mlp_ratios": [], "num_attention_heads": []}  # fmt: skip
    linear = False
    for i in range(n):
        proj = s[f"encoder.layers.{i}.patch_embedding.proj.weight"]  # (C, C_in, k, k)
        dim, block = proj.shape[0], f"encoder.layers.{i}.blocks.0."
        fields["num_channels"] = fields.get("num_channels", proj.shape[1])
        depth = 0
        while f"encoder.layers.{i}.blocks.{depth}.layer_norm_1.weight" in s:
            depth += 1
        sr = s.get(block + "attention.spatial_reduction.weight")
        linear = linear or (sr is not None and sr.shape[-1] == 1)
        head_dim = fields["hidden_sizes"][0] if i else dim
        for key, value in (("depths", depth), ("hidden_sizes", dim), ("patch_sizes", proj.shape[-1]),
                           ("sr_ratios", 1 if sr is None else sr.shape[-1]),
                           ("mlp_ratios", s[block + "mlp.dense1.weight"].shape[0] // dim if depth else 4),
                           ("num_attention_heads", dim // head_dim if dim % head_dim == 0 else 1)):  # fmt: skip
            fields[key].append(value)
    if linear:  # linear SRA has a 1x1 reduction conv in every stage; the published ratios are kept for reference
        fields["linear_attention"] = True
        fields["sr_ratios"] = [8, 4, 2, 1][:n] if n == 4 else [1] * n
    fields["strides"] = [4] + [2] * (n - 1)
    fields["qkv_bias"] = "encoder.layers.0.blocks.0.attention.query.bias" in s
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    return fields


def min_export_side(config: PvtV2Config) -> int:
    """The smallest input side a `torch.export` program takes: torch.export traces PyTorch's convolutions with
    guards that no feature map is a single row or column (a size-1 dimension changes the memory-format decision),
    so every stage's map, and SRA's reduced copy of it, must be at least 2 long: 61 pixels for the standard
    strides and reduction ratios, 33 for linear SRA. ONNX files have no such limit."""
    for side in range(1, 1 << 16):
        n, fits = side, True
        for k, stride, r in zip(config.patch_sizes, config.strides, config.sr_ratios):
            n = (n + 2 * (k // 2) - k) // stride + 1
            fits = fits and n >= 2 and (n if config.linear_attention or r == 1 else max(n, r) // r) >= 2
        if fits:
            return side
    raise ValueError("no input size fits this PVTv2 configuration")


def describe(config: PvtV2Config, out: Any) -> dict[str, Any]:
    """Per stage: name, stride, channels, output shape, depth, heads, SR ratio, MLP ratio, attention kind."""
    strides = torch.tensor(config.strides).cumprod(0).tolist()
    return {"stages": [{
        "name": name, "stride": strides[i], "channels": out.hidden_states[i].shape[1],
        "shape": list(out.hidden_states[i].shape[2:]), "depth": config.depths[i],
        "heads": config.num_attention_heads[i], "sr_ratio": config.sr_ratios[i], "mlp_ratio": config.mlp_ratios[i],
        "attention": "linear SRA (7x7 pool)" if config.linear_attention else "SRA",
    } for i, name in enumerate(config.stage_names)]}  # fmt: skip


_EPS = {"layer_norm_eps": 1e-6}
FAMILY = Family(
    model_type="pvt_v2", config_class=PvtV2Config, processor="PvtImageProcessor",
    classes={"model": PvtV2Model, "image-classification": PvtV2ForImageClassification, "backbone": PvtV2Backbone},
    layouts=(
        Layout("transformers", "pvt_v2", "encoder.layers.0.patch_embedding.proj.weight", convert.identity),
        Layout("timm", "pvt_v2", "stages.0.blocks.0.attn.q.weight", _converter(_TIMM_STAGES), _EPS),
        Layout("original", "pvt_v2", "patch_embed1.proj.weight", _converter(_ORIGINAL_STAGES), _EPS),
    ),
    infer_config=infer_config, min_export_side=min_export_side, describe=describe,
)  # fmt: skip
