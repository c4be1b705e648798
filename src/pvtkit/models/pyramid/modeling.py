"""The pyramid encoder that PVTv2, SegFormer (its "Mix Transformer", MiT) and GLPN share, written once.

Wang et al., "PVT v2", https://arxiv.org/abs/2106.13797; Xie et al., "SegFormer", https://arxiv.org/abs/2105.15203;
Kim et al., "Global-Local Path Networks for Monocular Depth Estimation", https://arxiv.org/abs/2201.07436.

Four stages, each an overlapping patch embedding (a strided conv) followed by transformer blocks whose attention
attends to a spatially reduced copy of the tokens (SRA: a strided conv; PVTv2's linear SRA: average pooling to 7x7)
and whose MLP carries a depth-wise 3x3 conv in place of position embeddings, so any input resolution works. The
families differ in module names only (the state dict is the contract: each family keeps transformers' names), in
LayerNorm epsilons and in their heads; every layer below, every CPU fast path (`cpu_kernels`) and the export path
serve all three. Tokens are `(B, N, C)` with N = H * W in row-major order; stage outputs are NCHW maps.

Also here: what the families' specs share (the smallest torch.export side, `pvtkit info`'s stage table).
SegFormer's all-MLP decode head, which PVTv2 uses too, is in `decode_head.py`; the config fields, their checks and
config inference from bare weights are in `configuration.py`, which needs no PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import cpu_kernels as kernels
from ...layers import Dense, DropPath, adaptive_avg_pool2d, attend, get_activation, map_to_tokens, tokens_to_map
from ...losses import segmentation_loss
from ...modeling import PreTrainedModel, checkpointed, classification_loss
from ...outputs import BaseModelOutput, ImageClassifierOutput, SemanticSegmenterOutput
from .. import family as registry
from .configuration import check_pixel_values
from .decode_head import AllMlpDecodeHead

Attentions = tuple[tuple[torch.Tensor, ...], ...]


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
    linear in the number of tokens. Module names are PVTv2's (`query`, ..., `spatial_reduction`, `proj`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        linear: bool,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
        eps: float,
    ) -> None:
        super().__init__()
        self._setup(dim, num_heads, sr_ratio, linear, attn_drop, proj_drop)
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if linear:
            self.spatial_reduction = nn.Conv2d(dim, dim, kernel_size=1)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)
        elif sr_ratio > 1:
            self.spatial_reduction = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def _setup(self, dim: int, num_heads: int, sr_ratio: int, linear: bool, attn_drop: float, proj_drop: float) -> None:
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.sr_ratio, self.linear, self.attn_drop = sr_ratio, linear, attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

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


class MixSelfAttention(nn.Module):
    """What SegFormer and GLPN checkpoints call `attention.self`: the projections and the reduction (`sr`)."""

    def __init__(self, dim: int, sr_ratio: int, eps: float) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(dim, eps=eps)


class MixAttention(SpatialReductionAttention):
    """The same attention under SegFormer's and GLPN's names (`attention.self.*`, `attention.output.dense`)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_drop: float, proj_drop: float, eps: float) -> None:
        nn.Module.__init__(self)
        self._setup(dim, num_heads, sr_ratio, False, attn_drop, proj_drop)
        self.self = MixSelfAttention(dim, sr_ratio, eps)
        self.output = Dense(dim, dim)

    query = property(lambda self: self.self.query)
    key = property(lambda self: self.self.key)
    value = property(lambda self: self.self.value)
    spatial_reduction = property(lambda self: self.self.sr)
    layer_norm = property(lambda self: self.self.layer_norm)
    proj = property(lambda self: self.output.dense)


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
        paths = kernels.choose(x)
        if paths.nchw_mlp:
            return self._nchw(x, h, w)
        if paths.recompute and not (self.training and self.dropout.p > 0):  # in pieces, recomputed in the backward
            out = kernels.conv_mlp(x, h, w, self.dense1, self.dwconv.dwconv, self.dense2, self.act, self.linear)
            if out is not None:
                return out
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
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), each branch with stochastic depth.

    `mix` gives the attention SegFormer's and GLPN's module names (`MixAttention`); PVTv2's otherwise.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        linear: bool,
        qkv_bias: bool,
        act: str,
        drop: float,
        attn_drop: float,
        drop_path: float,
        eps: float,
        mix: bool = False,
    ) -> None:
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(dim, eps=eps)
        if mix:
            self.attention: SpatialReductionAttention = MixAttention(dim, num_heads, sr_ratio, attn_drop, drop, eps)
        else:
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
# The encoder


