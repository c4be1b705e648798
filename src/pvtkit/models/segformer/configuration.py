"""SegFormer's configuration and published variants (MiT-B0..B5): no PyTorch."""

from __future__ import annotations

from typing import Any

from ..pyramid import configuration as pyramid_config


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
