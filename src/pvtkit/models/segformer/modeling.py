"""SegFormer: semantic segmentation on the Mix Transformer (MiT) encoder, the PVTv2 encoder under other names.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
https://arxiv.org/abs/2105.15203.

The encoder is the pyramid encoder (`models/pyramid.py`) with SegFormer's module names, which are the names
transformers writes to disk and the Hub's checkpoints carry (`segformer.encoder.block.0.0.attention.self.query`,
`decode_head.linear_c.0.proj`, ...), so `nvidia/mit-b0` .. `nvidia/segformer-b5-finetuned-cityscapes-1024-1024` load
as they are; the NVlabs release and mmsegmentation's MiT convert by the rules at the end of this file. MiT-B0..B5
differ from PVTv2-B0..B5 in their MLP ratios (4 everywhere) and LayerNorm epsilons (PyTorch's 1e-5 everywhere).
Heads: a mean-pooled classifier (the ImageNet MiT checkpoints) and the all-MLP decode head.
"""

from __future__ import annotations

import logging
from typing import Any


from .. import convert
from . import pyramid, pyramid_config
from .family import Family, Layout, StateDict

logger = logging.getLogger("pvtkit")


class SegformerConfig(pyramid_config.PyramidConfig):
    """Configuration of a SegFormer model; field names and defaults are transformers' (MiT-B0, 256-wide head).

    Args:
        classifier_dropout_prob: Dropout before the decode head's classifier.
        decoder_hidden_size: Width of the all-MLP decode head.
        semantic_loss_ignore_index: Label value the segmentation loss ignores.
        reshape_last_stage: Return the last stage as an NCHW map (True) or as `(B, N, C)` tokens.
        **kwargs: The encoder's fields (`pyramid_config.PyramidConfig`) and the common ones (num_labels, id2label, ...).
    """

    model_type = "segformer"
    title = "SegFormer"
    variant_prefixes = ("mit_", "segformer_", "nvidia/mit_")

    def __init__(
        self,
        classifier_dropout_prob: float = 0.1,
        decoder_hidden_size: int = 256,
        semantic_loss_ignore_index: int = 255,
        reshape_last_stage: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.classifier_dropout_prob = float(classifier_dropout_prob)
        self.decoder_hidden_size = int(decoder_hidden_size)
        self.semantic_loss_ignore_index = int(semantic_loss_ignore_index)
        self.reshape_last_stage = bool(reshape_last_stage)
        if self.decoder_hidden_size <= 0:
            raise ValueError(f"SegformerConfig: decoder_hidden_size must be positive, got {self.decoder_hidden_size}")


# ---------------------------------------------------------------------------------------------------------------
# Models and heads


class SegformerPreTrainedModel(pyramid.MixPreTrainedModel):
    """SegFormer's config class and state-dict prefix; the forward is the pyramid one, attentions one flat tuple
    over all blocks, as transformers returns them."""

    config_class = SegformerConfig
    base_model_prefix = "segformer"


class SegformerModel(SegformerPreTrainedModel, pyramid.PyramidModel):
    """The MiT encoder. `last_hidden_state` is the last stage's NCHW map `(B, C, H/32, W/32)` (its `(B, N, C)`
    tokens with `reshape_last_stage=False`); `hidden_states` one map per stage.

    Args:
        config: The architecture.
    """

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__(config)
        self.encoder = pyramid.MixEncoder(config)


class SegformerForImageClassification(SegformerPreTrainedModel, pyramid.PyramidForImageClassification):
    """The MiT encoder with a linear classifier on the mean of the last stage's tokens (`nvidia/mit-b*`).

    Args:
        config: The architecture; `num_labels` sizes the head.
    """

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__(config)
        self.segformer = SegformerModel(config)
        self._classifier(config)


class SegformerForSemanticSegmentation(SegformerPreTrainedModel, pyramid.PyramidForSemanticSegmentation):
    """The MiT encoder with the all-MLP decode head: logits `(B, num_labels, H/4, W/4)`; with `labels` `(B, H, W)`,
    cross-entropy over the logits upsampled to the labels' size (`semantic_loss_ignore_index` ignored), or
    BCE-with-logits for one label, as transformers computes them.

    Args:
        config: The architecture; `num_labels` classes, `decoder_hidden_size` wide head.
    """

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__(config)
        self.segformer = SegformerModel(config)
        self.decode_head = pyramid.AllMlpDecodeHead(config.hidden_sizes, config.decoder_hidden_size,
                                                    config.num_labels, config.classifier_dropout_prob)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The published variants: MiT-B0..B5 (Table 1 of the paper), with the decode head's width SegFormer uses for each.

_WIDE = {"hidden_sizes": (64, 128, 320, 512), "decoder_hidden_size": 768}
VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"depths": (2, 2, 2, 2), "hidden_sizes": (32, 64, 160, 256), "decoder_hidden_size": 256},
    "b1": {"depths": (2, 2, 2, 2), "hidden_sizes": (64, 128, 320, 512), "decoder_hidden_size": 256},
    "b2": {"depths": (3, 4, 6, 3), **_WIDE},
    "b3": {"depths": (3, 4, 18, 3), **_WIDE},
    "b4": {"depths": (3, 8, 27, 3), **_WIDE},
    "b5": {"depths": (3, 6, 40, 3), **_WIDE},
}
SegformerConfig.variants = VARIANTS


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: the NVlabs release (`backbone.patch_embed1`, `decode_head.linear_c1`, mmsegmentation 0.x) and
# mmsegmentation 1.x's MixVisionTransformer (`backbone.layers.0.1.0.attn.attn.in_proj_weight`) -> transformers'.