def stage_blocks(config: Any, index: int, eps: float, mix: bool = False) -> nn.ModuleList:
    """Stage `index`'s blocks; the stochastic-depth rate rises linearly over all blocks of all stages."""
    c, n = config, sum(config.depths)
    first = sum(c.depths[:index])
    rates = [c.drop_path_rate * (first + j) / max(n - 1, 1) for j in range(c.depths[index])]
    return nn.ModuleList(
        Block(
            c.hidden_sizes[index],
            c.num_attention_heads[index],
            c.sr_ratios[index],
            c.mlp_ratios[index],
            getattr(c, "linear_attention", False),
            getattr(c, "qkv_bias", True),
            c.hidden_act,
            c.hidden_dropout_prob,
            c.attention_probs_dropout_prob,
            rate,
            eps,
            mix,
        )
        for rate in rates
    )


def patch_embedding(config: Any, index: int, eps: float) -> OverlapPatchEmbed:
    c = config
    in_channels = c.num_channels if index == 0 else c.hidden_sizes[index - 1]
    return OverlapPatchEmbed(in_channels, c.hidden_sizes[index], c.patch_sizes[index], c.strides[index], eps)


class PyramidEncoder(nn.Module):
    """The stages in sequence: patch embedding, blocks, LayerNorm, each stage's output an NCHW map. Subclasses
    register the modules under their family's names and list them in `stages()`."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def stages(self) -> list[tuple[OverlapPatchEmbed, nn.ModuleList, nn.LayerNorm]]:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, need_weights: bool = False) -> BaseModelOutput:
        """`attentions` are nested: per stage, one `(B, heads, N, M)` map per block (None when not asked for)."""
        x, hidden_states, attentions = pixel_values, [], []
        for embed, blocks, norm in self.stages():
            x, h, w = embed(x)  # (B, h*w, C)
            weights = []
            for block in blocks:
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x, a = checkpointed(self, block, x, h, w, need_weights)
                else:
                    x, a = block(x, h, w, need_weights)
                weights.append(a)
            # (B, C, h, w) as a view of the tokens: channels-last in memory, no copy. The models hand users
            # NCHW-contiguous maps, as transformers does; inside, the next stage and the heads take this view as is.
            x = tokens_to_map(norm(x), h, w)
            hidden_states.append(x)
            attentions.append(tuple(weights))
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(hidden_states), attentions=tuple(attentions))


class MixEncoder(PyramidEncoder):
    """The encoder under SegFormer's and GLPN's names (`encoder.patch_embeddings.{i}`, `encoder.block.{i}.{j}`,
    `encoder.layer_norm.{i}`); every LayerNorm has PyTorch's default epsilon (1e-5), as there."""

    eps = 1e-5

    def __init__(self, config: Any) -> None:
        super().__init__()
        n = config.num_encoder_blocks
        self.patch_embeddings = nn.ModuleList(patch_embedding(config, i, self.eps) for i in range(n))
        self.block = nn.ModuleList(stage_blocks(config, i, self.eps, mix=True) for i in range(n))
        self.layer_norm = nn.ModuleList(nn.LayerNorm(config.hidden_sizes[i], eps=self.eps) for i in range(n))

    def stages(self) -> list[tuple[OverlapPatchEmbed, nn.ModuleList, nn.LayerNorm]]:
        return list(zip(self.patch_embeddings, self.block, self.layer_norm))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# The forward every pyramid model shares


