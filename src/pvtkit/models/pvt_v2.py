"""Pyramid Vision Transformer v2 (PVTv2).

Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", https://arxiv.org/abs/2106.13797.

The pyramid encoder (`models/pyramid.py`, shared with SegFormer and GLPN) under PVTv2's module names, which are
transformers' (`pvt_v2.encoder.layers.0.blocks.0.attention.query.weight`, ...), so checkpoints move between the two
libraries with no conversion; timm's and the authors' layouts convert by the rules at the end of this file. Heads:
mean-pooled classifier, multi-scale backbone, and SegFormer's all-MLP decode head for semantic segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import convert
from ..config import BackboneConfigMixin
from ..modeling import BackboneMixin
from ..outputs import BackboneOutput, BaseModelOutput
from . import pyramid
from .family import Family, Layout, StateDict


class PvtV2Config(BackboneConfigMixin, pyramid.PyramidConfig):
    """Configuration of a PVTv2 model; field names and defaults are transformers' (the defaults are PVTv2-B0).

    Args:
        image_size: Nominal input size (informative: the model runs at any size).
        mlp_ratios: MLP hidden width / hidden size, per stage (PVTv2-B0..B4: 8, 8, 4, 4).
        drop_path_rate: Stochastic depth rate, rising linearly from 0 over all blocks.
        qkv_bias: Bias in the query/key/value projections.
        linear_attention: Linear SRA (pool to 7x7 + 1x1 conv) instead of strided-conv SRA.
        out_features: Stages a backbone returns, by name (`stage1`..`stageN`).
        out_indices: The same, by index (0-based); give either, the other follows.
        **kwargs: The encoder's other fields (`pyramid.PyramidConfig`: depths, hidden_sizes, sr_ratios, ...; every
            LayerNorm uses `layer_norm_eps`; `sr_ratios` are ignored with `linear_attention`) and the common ones
            of `PretrainedConfig` (num_labels, id2label, problem_type, ...).
    """

    model_type = "pvt_v2"
    title = "PVTv2"

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        linear_attention: bool = False,
        out_features: Sequence[str] | None = None,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("stage_names", None)  # derived from depths; transformers writes it
        super().__init__(mlp_ratios=mlp_ratios, drop_path_rate=drop_path_rate, **kwargs)
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.qkv_bias = bool(qkv_bias)
        self.linear_attention = bool(linear_attention)
        self.stage_names = [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self._set_stage_outputs(out_features, out_indices)
        self._validate()

    def _validate(self) -> None:
        pyramid.validate(self)

    variant_prefixes = ("pvt_v2_", "pvtv2_")
    variant_aliases = {"b2_li": "b2_linear", "b2li": "b2_linear"}


# ---------------------------------------------------------------------------------------------------------------
# The encoder under PVTv2's names


class Stage(nn.Module):
    """One stage's modules, under the names PVTv2 checkpoints use (`patch_embedding`, `blocks`, `layer_norm`)."""

    def __init__(self, config: PvtV2Config, index: int) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.patch_embedding = pyramid.patch_embedding(config, index, eps)
        self.blocks = pyramid.stage_blocks(config, index, eps)
        self.layer_norm = nn.LayerNorm(config.hidden_sizes[index], eps=eps)


class PvtV2Encoder(pyramid.PyramidEncoder):
    """The stages (`encoder.layers.{i}`); every LayerNorm uses `config.layer_norm_eps`, as transformers' PVTv2."""

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Stage(config, i) for i in range(config.num_encoder_blocks))

    def stages(self) -> list[tuple[Any, nn.ModuleList, nn.LayerNorm]]:
        return [(s.patch_embedding, s.blocks, s.layer_norm) for s in self.layers]


# ---------------------------------------------------------------------------------------------------------------
# Models and heads


class PvtV2PreTrainedModel(pyramid.PyramidPreTrainedModel):
    """PVTv2's config class and state-dict prefix; the forward is the pyramid one."""

    config_class = PvtV2Config
    base_model_prefix = "pvt_v2"


