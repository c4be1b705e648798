"""Deformable DETR: end-to-end object detection with multi-scale deformable attention.

Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
https://arxiv.org/abs/2010.04159.

A backbone's feature maps (any pvtkit backbone, PVTv2 first, or timm's ResNet) are projected to `d_model` and the
levels flattened into one token sequence; an encoder of deformable self-attention (each token samples a few points
per level near itself) refines it, and a decoder's object queries sample it around their reference points. A class
head and a box head read the decoder's output. As configured: iterative box refinement (each decoder layer's box
head moves the next layer's reference points) and two-stage (the queries are the encoder's best proposals). Module
names are the ones transformers writes, so checkpoints move between the libraries untouched (`conversion.py`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ... import cpu_kernels
from ...layers import MultiscaleDeformableAttention, attend, get_activation, map_to_tokens
from ...modeling import PreTrainedModel, checkpointed
from ...outputs import DeformableDetrModelOutput, DeformableDetrObjectDetectionOutput
from .. import family as registry
from ..family import Family
from ..resnet.configuration import TimmBackboneConfig
from ..resnet.modeling import FrozenBatchNorm2d, TimmResNet
from .configuration import VARIANTS, DeformableDetrConfig
from .conversion import LAYOUTS, infer_config, tie_heads

__all__ = ["VARIANTS", "DeformableDetrConfig", "DeformableDetrForObjectDetection", "DeformableDetrModel"]

logger = logging.getLogger("pvtkit")
Shapes = Sequence[tuple[int, int]]  # (h, w) of each feature level
Dropouts = tuple[float, float, float]  # after attention and MLP blocks, after the MLP activation, on attention weights
PRIOR_PROB = 0.01  # the class heads start at this score (focal loss' prior, as the original initialises them)


class Levels(NamedTuple):
    """The flattened feature levels attention samples: `tokens` `(B, S, d_model)` with `mask` `(B, S)` (True on
    real pixels), each level's `shapes` `(h, w)`, and `ratios` `(B, levels, 2)`: each level's real width and height
    as fractions of its map's."""

    tokens: torch.Tensor
    mask: torch.Tensor
    shapes: Shapes
    ratios: torch.Tensor


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_logits(delta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A box head's `(..., 4)` output made relative to reference points `(..., 2)` or boxes `(..., 4)` in 0..1: the
    box's logits (its sigmoid is the box)."""
    ref = inverse_sigmoid(ref)
    return torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1) if ref.shape[-1] == 2 else delta + ref


def pixel_centres(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """`(h*w, 2)`: the `(x, y)` pixel coordinates of a map's pixel centres, row-major."""
    ys = torch.arange(h, dtype=like.dtype, device=like.device)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=like.dtype, device=like.device)[None, :].expand(h, w)
    return torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5


def sine(x: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """`(...)` -> `(..., dim)`: interleaved sin and cos of `x` at `dim / 2` geometric frequencies (DETR's)."""
    steps = torch.arange(dim, dtype=torch.int64, device=x.device).float()
    x = x[..., None] / temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / dim)
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------------------------
# Layers


class PositionEmbedding(nn.Module):
    """A pixel's embedding: DETR's fixed one (`sine` of its row, then of its column, each counted over the real
    pixels and scaled to 0..2pi), or a learned one per column and per row (50 of each; columns first)."""

    def __init__(self, dim: int, learned: bool) -> None:
        super().__init__()
        self.dim = dim
        if learned:
            self.row_embeddings, self.column_embeddings = nn.Embedding(50, dim), nn.Embedding(50, dim)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """`mask` `(B, h, w)`, True on real pixels -> `(B, h*w, 2*dim)` tokens."""
        B, h, w = mask.shape
        if hasattr(self, "row_embeddings"):
            if not cpu_kernels.tracing() and max(h, w) > self.row_embeddings.num_embeddings:
                raise ValueError(f"learned position embeddings cover 50 x 50 pixels of a level, not {h} x {w}")
            x = self.column_embeddings(torch.arange(w, device=mask.device))[None].expand(h, -1, -1)  # (h, w, dim)
            y = self.row_embeddings(torch.arange(h, device=mask.device))[:, None].expand(-1, w, -1)
            return torch.cat([x, y], dim=-1).reshape(1, h * w, -1).expand(B, -1, -1)
        m = mask.float()
        y, x = m.cumsum(1), m.cumsum(2)
        y = (y - 0.5) / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
        x = (x - 0.5) / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
        return torch.cat([sine(y, self.dim), sine(x, self.dim)], -1).flatten(1, 2)