_NVLABS_RULES = [
    (r"^backbone\.patch_embed(\d)\.", lambda m: f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}."),
    (r"^backbone\.block(\d)\.(\d+)\.", lambda m: f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}."),
    (r"^backbone\.norm(\d)\.", lambda m: f"segformer.encoder.layer_norm.{int(m[1]) - 1}."),
    (r"^decode_head\.linear_c(\d)\.proj\.", lambda m: f"decode_head.linear_c.{int(m[1]) - 1}.proj."),
    (r"^decode_head\.linear_fuse\.conv\.", lambda m: "decode_head.linear_fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", lambda m: "decode_head.batch_norm."),
    (r"^decode_head\.linear_pred\.", lambda m: "decode_head.classifier."),
    (r"^backbone\.head\.", lambda m: "classifier."),
]  # fmt: skip
_NVLABS_STAGES = convert.stage_renamer(_NVLABS_RULES)
_NVLABS_BLOCK: convert.Rules = [
    (r"\.norm1\.", ".layer_norm_1."), (r"\.norm2\.", ".layer_norm_2."), (r"\.attn\.q\.", ".attention.self.query."),
    (r"\.attn\.kv\.", ".attention.self.kv."), (r"\.attn\.sr\.", ".attention.self.sr."),
    (r"\.attn\.norm\.", ".attention.self.layer_norm."), (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."), (r"\.mlp\.fc2\.", ".mlp.dense2."),
]  # fmt: skip


def from_nvlabs(state: StateDict) -> StateDict:
    """The NVlabs/SegFormer release (`backbone.` + `decode_head.`, or a bare MiT with `head.`) -> transformers'.
    The `decode_head.conv_seg` every mmseg 0.x head carries is unused by SegFormer's head and dropped. NVlabs' MiT
    has LayerNorm epsilon 1e-6 in its blocks, transformers 1e-5: outputs drift by ~1e-6 relative."""
    prefixed = {k if k.startswith(("backbone.", "decode_head.")) else "backbone." + k: v for k, v in state.items()
                if not k.startswith("decode_head.conv_seg.")}  # fmt: skip
    state = convert.rename(_NVLABS_STAGES(prefixed), _NVLABS_BLOCK)
    return convert.split(state, "attention.self.kv", ("attention.self.key", "attention.self.value"))


_MMSEG_RULES = [
    (r"^layers\.(\d+)\.0\.projection\.", r"segformer.encoder.patch_embeddings.\1.proj."),
    (r"^layers\.(\d+)\.0\.norm\.", r"segformer.encoder.patch_embeddings.\1.layer_norm."),
    (r"^layers\.(\d+)\.1\.(\d+)\.norm1\.", r"segformer.encoder.block.\1.\2.layer_norm_1."),
    (r"^layers\.(\d+)\.1\.(\d+)\.norm2\.", r"segformer.encoder.block.\1.\2.layer_norm_2."),
    (r"^layers\.(\d+)\.1\.(\d+)\.attn\.attn\.in_proj_", r"segformer.encoder.block.\1.\2.attention.self.qkv."),
    (r"^layers\.(\d+)\.1\.(\d+)\.attn\.attn\.out_proj\.", r"segformer.encoder.block.\1.\2.attention.output.dense."),
    (r"^layers\.(\d+)\.1\.(\d+)\.attn\.sr\.", r"segformer.encoder.block.\1.\2.attention.self.sr."),
    (r"^layers\.(\d+)\.1\.(\d+)\.attn\.norm\.", r"segformer.encoder.block.\1.\2.attention.self.layer_norm."),
    (r"^layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.0\.", r"segformer.encoder.block.\1.\2.mlp.dense1."),
    (r"^layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.1\.", r"segformer.encoder.block.\1.\2.mlp.dwconv.dwconv."),
    (r"^layers\.(\d+)\.1\.(\d+)\.ffn\.layers\.4\.", r"segformer.encoder.block.\1.\2.mlp.dense2."),
    (r"^layers\.(\d+)\.2\.", r"segformer.encoder.layer_norm.\1."),
]


def from_mmseg(state: StateDict) -> StateDict:
    """mmsegmentation 1.x's MixVisionTransformer backbone -> transformers' SegFormer encoder. Its SegformerHead has
    a BatchNorm after every stage's projection, which transformers' head has no place for: the head is left out,
    with a warning, and the encoder starts a fine-tune. (mmseg's LayerNorms have epsilon 1e-6, transformers' 1e-5.)"""
    head = [k for k in state if k.startswith("decode_head.")]
    if head:
        logger.warning("mmsegmentation's SegformerHead (%d tensors: %s, ...) has per-stage BatchNorms that "
                       "transformers' decode head does not: only the MiT encoder converts",
                       len(head), head[0])  # fmt: skip
    renamed = convert.rename({k.removeprefix("backbone."): v for k, v in state.items() if k not in head}, _MMSEG_RULES)
    for k, v in renamed.items():  # the MLP's 1x1 convs are Linear layers here: (out, in, 1, 1) -> (out, in)
        if k.endswith((".mlp.dense1.weight", ".mlp.dense2.weight")) and v.ndim == 4:
            renamed[k] = v[:, :, 0, 0]
    return convert.split(renamed, "attention.self.qkv", ("attention.self.query", "attention.self.key",
                                                         "attention.self.value"))  # fmt: skip


def infer_config(state: StateDict) -> dict[str, Any]:
    """SegformerConfig fields read off a transformers-named state dict."""
    s = convert.strip_prefix(state, "segformer.")
    fields = pyramid_config.infer_stages(s, "encoder.patch_embeddings.{}.proj.weight", "encoder.block.{}.{}.",
                                  "attention.self.sr.weight")  # fmt: skip
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    if "decode_head.classifier.weight" in state:
        fields["num_labels"] = state["decode_head.classifier.weight"].shape[0]
        fields["decoder_hidden_size"] = state["decode_head.classifier.weight"].shape[1]
    return fields


FAMILY = Family(
    model_type="segformer", config_class=SegformerConfig, processor="SegformerImageProcessor",
    classes={"model": SegformerModel, "image-classification": SegformerForImageClassification,
             "semantic-segmentation": SegformerForSemanticSegmentation},
    layouts=(
        Layout("transformers", "segformer", "encoder.patch_embeddings.0.proj.weight", convert.identity),
        Layout("nvlabs", "segformer", "decode_head.linear_c1.proj.weight", from_nvlabs),
        Layout("mmseg", "segformer", "backbone.layers.0.1.0.attn.attn.in_proj_weight", from_mmseg),
        Layout("mmseg", "segformer", "layers.0.1.0.attn.attn.in_proj_weight", from_mmseg),
        Layout("nvlabs", "segformer", "patch_embed1.proj.weight", from_nvlabs),  # a bare MiT: after PVTv2's reading
    ),
    infer_config=infer_config, min_export_side=pyramid.min_export_side, describe=pyramid.describe,
)  # fmt: skip
