"""SegFormer: semantic segmentation on the Mix Transformer (MiT) encoder, the PVTv2 encoder under other names.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
https://arxiv.org/abs/2105.15203.

The encoder is the pyramid encoder (`models/pyramid/`) with SegFormer's module names, which are the names
transformers writes to disk and the Hub's checkpoints carry (`segformer.encoder.block.0.0.attention.self.query`,
`decode_head.linear_c.0.proj`, ...), so `nvidia/mit-b0` .. `nvidia/segformer-b5-finetuned-cityscapes-1024-1024` load
as they are; the NVlabs release and mmsegmentation's MiT convert by the rules in `conversion.py`. MiT-B0..B5
differ from PVTv2-B0..B5 in their MLP ratios (4 everywhere) and LayerNorm epsilons (PyTorch's 1e-5 everywhere).
Heads: a mean-pooled classifier (the ImageNet MiT checkpoints) and the all-MLP decode head.
"""

from __future__ import annotations

from ..family import Family
from ..pyramid import modeling as pyramid
from .configuration import SegformerConfig
from .conversion import LAYOUTS, infer_config

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
        self.decode_head = pyramid.AllMlpDecodeHead(
            config.hidden_sizes, config.decoder_hidden_size, config.num_labels, config.classifier_dropout_prob
        )


FAMILY = Family(
    model_type="segformer",
    config_class=SegformerConfig,
    processor="SegformerImageProcessor",
    classes={
        "model": SegformerModel,
        "image-classification": SegformerForImageClassification,
        "semantic-segmentation": SegformerForSemanticSegmentation,
    },
    layouts=LAYOUTS,
    infer_config=infer_config,
    min_export_side=pyramid.min_export_side,
    describe=pyramid.describe,
)