class SelfAttention(nn.Module):
    """Multi-head attention among the queries; queries and keys carry the position embedding, values do not."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, Any]:
        B, Q, dim = x.shape
        split = lambda t: t.view(B, Q, self.heads, -1).transpose(1, 2)  # noqa: E731  # (B, heads, Q, head_dim)
        qk = x + pos
        q, k, v = split(self.q_proj(qk)), split(self.k_proj(qk)), split(self.v_proj(x))
        out, weights = attend(q, k, v, self.dropout if self.training else 0.0, need_weights)
        return self.out_proj(out.transpose(1, 2).reshape(B, Q, dim)), weights


class _Layer(nn.Module):
    """Both layers' MLP, whose Linear layers sit on the layer itself (`fc1`, `fc2`: transformers' names on disk),
    and the dropout after each block."""

    def __init__(self, dim: int, hidden: int, act: str, drop: Dropouts) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act, (self.dropout, self.act_dropout, _) = get_activation(act), drop

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        # CPU inference runs the encoder's MLP a few thousand tokens at a time: the 4x wide hidden activation
        # (91 MB at 800x1333) then stays in cache (0.12 s instead of 0.26 s a layer on the 2-core EPYC)
        return cpu_kernels.in_pieces(self._ffn, x.reshape(-1, x.shape[-1]), 4 * self.fc1.out_features).view_as(x)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.relu(h, inplace=True) if self.act is F.relu else self.act(h)  # in place: no fresh 4x wide tensor
        return F.dropout(self.fc2(F.dropout(h, self.act_dropout, self.training)), self.dropout, self.training)


class EncoderLayer(_Layer):
    """Deformable self-attention over the levels' tokens, then the MLP; each residual, then LayerNorm."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn: int, act: str, drop: Dropouts) -> None:
        super().__init__(dim, ffn, act, drop)
        self.self_attn = MultiscaleDeformableAttention(dim, heads, levels, points)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, levels: Levels
    ) -> tuple[torch.Tensor, ...]:
        out, weights = self.self_attn(x + pos, ref, x, levels.mask, levels.shapes)
        x = self.self_attn_layer_norm(x + F.dropout(out, self.dropout, self.training))
        return self.final_layer_norm(x + self._mlp(x)), weights


class DecoderLayer(_Layer):
    """Self-attention among the queries, deformable cross-attention into the encoder's tokens, then the MLP."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn: int, act: str, drop: Dropouts) -> None:
        super().__init__(dim, ffn, act, drop)
        self.self_attn = SelfAttention(dim, heads, drop[2])
        self.encoder_attn = MultiscaleDeformableAttention(dim, heads, levels, points)
        self.self_attn_layer_norm, self.encoder_attn_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, memory: Levels, need_weights: bool) -> Any:
        out, self_weights = self.self_attn(x, pos, need_weights)
        x = self.self_attn_layer_norm(x + F.dropout(out, self.dropout, self.training))
        out, cross_weights = self.encoder_attn(x + pos, ref, memory.tokens, memory.mask, memory.shapes)
        x = self.encoder_attn_layer_norm(x + F.dropout(out, self.dropout, self.training))
        return self.final_layer_norm(x + self._mlp(x)), self_weights, cross_weights


class BoxHead(nn.Module):
    """A 3-layer MLP (ReLU) from a query to a box's `(cx, cy, w, h)` logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[2](F.relu(self.layers[1](F.relu(self.layers[0](x)))))


