"""PVTv2's configuration and published variants: no PyTorch, shared by the PyTorch models
(`pvtkit.models.pvt_v2.modeling`) and the Keras ones (`pvtkit.keras`). The checkpoint layouts are in `conversion.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import BackboneConfigMixin
from ..pyramid.configuration import PyramidConfig, validate


class PvtV2Config(BackboneConfigMixin, PyramidConfig):
    """Configuration of a PVTv2 model; field names and defaults are transformers' (the defaults are PVTv2-B0).

    Args:
        image_size: Nominal input size (informative: the model runs at any size).
        mlp_ratios: MLP hidden width / hidden size, per stage (PVTv2-B0..B4: 8, 8, 4, 4).
        drop_path_rate: Stochastic depth rate, rising linearly from 0 over all blocks.
        qkv_bias: Bias in the query/key/value projections.
        linear_attention: Linear SRA (pool to 7x7 + 1x1 conv) instead of strided-conv SRA.
        out_features: Stages a backbone returns, by name (`stage1`..`stageN`).
        out_indices: The same, by index (0-based); give either, the other follows.
        **kwargs: The encoder's other fields (`PyramidConfig`: depths, hidden_sizes, sr_ratios, ...; every
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
        validate(self)

    variant_prefixes = ("pvt_v2_", "pvtv2_")
    variant_aliases = {"b2_li": "b2_linear", "b2li": "b2_linear"}


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