class PyramidPreTrainedModel(PreTrainedModel):
    """The forward, written once: input check, the stages, the outputs asked for, then the class's `_head`.

    `nested_attentions`: PVTv2 returns attentions per stage (a tuple of stages, each a tuple of blocks), SegFormer
    and GLPN one flat tuple over all blocks, as transformers does for each.
    """

    nested_attentions = True
    layout_registry = registry
    # Batches the eager forward runs in pieces (more than one 224px image at stage 1) ran faster eagerly than any
    # compiled graph on the CPU (README "Speed"): `pvtkit.optimize` compiles batch 1 only.
    compiled_batch_limit = 1

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

    def _encoder(self) -> PyramidEncoder:
        return getattr(self, self.base_model_prefix, self).encoder  # a task model holds the encoder model

    def _forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        return_dict: bool | None,
    ) -> Any:
        c = self.config
        check_pixel_values(pixel_values.shape, c)
        keep_attn = c.output_attentions if output_attentions is None else output_attentions
        keep_hidden = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        out = self._encoder()(pixel_values, need_weights=keep_attn)
        hidden = tuple(h.contiguous() for h in out.hidden_states) if keep_hidden else None  # type: ignore[union-attr]
        attentions = out.attentions if keep_attn else None
        if attentions is not None and not self.nested_attentions:
            attentions = tuple(a for stage in attentions for a in stage)
        result = self._head(out, hidden, attentions, labels, pixel_values.shape[-2:])
        return result if (c.return_dict if return_dict is None else return_dict) else result.to_tuple()

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: torch.Tensor | None, size: Any) -> Any:
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Module:
        """The first stage's overlapping patch embedding (a strided conv and LayerNorm)."""
        return self._encoder().stages()[0][0]

    def depth_layers(self) -> list[list[nn.Module]]:
        """The encoder's modules by depth, as layer-wise learning-rate decay numbers them: layer 0 is the first
        patch embedding, then one layer per block over all stages; a later stage's patch embedding joins its first
        block, and each stage's closing LayerNorm its last. Everything else (the heads) comes after them."""
        layers: list[list[nn.Module]] = []
        for i, (embed, blocks, norm) in enumerate(self._encoder().stages()):
            if i == 0:
                layers.append([embed])
            for j, block in enumerate(blocks):
                layers.append([block, embed] if i and j == 0 else [block])
            layers[-1].append(norm)
        return layers

    def attention_layers(
        self, out: Any, pixel_values: torch.Tensor
    ) -> list[tuple[str, torch.Tensor, tuple[int, int], int]]:
        """Per stage, its last block's attention for the first image (from an output with attentions and hidden
        states); queries are the stage's map, keys its spatially reduced copy (7x7 with linear SRA); no prefix."""
        stages, depths = out.attentions, self.config.depths
        if not self.nested_attentions:  # flat over blocks: regroup by stage
            ends = torch.tensor(depths).cumsum(0).tolist()
            stages = [stages[end - d : end] for end, d in zip(ends, depths)]
        return [
            (f"stage {i + 1}", stage[-1][0], tuple(hidden.shape[-2:]), 0)
            for i, (stage, hidden) in enumerate(zip(stages, out.hidden_states))
        ]


class MixPreTrainedModel(PyramidPreTrainedModel):
    """What SegFormer's and GLPN's models share beyond the forward: attentions one flat tuple over all blocks, and
    transformers' initialisation for these families (normal, std `initializer_range`, for Linear and Conv alike;
    unit norms, fresh BatchNorm statistics), so a new decode head or decoder starts where transformers' does."""

    nested_attentions = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class PyramidModel(PyramidPreTrainedModel):
    """What every family's bare encoder model returns: `last_hidden_state`, the last stage's NCHW map (its
    `(B, N, C)` tokens when the config has `reshape_last_stage=False`, SegFormer's option), and the stage maps as
    `hidden_states` when asked for. A family's class builds `self.encoder`."""

    output_names = ("last_hidden_state",)

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: None, size: Any) -> BaseModelOutput:
        last = hidden[-1] if hidden else out.last_hidden_state.contiguous()  # one copy when both are returned
        if not getattr(self.config, "reshape_last_stage", True):
            last = last.flatten(2).transpose(1, 2)  # (B, N, C)
            hidden = hidden[:-1] + (last,) if hidden else hidden
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden, attentions=attentions)


