"""Pyramid Vision Transformer v2 (PVTv2).

Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", https://arxiv.org/abs/2106.13797.

Four stages, each an overlapping patch embedding (a strided conv) followed by transformer blocks whose attention
attends to a spatially reduced copy of the tokens (SRA: a strided conv; linear SRA: average pooling to 7x7) and
whose MLP carries a depth-wise 3x3 conv in place of position embeddings, so any input resolution works.

Module names are transformers' (`pvt_v2.encoder.layers.0.blocks.0.attention.query.weight`, ...), so checkpoints
move between the two libraries with no conversion. Tokens are kept as `(B, N, C)` with N = H * W in row-major
order; stage outputs are NCHW.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import PretrainedConfig, check_lengths
from ..layers import SMALL_BYTES, DropPath, attend, conv, eager_cpu_inference, get_activation, linear, tracing
from ..modeling import PreTrainedModel, classification_loss
from ..outputs import BackboneOutput, BaseModelOutput, ImageClassifierOutput


class PvtV2Config(PretrainedConfig):
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
        self.out_features, self.out_indices = self._align_outputs(out_features, out_indices)
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

    def _align_outputs(
        self, out_features: Sequence[str] | None, out_indices: Sequence[int] | None
    ) -> tuple[list[str], list[int]]:
        """Fill in whichever of out_features / out_indices is missing (default: the last stage), check both."""
        names = self.stage_names
        if out_indices is not None:
            out_indices = [int(i) + len(names) if int(i) < 0 else int(i) for i in out_indices]
            if any(not 0 <= i < len(names) for i in out_indices):
                raise ValueError(f"PvtV2Config: out_indices {out_indices} out of range for stages {names}")
        if out_features is not None:
            unknown = [f for f in out_features if f not in names]
            if unknown:
                raise ValueError(f"PvtV2Config: out_features {unknown} are not stage names; expected some of {names}")
        if out_features is None and out_indices is None:
            out_indices = [len(names) - 1]
        if out_features is None:
            out_features = [names[i] for i in out_indices]  # type: ignore[union-attr]
        if out_indices is None:
            out_indices = [names.index(f) for f in out_features]
        out_features = list(out_features)
        if [names[i] for i in out_indices] != out_features:
            raise ValueError(f"PvtV2Config: out_features {out_features} and out_indices {out_indices} disagree")
        if sorted(out_indices) != list(out_indices) or len(set(out_indices)) != len(out_indices):
            raise ValueError(f"PvtV2Config: out_features must be distinct and in stage order, got {out_features}")
        return out_features, list(out_indices)

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> PvtV2Config:
        """The published architecture `name` (b0, b1, b2, b2_linear, b3, b4, b5) with a 1000-class ImageNet head.

        `overrides` change any field, e.g. `num_labels=10` or `drop_path_rate=0.1`.
        """
        key = name.lower().replace("-", "_").removeprefix("pvt_v2_").removeprefix("pvtv2_")
        key = {"b2_li": "b2_linear", "b2li": "b2_linear"}.get(key, key)
        if key not in VARIANTS:
            raise ValueError(f"unknown PVTv2 variant {name!r}; expected one of {', '.join(VARIANTS)}")
        fields = {"num_labels": 1000, **VARIANTS[key], **overrides}
        return cls(**fields)


# ---------------------------------------------------------------------------------------------------------------
# Layers


def _conv_gelu_kernel() -> Any:
    """oneDNN's convolution with a fused exact-GELU epilogue (the op Inductor uses on CPU), or None if absent."""
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_CONV_GELU = _conv_gelu_kernel()


