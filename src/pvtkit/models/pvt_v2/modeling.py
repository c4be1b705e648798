"""Pyramid Vision Transformer v2 (PVTv2).

Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", https://arxiv.org/abs/2106.13797.

The pyramid encoder (`models/pyramid/`, shared with SegFormer and GLPN) under PVTv2's module names, which are
transformers' (`pvt_v2.encoder.layers.0.blocks.0.attention.query.weight`, ...), so checkpoints move between the two
libraries with no conversion; timm's and the authors' layouts convert by the rules in `conversion.py`. Heads:
mean-pooled classifier, multi-scale backbone, SegFormer's all-MLP decode head for semantic segmentation, and GLPN's
decoder and depth head for monocular depth estimation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...modeling import BackboneMixin
from ...outputs import BackboneOutput, BaseModelOutput
from ..family import Family
from ..glpn import modeling as glpn
from ..pyramid import modeling as pyramid
from .configuration import VARIANTS, PvtV2Config
from .conversion import LAYOUTS, infer_config

__all__ = [
    "VARIANTS",
    "PvtV2Backbone",
    "PvtV2Config",
    "PvtV2ForDepthEstimation",
    "PvtV2ForImageClassification",
    "PvtV2ForSemanticSegmentation",
    "PvtV2Model",
]


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
        for name, default in (
            ("decoder_hidden_size", 256),
            ("classifier_dropout_prob", 0.1),
            ("semantic_loss_ignore_index", 255),
        ):
            setattr(config, name, getattr(config, name, default))
        self.pvt_v2 = PvtV2Model(config)
        self.decode_head = pyramid.AllMlpDecodeHead(
            config.hidden_sizes, config.decoder_hidden_size, config.num_labels, config.classifier_dropout_prob
        )


class PvtV2ForDepthEstimation(PvtV2PreTrainedModel, glpn.DepthEstimation):
    """PVTv2 with GLPN's decoder and depth head: `predicted_depth` `(B, H, W)` in `[0, max_depth]`; with `labels`
    `(B, H, W)` (0: no ground truth), GLPN's scale-invariant log loss over the valid pixels. An ImageNet PVTv2
    checkpoint starts a depth fine-tune: its encoder loads (`pvt_v2.`), the decoder and head (`decoder.`, `head.`,
    GLPN's names) are new.

    Args:
        config: The architecture; the decoder and head read `decoder_hidden_size` (GLPN's 64) and `max_depth`
            (GLPN's 10), which are set on the config when missing (as the segmentation model's head fields).
    """

    def __init__(self, config: PvtV2Config) -> None:
        super().__init__(config)
        for name, default in (("decoder_hidden_size", 64), ("max_depth", 10)):
            setattr(config, name, getattr(config, name, default))
        width, max_depth = config.decoder_hidden_size, config.max_depth
        if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"PvtV2ForDepthEstimation: decoder_hidden_size must be an even int >= 2, got {width!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, (int, float)) or not max_depth > 0:
            raise ValueError(f"PvtV2ForDepthEstimation: max_depth must be a positive number, got {max_depth!r}")
        # as GLPNConfig: whole depths are written as ints
        config.max_depth = int(max_depth) if float(max_depth).is_integer() else float(max_depth)
        self.pvt_v2 = PvtV2Model(config)
        self.decoder = glpn.GLPNDecoder(config)
        self.head = glpn.DepthHead(config)


FAMILY = Family(
    model_type="pvt_v2",
    config_class=PvtV2Config,
    processor="PvtImageProcessor",
    # Dense heads take their own family's processor: SegFormer's (512x512), and GLPN's for depth (the image's own
    # aspect, sides rounded down to multiples of 32, as the depth data, metrics and pipeline expect).
    task_processors={"semantic-segmentation": "SegformerImageProcessor", "depth-estimation": "GLPNImageProcessor"},
    classes={
        "model": PvtV2Model,
        "image-classification": PvtV2ForImageClassification,
        "backbone": PvtV2Backbone,
        "semantic-segmentation": PvtV2ForSemanticSegmentation,
        "depth-estimation": PvtV2ForDepthEstimation,
    },
    layouts=LAYOUTS,
    infer_config=infer_config,
    min_export_side=pyramid.min_export_side,
    describe=pyramid.describe,
)