class PvtV2Model(PvtV2PreTrainedModel, pyramid.PyramidModel):
    """The PVTv2 encoder. `last_hidden_state` is the last stage's NCHW map `(B, C, H/32, W/32)`.

    Args:
        config: The architecture.
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.encoder = PvtV2Encoder(config)


class PvtV2ForImageClassification(PvtV2PreTrainedModel, pyramid.PyramidForImageClassification):
    """PVTv2 with a linear classifier on the mean of the last stage's tokens (there is no [CLS] token).

    Args:
        config: The architecture; `num_labels` sizes the head (0: no head, the pooled features are returned).
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        self.pvt_v2 = PvtV2Model(config)
        self._classifier(config)


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

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: None, size: Any) -> BackboneOutput:
        # the returned hidden states are contiguous already (no second copy); otherwise copy just these stages
        stages = hidden or out.hidden_states
        maps = tuple(stages[i].contiguous() for i in self.config.out_indices)  # type: ignore[index]
        return BackboneOutput(feature_maps=maps, hidden_states=hidden, attentions=attentions)


class PvtV2ForSemanticSegmentation(PvtV2PreTrainedModel, pyramid.PyramidForSemanticSegmentation):
    """PVTv2 with SegFormer's all-MLP decode head: logits `(B, num_labels, H/4, W/4)`; with `labels` `(B, H, W)`,
    SegFormer's loss (cross-entropy over the upsampled logits, `semantic_loss_ignore_index` ignored). An ImageNet
    PVTv2 checkpoint starts a segmentation fine-tune: its encoder loads, the head is new.

    Args:
        config: The architecture; the head reads `decoder_hidden_size` (256), `classifier_dropout_prob` (0.1) and
            `semantic_loss_ignore_index` (255), which are set on the config when missing.
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        for name, default in (("decoder_hidden_size", 256), ("classifier_dropout_prob", 0.1),
                              ("semantic_loss_ignore_index", 255)):  # fmt: skip
            setattr(config, name, getattr(config, name, default))
        self.pvt_v2 = PvtV2Model(config)
        self.decode_head = pyramid.AllMlpDecodeHead(config.hidden_sizes, config.decoder_hidden_size,
                                                    config.num_labels, config.classifier_dropout_prob)  # fmt: skip


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
    """PvtV2Config fields read off a transformers-named state dict."""
    s = convert.strip_prefix(state, "pvt_v2.")
    fields = pyramid.infer_stages(s, "encoder.layers.{}.patch_embedding.proj.weight", "encoder.layers.{}.blocks.{}.",
                                  "attention.spatial_reduction.weight")  # fmt: skip
    sr = s.get("encoder.layers.0.blocks.0.attention.spatial_reduction.weight")
    if sr is not None and sr.shape[-1] == 1:  # linear SRA: a 1x1 reduction conv everywhere; the published ratios
        n = fields["num_encoder_blocks"]
        fields.update(linear_attention=True, sr_ratios=[8, 4, 2, 1][:n] if n == 4 else [1] * n)
    fields["qkv_bias"] = "encoder.layers.0.blocks.0.attention.query.bias" in s
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    return fields


_EPS = {"layer_norm_eps": 1e-6}
FAMILY = Family(
    model_type="pvt_v2", config_class=PvtV2Config, processor="PvtImageProcessor",
    task_processors={"semantic-segmentation": "SegformerImageProcessor"},
    classes={"model": PvtV2Model, "image-classification": PvtV2ForImageClassification, "backbone": PvtV2Backbone,
             "semantic-segmentation": PvtV2ForSemanticSegmentation},
    layouts=(
        Layout("transformers", "pvt_v2", "encoder.layers.0.patch_embedding.proj.weight", convert.identity),
        Layout("timm", "pvt_v2", "stages.0.blocks.0.attn.q.weight", _converter(_TIMM_STAGES), _EPS),
        Layout("original", "pvt_v2", "patch_embed1.proj.weight", _converter(_ORIGINAL_STAGES), _EPS),
    ),
    infer_config=infer_config, min_export_side=pyramid.min_export_side, describe=pyramid.describe,
)  # fmt: skip