def _run(owner: nn.Module, layer: nn.Module, use_checkpoint: bool, *args: Any) -> Any:
    """`layer(*args)`, its activations recomputed in the backward (as `owner` was set up) when `use_checkpoint`."""
    return checkpointed(owner, layer, *args) if use_checkpoint else layer(*args)


# ---------------------------------------------------------------------------------------------------------------
# The encoder and the decoder


class Encoder(nn.Module):
    """The deformable encoder over the flattened levels; every token's reference point is its own pixel."""

    def __init__(self, layers: list[EncoderLayer], dropout: float) -> None:
        super().__init__()
        self.layers, self.dropout, self.gradient_checkpointing = nn.ModuleList(layers), dropout, False

    def forward(self, levels: Levels, pos: torch.Tensor, keep: bool) -> tuple[torch.Tensor, Any, tuple]:
        """`levels` and their `pos` `(B, S, d_model)` -> the encoded tokens, the hidden states (with `keep`) and the
        layers' attention weights."""
        x, ratios = F.dropout(levels.tokens, self.dropout, self.training), levels.ratios
        sizes = [torch.tensor([w, h], dtype=x.dtype, device=x.device) for h, w in levels.shapes]
        centres = [pixel_centres(h, w, x) / (ratios[:, None, i] * sizes[i]) for i, (h, w) in enumerate(levels.shapes)]
        ref = torch.cat(centres, 1)[:, :, None] * ratios[:, None]  # (B, S, levels, 2): 0..1 over the real part
        hidden, attentions = [x], []
        for layer in self.layers:
            x, weights = _run(self, layer, self.gradient_checkpointing and self.training, x, pos, ref, levels)
            hidden.append(x)
            attentions.append(weights)
        return x, (tuple(hidden) if keep else None), tuple(attentions)


class Decoder(nn.Module):
    """Queries with reference points (2-d points, boxes once refined) cross-attend the encoder's tokens.
    `bbox_embed` (box refinement) and `class_embed` (two-stage) are the detection model's per-layer heads."""

    def __init__(self, layers: list[DecoderLayer]) -> None:
        super().__init__()
        self.layers, self.gradient_checkpointing = nn.ModuleList(layers), False
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, memory: Levels, need_weights: bool) -> Any:
        """`x` `(B, Q, d_model)` queries with `pos` and `ref` `(B, Q, 2 or 4)` -> per layer: its output, its
        reference points (refined: boxes), and both attentions' weights."""
        states, refs, self_attn, cross_attn = [], [], [], []
        for i, layer in enumerate(self.layers):
            scale = torch.cat([memory.ratios] * (ref.shape[-1] // 2), -1)
            ref_in = ref[:, :, None] * scale[:, None]  # (B, Q, levels, 2 or 4), in the padded map's coordinates
            use_checkpoint = self.gradient_checkpointing and self.training
            x, sw, cw = _run(self, layer, use_checkpoint, x, pos, ref_in, memory, need_weights)
            if self.bbox_embed is not None:  # refinement: this layer's boxes are the next one's references
                ref = box_logits(self.bbox_embed[i](x), ref).sigmoid().detach()
            for kept, value in ((states, x), (refs, ref), (self_attn, sw), (cross_attn, cw)):
                kept.append(value)
        return states, refs, self_attn, cross_attn


# ---------------------------------------------------------------------------------------------------------------
# Models and heads


class DeformableDetrPreTrainedModel(PreTrainedModel):
    """Deformable DETR's config class, state-dict prefix and initialisation (the original's where transformers'
    differs: the sampling offsets' rays, the class heads' focal prior, zero box offsets)."""

    config_class = DeformableDetrConfig
    base_model_prefix = "model"
    layout_registry = registry

    def init_weights(self) -> None:
        for module in self.modules():  # generic first: the inits below overwrite their submodules'
            super()._init_weights(module)
        for module in self.modules():
            self._init_detr(module)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        self._init_detr(module)

    @torch.no_grad()
    def _init_detr(self, module: nn.Module) -> None:
        if isinstance(module, (MultiscaleDeformableAttention, FrozenBatchNorm2d)):
            module.reset_parameters()
        elif isinstance(module, PositionEmbedding):
            for table in module.children():
                nn.init.uniform_(table.weight)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, DeformableDetrModel):
            nn.init.normal_(module.level_embed)
            layers = [p[0] for p in module.input_proj]
            if not self.config.two_stage:
                nn.init.normal_(module.query_position_embeddings.weight)
                layers.append(module.reference_points)
            for layer in layers:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)