class OverlapPatchEmbed(nn.Module):
    """A strided conv whose kernel overlaps its neighbours, then LayerNorm: (B, C_in, H, W) -> (B, h*w, C)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # Channels-last in memory (a no-op for the previous stage's output, which already is): oneDNN's conv runs
        # faster on it, its output is channels-last too, and then the (B, h*w, C) tokens below are a view, no copy.
        x = conv(x.contiguous(memory_format=torch.channels_last), self.proj)  # (B, C, h, w)
        h, w = x.shape[-2:]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), h, w  # (B, h*w, C)


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced copy of the tokens.

    SRA reduces with a `sr_ratio`-strided conv + LayerNorm; linear SRA pools to 7x7, then 1x1 conv, LayerNorm and
    GELU, so its cost stays linear in the number of tokens.
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
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.spatial_reduction = nn.Conv2d(dim, dim, kernel_size=1)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)
        elif sr_ratio > 1:
            self.spatial_reduction = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def _reduce(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h*w, C) -> the (B, M, C) tokens keys and values are computed from."""
        if not self.linear and self.sr_ratio == 1:
            return x
        B, N, C = x.shape
        if not self.linear and h >= self.sr_ratio and w >= self.sr_ratio and self._small_inference(x):
            return self.layer_norm(self._reduce_by_matmul(x, h, w))
        grid = x.transpose(1, 2).reshape(B, C, h, w)  # (B, C, h, w)
        if self.linear:
            grid = conv(self.pool(grid), self.spatial_reduction)  # (B, C, 7, 7)
        else:
            r = self.sr_ratio
            if h < r or w < r:  # a map smaller than one reduction window: zero-pad to one window, not crash
                grid = F.pad(grid, (0, max(0, r - w), 0, max(0, r - h)))
            grid = conv(grid, self.spatial_reduction)  # (B, C, h // r, w // r)
        reduced = self.layer_norm(grid.flatten(2).transpose(1, 2))  # (B, M, C)
        return F.gelu(reduced) if self.linear else reduced

    @staticmethod
    def _small_inference(x: torch.Tensor) -> bool:
        """Eager fp32 CPU inference on a token tensor small enough to stay in cache (batch 1-8 at stage 1)."""
        return x.numel() * 4 <= SMALL_BYTES and eager_cpu_inference(x)

    def _reduce_by_matmul(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The SR conv (kernel = stride = r, no padding) as one matmul over r x r windows of the (B, h, w, C) tokens.

        The conv reads each window once, so gathering the windows into rows of `r * r * C` and multiplying by the
        kernel laid out the same way is the same sum. For small inputs it skips oneDNN's per-call layout work
        (~3x faster at batch 1); for large ones gathering the windows costs more than it saves, so they take the conv.
        """
        B, N, C = x.shape
        r = self.sr_ratio
        h2, w2 = h // r, w // r  # the conv drops a remainder that does not fill a window
        windows = x.view(B, h, w, C)[:, : h2 * r, : w2 * r].view(B, h2, r, w2, r, C).permute(0, 1, 3, 2, 4, 5)
        conv_ = self.spatial_reduction
        kernel = conv_.weight.permute(0, 2, 3, 1).reshape(C, r * r * C)  # (out, r, r, in): the windows' order
        return F.linear(windows.reshape(B, h2 * w2, r * r * C), kernel, conv_.bias)  # (B, M, C)

    def forward(
        self, x: torch.Tensor, h: int, w: int, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        q = linear(x, self.query).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)
        kv = self._reduce(x, h, w)
        k = linear(kv, self.key).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, M, head_dim)
        v = linear(kv, self.value).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, M, head_dim)
        drop = self.attn_drop if self.training else 0.0
        out, weights = attend(q, k, v, dropout_p=drop, need_weights=need_weights)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(linear(out, self.proj)), weights


class DepthWiseConv(nn.Module):
    """A 3x3 depth-wise conv over the token grid; it gives the MLP (and so the model) its sense of position."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int, fuse_gelu: bool = False) -> torch.Tensor:
        """`(B, N, C) -> (B, N, C)`; with `fuse_gelu`, GELU(conv) in one oneDNN call (no autograd: inference only)."""
        B, N, C = x.shape
        grid = x.view(B, h, w, C).permute(0, 3, 1, 2)  # (B, C, h, w), channels-last in memory: no copy
        if fuse_gelu:
            c = self.dwconv
            out = _CONV_GELU(grid, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "gelu", [], "none")
        else:
            out = conv(grid, self.dwconv)
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
        rows = self._rows_per_chunk(x, h * w)
        if rows < x.shape[0]:
            return torch.cat([self._mlp(part, h, w) for part in x.split(rows)])  # (B, N, C)
        return self._mlp(x, h, w)

    def _mlp(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = linear(x, self.dense1)  # (B, N, hidden)
        if self.linear:
            x = F.relu(x)
        if self._can_fuse(x):
            x = self.dwconv(x, h, w, fuse_gelu=True)
        else:
            x = self.act(self.dwconv(x, h, w))
        return self.dropout(linear(self.dropout(x), self.dense2))  # (B, N, C)

    def _can_fuse(self, x: torch.Tensor) -> bool:
        """Fuse the depth-wise conv and the exact GELU in eager fp32 CPU inference: one pass over the largest
        tensor instead of two, and one allocation of it instead of two."""
        return _CONV_GELU is not None and self.act is F.gelu and eager_cpu_inference(x)

    def _rows_per_chunk(self, x: torch.Tensor, tokens: int) -> int:
        """Images per MLP pass: in eager CPU inference, enough to keep the hidden activations near SMALL_BYTES.

        The hidden tensor is the model's largest (B0 at batch 32: 100 MB per stage-1 block). Allocations that big
        come fresh from the OS and are page-faulted in on every call, and they stream through memory three times;
        a few images at a time stay in cache and reuse one block of memory. Traced, compiled, exported or
        differentiated runs take the whole batch (no Python loop over a symbolic batch; autograd keeps the
        activations anyway).
        """
        if x.device.type != "cpu" or torch.is_grad_enabled() or tracing():
            return x.shape[0]
        per_image = tokens * self.dense1.out_features * 4  # bytes of one image's hidden activations
        return max(1, SMALL_BYTES // per_image)


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
        x = self.layer_norm(x)
        # (B, C, h, w) as a view of the tokens: channels-last in memory, no copy. The models hand users
        # NCHW-contiguous maps, as transformers does; inside, the next stage and the classifier take this view as is.
        return x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2), tuple(attentions)


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
    """Shared plumbing of the PVTv2 models: config class, state-dict prefix, input checks."""

    config_class = PvtV2Config
    base_model_prefix = "pvt_v2"

    def _run_encoder(
        self, encoder: PvtV2Encoder, pixel_values: torch.Tensor, output_attentions: bool | None
    ) -> BaseModelOutput:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        return encoder(pixel_values, need_weights=output_attentions)

    def _select(self, out: BaseModelOutput, output_hidden_states: bool | None, output_attentions: bool | None):
        keep_hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        keep_attn = self.config.output_attentions if output_attentions is None else output_attentions
        hidden = tuple(h.contiguous() for h in out.hidden_states) if keep_hidden else None  # type: ignore[union-attr]
        return hidden, (out.attentions if keep_attn else None)


class PvtV2Model(PvtV2PreTrainedModel):
    """The PVTv2 encoder. `last_hidden_state` is the last stage's NCHW map `(B, C, H/32, W/32)`.

    Args:
        config: The architecture.
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.encoder = PvtV2Encoder(config)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple:
        out = self._run_encoder(self.encoder, pixel_values, output_attentions)
        hidden, attn = self._select(out, output_hidden_states, output_attentions)
        last = hidden[-1] if hidden else out.last_hidden_state.contiguous()  # one copy when both are returned
        result = BaseModelOutput(last_hidden_state=last, hidden_states=hidden, attentions=attn)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()


class PvtV2ForImageClassification(PvtV2PreTrainedModel):
    """PVTv2 with a linear classifier on the mean of the last stage's tokens (there is no [CLS] token).

    Args:
        config: The architecture; `num_labels` sizes the head (0: no head, the pooled features are returned).
    """

    head_prefixes = ("classifier.",)

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pvt_v2 = PvtV2Model(config)
        n = config.num_labels
        self.classifier = nn.Linear(config.hidden_sizes[-1], n) if n > 0 else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        out = self._run_encoder(self.pvt_v2.encoder, pixel_values, output_attentions)
        logits = self.classifier(out.last_hidden_state.mean(dim=(2, 3)))  # global average pool: (B, num_labels)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        hidden, attn = self._select(out, output_hidden_states, output_attentions)
        result = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attn)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()


class PvtV2Backbone(PvtV2PreTrainedModel):
    """PVTv2 as a multi-scale backbone for detection and segmentation: the stages in `config.out_features`.

    `channels` and `strides` describe the returned maps (stride 4, 8, 16, 32 for the standard stages).

    Args:
        config: The architecture; `out_features` / `out_indices` pick the stages.
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.encoder = PvtV2Encoder(config)

    @property
    def out_features(self) -> list[str]:
        return list(self.config.out_features)

    @property
    def out_indices(self) -> list[int]:
        return list(self.config.out_indices)

    @property
    def num_features(self) -> list[int]:
        return list(self.config.hidden_sizes)

    @property
    def channels(self) -> list[int]:
        return [self.config.hidden_sizes[i] for i in self.config.out_indices]

    @property
    def strides(self) -> list[int]:
        cumulative = torch.tensor(self.config.strides).cumprod(0).tolist()
        return [cumulative[i] for i in self.config.out_indices]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BackboneOutput | tuple:
        out = self._run_encoder(self.encoder, pixel_values, output_attentions)
        hidden, attn = self._select(out, output_hidden_states, output_attentions)
        # the returned hidden states are contiguous already (no second copy); otherwise copy just these stages
        stages = hidden or out.hidden_states
        maps = tuple(stages[i].contiguous() for i in self.config.out_indices)  # type: ignore[index]
        result = BackboneOutput(feature_maps=maps, hidden_states=hidden, attentions=attn)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()


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