class PyramidForImageClassification(PyramidPreTrainedModel):
    """The forward of every pyramid classifier (PVTv2's, SegFormer's): a linear classifier on the mean of the last
    stage's tokens (there is no [CLS] token); with `labels`, the loss `config.problem_type` names. A family's class
    builds its encoder model under its prefix and calls `_classifier(config)`."""

    head_prefixes = ("classifier.",)
    output_names = ("logits",)

    def _classifier(self, config: Any) -> None:
        """`num_labels` outputs on the last stage's width (0: no head, the pooled features are the logits)."""
        self.num_labels = n = config.num_labels
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

    def _head(
        self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: Any, size: Any
    ) -> ImageClassifierOutput:
        logits = self.classifier(out.last_hidden_state.mean(dim=(2, 3)))  # global average pool: (B, num_labels)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attentions)


class PyramidForSemanticSegmentation(PyramidPreTrainedModel):
    """The forward of every pyramid model with the all-MLP decode head (SegFormer's, PVTv2's): logits
    `(B, num_labels, H/4, W/4)`; with `labels`, `segmentation_loss`. A family's class builds its encoder model under
    its prefix and `decode_head = AllMlpDecodeHead(...)`; the config carries `num_labels`,
    `semantic_loss_ignore_index`."""

    head_prefixes = ("decode_head.",)
    label_head = "decode_head.classifier"
    output_names = ("logits",)
    decode_head: AllMlpDecodeHead

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SemanticSegmenterOutput | tuple:
        """`pixel_values` `(B, num_channels, H, W)`; `labels` `(B, H, W)` class indices (any size: the logits are
        upsampled to it for the loss)."""
        if labels is not None and self.config.num_labels < 1:
            raise ValueError(f"a segmentation loss needs num_labels >= 1, got {self.config.num_labels}")
        check_dense_input(pixel_values, self.config)
        return self._forward(pixel_values, labels, output_attentions, output_hidden_states, return_dict)

    def _head(
        self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: Any, size: Any
    ) -> SemanticSegmenterOutput:
        logits = self.decode_head(out.hidden_states)
        c = self.config
        loss = None if labels is None else segmentation_loss(logits, labels, c.num_labels, c.semantic_loss_ignore_index)
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attentions)


def check_dense_input(pixel_values: torch.Tensor, config: Any) -> None:
    """A dense head's output pixel stands for a first-stride square of the input: refuse an input smaller than
    that (the classifiers take any size)."""
    if pixel_values.ndim == 4 and min(pixel_values.shape[-2:]) < config.strides[0]:
        raise ValueError(
            f"pixel_values of size {tuple(pixel_values.shape[-2:])} (height, width) are smaller than the "
            f"first stage's stride {config.strides[0]}; expected both sides at least {config.strides[0]}"
        )


# ---------------------------------------------------------------------------------------------------------------
# What the families' specs share


def min_export_side(config: Any) -> int:
    """The smallest input side a `torch.export` program takes: torch.export traces PyTorch's convolutions with
    guards that no feature map is a single row or column (a size-1 dimension changes the memory-format decision),
    so every stage's map, and SRA's reduced copy of it, must be at least 2 long: 61 pixels for the standard
    strides and reduction ratios, 33 for linear SRA. ONNX files have no such limit."""
    linear = getattr(config, "linear_attention", False)
    for side in range(1, 1 << 16):
        n, fits = side, True
        for k, stride, r in zip(config.patch_sizes, config.strides, config.sr_ratios):
            n = (n + 2 * (k // 2) - k) // stride + 1
            fits = fits and n >= 2 and (n if linear or r == 1 else max(n, r) // r) >= 2
        if fits:
            return side
    raise ValueError("no input size fits this configuration")


def describe(config: Any, out: Any) -> dict[str, Any]:
    """Per stage: name, stride, channels, output shape, depth, heads, SR ratio, MLP ratio, attention kind."""
    strides = torch.tensor(config.strides).cumprod(0).tolist()
    linear = getattr(config, "linear_attention", False)
    return {
        "stages": [
            {
                "name": f"stage{i + 1}",
                "stride": strides[i],
                "channels": out.hidden_states[i].shape[1],
                "shape": list(out.hidden_states[i].shape[2:]),
                "depth": config.depths[i],
                "heads": config.num_attention_heads[i],
                "sr_ratio": config.sr_ratios[i],
                "mlp_ratio": config.mlp_ratios[i],
                "attention": "linear SRA (7x7 pool)" if linear else "SRA",
            }
            for i in range(config.num_encoder_blocks)
        ]
    }