class DeformableDetrModel(DeformableDetrPreTrainedModel):
    """The backbone, the input projections and the deformable encoder-decoder; `last_hidden_state` is the decoder's
    output `(B, num_queries, d_model)`. Two-stage needs the detection heads (`DeformableDetrForObjectDetection`).

    Args:
        config: The architecture.
    """

    output_names = ("last_hidden_state",)

    def __init__(self, config: DeformableDetrConfig) -> None:
        super().__init__(config)
        c, d, levels = config, config.d_model, config.num_feature_levels
        # timm's ResNet or the backbone family's class, at transformers' name on disk: `backbone.conv_encoder.model`
        b = c.backbone_config
        backbone = (
            TimmResNet(b) if isinstance(b, TimmBackboneConfig) else registry.get(b.model_type).classes["backbone"](b)
        )
        self.backbone = nn.Module()
        self.backbone.conv_encoder = nn.Module()
        self.backbone.conv_encoder.model = backbone
        self.position_embedding = PositionEmbedding(d // 2, learned=c.position_embedding_type == "learned")
        channels = c.backbone_channels
        projections = [nn.Sequential(nn.Conv2d(ch, d, 1), nn.GroupNorm(32, d)) for ch in channels]
        for i in range(levels - len(channels)):  # the extra levels: stride-2 convs from the last map on
            projections.append(nn.Sequential(nn.Conv2d(d if i else channels[-1], d, 3, 2, 1), nn.GroupNorm(32, d)))
        self.input_proj = nn.ModuleList(projections)
        if not c.two_stage:
            self.query_position_embeddings = nn.Embedding(c.num_queries, 2 * d)
        act, drop = c.activation_function, (c.dropout, c.activation_dropout, c.attention_dropout)
        enc = (d, c.encoder_attention_heads, levels, c.encoder_n_points, c.encoder_ffn_dim, act, drop)
        dec = (d, c.decoder_attention_heads, levels, c.decoder_n_points, c.decoder_ffn_dim, act, drop)
        self.encoder = Encoder([EncoderLayer(*enc) for _ in range(c.encoder_layers)], c.dropout)
        self.decoder = Decoder([DecoderLayer(*dec) for _ in range(c.decoder_layers)])
        self.level_embed = nn.Parameter(torch.empty(levels, d))
        if c.two_stage:
            self.enc_output, self.enc_output_norm = nn.Linear(d, d), nn.LayerNorm(d)
            self.pos_trans, self.pos_trans_norm = nn.Linear(2 * d, 2 * d), nn.LayerNorm(2 * d)
        else:
            self.reference_points = nn.Linear(d, 2)

    def freeze_backbone(self) -> None:
        """Stop training the backbone (`requires_grad` False on all its parameters)."""
        self.backbone.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Train all of the backbone (the timm ResNet's stem and `layer1` too)."""
        self.backbone.requires_grad_(True)

    def _proposals(self, memory: Levels, batch: int) -> tuple[torch.Tensor, ...]:
        """Two-stage: score every real token as a box (size 0.05 x 2^level at its pixel, refined by the last box
        head); the top `two_stage_num_proposals` are the queries. -> query position, query, reference boxes, and
        every token's class logits and box logits (padding and boxes reaching the image's edge: inf)."""
        boxes, d = [], self.config.d_model
        for level, (m, (h, w)) in enumerate(
            zip(memory.mask.split([h * w for h, w in memory.shapes], 1), memory.shapes)
        ):
            m = m.view(batch, h, w)
            real = torch.stack([m[:, 0, :].sum(1), m[:, :, 0].sum(1)], -1)[:, None]  # (B, 1, [w, h]) real pixels
            centre = pixel_centres(h, w, memory.tokens) / real  # (B, h*w, 2)
            boxes.append(torch.cat([centre, torch.full_like(centre, 0.05 * 2.0**level)], -1))
        box = torch.cat(boxes, 1)
        valid = ((box > 0.01) & (box < 0.99)).all(-1, keepdim=True) & memory.mask[..., None]
        query = self.enc_output_norm(self.enc_output(memory.tokens.masked_fill(~valid, 0.0)))
        enc_class = self.decoder.class_embed[-1](query)  # type: ignore[index]  # (B, S, num_labels)
        proposals = torch.log(box / (1 - box)).masked_fill(~valid, float("inf"))  # box logits, inf: none
        enc_coords = self.decoder.bbox_embed[-1](query) + proposals  # type: ignore[index]
        # at most as many proposals as tokens (a small image has fewer than two_stage_num_proposals)
        k = min(self.config.two_stage_num_proposals, enc_class.shape[1])
        top = torch.topk(enc_class[..., 0], k, dim=1).indices  # (B, K)
        coords = torch.gather(enc_coords, 1, top[..., None].expand(-1, -1, 4)).detach()
        embedded = sine(coords.sigmoid().float() * (2 * math.pi), d // 2).flatten(2).to(coords.dtype)  # (B, K, 2d)
        query_pos, target = self.pos_trans_norm(self.pos_trans(embedded)).split(d, 2)
        return query_pos, target, coords.sigmoid(), enc_class, enc_coords

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """`pixel_values` `(B, num_channels, H, W)`; `pixel_mask` `(B, H, W)`, 1 on real pixels, 0 on padding
        (default: all real); the flags override the config's defaults."""
        if any(v is not None for v in kwargs.values()):  # transformers' encoder_outputs, inputs_embeds, ...
            raise TypeError(f"{type(self).__name__}.forward does not take {', '.join(kwargs)}")
        c = self.config
        need_weights = c.output_attentions if output_attentions is None else output_attentions
        keep = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        B, _, H, W = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(B, H, W, dtype=torch.long, device=pixel_values.device)
        maps = self.backbone.conv_encoder.model(pixel_values)
        maps = list(maps.feature_maps if hasattr(maps, "feature_maps") else maps)
        levels = [proj(x) for proj, x in zip(self.input_proj, maps)]  # then the extra levels, from the last map on
        for proj in self.input_proj[len(maps) :]:
            levels.append(proj(maps[-1] if len(levels) == len(maps) else levels[-1]))
        shapes = [(x.shape[-2], x.shape[-1]) for x in levels]
        masks = [F.interpolate(pixel_mask[None].float(), size=s).to(torch.bool)[0] for s in shapes]  # (B, h, w)
        tokens = torch.cat([map_to_tokens(x) for x in levels], 1)  # (B, S, d_model)
        pos = torch.cat([self.position_embedding(m).to(tokens.dtype) + e for m, e in zip(masks, self.level_embed)], 1)
        real = [torch.stack([m[:, 0, :].sum(1) / m.shape[2], m[:, :, 0].sum(1) / m.shape[1]], -1) for m in masks]
        mask = torch.cat([m.flatten(1) for m in masks], 1)  # (B, S), True on real pixels
        ratios = torch.stack(real, 1).to(tokens.dtype)  # (B, levels, 2)
        memory, enc_hidden, enc_attn = self.encoder(Levels(tokens, mask, shapes, ratios), pos, keep)
        encoded = Levels(memory, mask, shapes, ratios)
        enc_class = enc_coords = None
        if c.two_stage:
            if self.decoder.class_embed is None:
                raise ValueError("two-stage scores proposals with the heads: use DeformableDetrForObjectDetection")
            query_pos, target, ref, enc_class, enc_coords = self._proposals(encoded, B)
        else:
            query_pos, target = self.query_position_embeddings.weight.split(c.d_model, 1)  # (Q, d_model) each
            query_pos, target = query_pos[None].expand(B, -1, -1), target[None].expand(B, -1, -1)
            ref = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        states, refs, self_attn, cross_attn = self.decoder(target, query_pos, ref, encoded, need_weights)
        out = DeformableDetrModelOutput(
            init_reference_points=ref,
            last_hidden_state=states[-1],
            intermediate_hidden_states=torch.stack(states, 1),
            intermediate_reference_points=torch.stack(refs, 1),
            decoder_hidden_states=(target, *states) if keep else None,
            decoder_attentions=tuple(self_attn) if need_weights else None,
            cross_attentions=tuple(cross_attn) if need_weights else None,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=enc_hidden,
            encoder_attentions=enc_attn if need_weights else None,
            enc_outputs_class=enc_class,
            enc_outputs_coord_logits=enc_coords,
        )
        return out if (c.return_dict if return_dict is None else return_dict) else out.to_tuple()


class DeformableDetrForObjectDetection(DeformableDetrPreTrainedModel):
    """Deformable DETR with its heads: per query, class logits (sigmoid scores, `num_labels` classes, no "no
    object" class) and a box `(cx, cy, w, h)` normalised to the image; with `labels`, the Hungarian-matched loss.

    Without box refinement one class head and one box head serve every decoder layer (`class_embed.0`,
    `bbox_embed.0`); with it each layer has its own, the box heads the decoder's (`model.decoder.bbox_embed`: they
    move its reference points); two-stage adds one of each for the proposals, the class heads the decoder's too. So
    the state dict holds every head once, under the name transformers writes.

    Args:
        config: The architecture; `num_labels` sizes the class heads.
    """

    output_names = ("logits", "pred_boxes")
    head_prefixes = ("class_embed.", "bbox_embed.", "model.decoder.class_embed.", "model.decoder.bbox_embed.")

    def __init__(self, config: DeformableDetrConfig) -> None:
        super().__init__(config)
        self.model = DeformableDetrModel(config)
        per_kind = config.decoder_layers + int(config.two_stage) if config.with_box_refine else 1
        boxes = nn.ModuleList(BoxHead(config.d_model) for _ in range(per_kind))
        if config.with_box_refine:
            self.model.decoder.bbox_embed = boxes
        else:
            self.bbox_embed = boxes
        self._new_class_heads(config.num_labels)

    def _new_class_heads(self, num_labels: int) -> None:
        boxes = self.model.decoder.bbox_embed if self.config.with_box_refine else self.bbox_embed
        heads = nn.ModuleList(nn.Linear(self.config.d_model, num_labels) for _ in boxes)  # one per box head
        if self.config.two_stage:
            self.model.decoder.class_embed = heads
        else:
            self.class_embed = heads

    @property
    def heads(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        """The class heads and the box heads: one per decoder layer (and the proposals'), or one for every layer."""
        decoder, c = self.model.decoder, self.config
        return (
            decoder.class_embed if c.two_stage else self.class_embed,
            decoder.bbox_embed if c.with_box_refine else self.bbox_embed,
        )

    def _load_checkpoint_state(self, state: dict[str, torch.Tensor], source: str, **kwargs: Any) -> dict[str, Any]:
        return super()._load_checkpoint_state(tie_heads(state, self.state_dict()), source, **kwargs)

    @torch.no_grad()
    def _init_detr(self, module: nn.Module) -> None:
        super()._init_detr(module)
        if any(module is head for head in self.heads[0]):  # focal loss' prior: every score starts at 0.01
            nn.init.constant_(module.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        elif any(module is head for head in self.heads[1]):
            nn.init.zeros_(module.layers[2].weight)
            nn.init.zeros_(module.layers[2].bias)
            if module is self.heads[1][0] and not self.config.two_stage:
                nn.init.constant_(module.layers[2].bias[2:], -2.0)  # small first boxes (the original's)

    def set_labels(self, labels: Sequence[str], keep_order: bool = False) -> None:
        """Give the detector these class names; class heads of another size are replaced by fresh ones."""
        config, labels = self.config, [str(label) for label in labels]
        current = [str(config.id2label[i]) for i in range(config.num_labels)]
        if (current == labels) if keep_order else (sorted(current) == sorted(labels)):
            return
        if len(labels) != len(current):
            like = self.heads[0][0].weight
            self._new_class_heads(len(labels))
            for head in self.heads[0].to(like.device, like.dtype):
                self._init_weights(head)
            logger.warning("replaced the detector's %d-class heads with new %d-class heads", len(current), len(labels))
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """`pixel_values` `(B, num_channels, H, W)`, `pixel_mask` `(B, H, W)` (1: real pixel); `labels`, one dict
        per image: `class_labels` `(n,)` and `boxes` `(n, 4)` `(cx, cy, w, h)` normalised."""
        out = self.model(pixel_values, pixel_mask, output_attentions, output_hidden_states, True, **kwargs)
        states, refs = out.intermediate_hidden_states, out.intermediate_reference_points
        n, (class_heads, box_heads) = states.shape[1], self.heads
        classes, boxes = [], []
        for i in range(n) if labels is not None else [n - 1]:  # inference reads the last layer only
            ref = out.init_reference_points if i == 0 else refs[:, i - 1]
            head = min(i, len(box_heads) - 1)
            classes.append(class_heads[head](states[:, i]))
            boxes.append(box_logits(box_heads[head](states[:, i]), ref).sigmoid())
        loss = loss_dict = auxiliary = None
        if labels is not None:
            from .loss import detection_loss  # SciPy's matcher, loaded only to train

            stacked = (torch.stack(classes), torch.stack(boxes), out.enc_outputs_class, out.enc_outputs_coord_logits)
            loss, loss_dict, auxiliary = detection_loss(classes[-1], labels, boxes[-1], self.config, *stacked)
        fields = DeformableDetrObjectDetectionOutput.__dataclass_fields__
        result = DeformableDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=classes[-1],
            pred_boxes=boxes[-1],
            auxiliary_outputs=auxiliary,
            **{k: v for k, v in out.items() if k in fields},
        )
        return result if (self.config.return_dict if return_dict is None else return_dict) else result.to_tuple()


def min_export_side(config: DeformableDetrConfig) -> int:
    """The smallest input side a `torch.export` program takes: the backbone's, and every level at least 2 long (the
    extra levels halve the deepest map; a 1-long map makes the export specialise)."""
    backbone = config.backbone_config
    family = registry.families().get(backbone.model_type)
    low = family.min_export_side(backbone) if family is not None else 64
    deepest = 2 ** (config.num_feature_levels - len(config.backbone_channels)) * 32
    return max(low, 2 * deepest)


FAMILY = Family(
    model_type="deformable_detr",
    config_class=DeformableDetrConfig,
    processor="DeformableDetrImageProcessor",
    classes={"model": DeformableDetrModel, "object-detection": DeformableDetrForObjectDetection},
    layouts=LAYOUTS,
    infer_config=infer_config,
    min_export_side=min_export_side,
)
