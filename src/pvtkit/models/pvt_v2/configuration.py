"""PVTv2's configuration, published variants and checkpoint layouts (timm's, the authors' whai362/PVT): the part
of the family that needs no PyTorch, shared by the PyTorch models (`pvtkit.models.pvt_v2`) and the Keras ones
(`pvtkit.keras`). The converters are pure `dict -> dict` functions over arrays of any framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import convert
from ..config import BackboneConfigMixin
from .family import Layout, StateDict
from .pyramid_config import PyramidConfig, infer_stages, validate


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
    fields = infer_stages(s, "encoder.layers.{}.patch_embedding.proj.weight", "encoder.layers.{}.blocks.{}.",
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
LAYOUTS = (
    Layout("transformers", "pvt_v2", "encoder.layers.0.patch_embedding.proj.weight", convert.identity,
           prefix="pvt_v2"),
    Layout("timm", "pvt_v2", "stages.0.blocks.0.attn.q.weight", _converter(_TIMM_STAGES), _EPS, prefix="pvt_v2"),
    Layout("original", "pvt_v2", "patch_embed1.proj.weight", _converter(_ORIGINAL_STAGES), _EPS, prefix="pvt_v2"),
)
