"""PVTv2's checkpoint layouts (timm's, the authors' whai362/PVT) and config inference: no PyTorch, shared by the
PyTorch models and the Keras ones (`pvtkit.keras`). The converters are pure `dict -> dict` functions over arrays of
any framework.
"""

from __future__ import annotations

from typing import Any

from ... import convert
from ...convert import Layout, StateDict
from ..pyramid.configuration import infer_stages

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: timm's and the authors' (whai362/PVT) names -> transformers', and config inference.

_BLOCK_RULES: convert.Rules = [  # block-level names timm and the authors share
    (r"\.norm1\.", ".layer_norm_1."),
    (r"\.norm2\.", ".layer_norm_2."),
    (r"\.attn\.q\.", ".attention.query."),
    (r"\.attn\.kv\.", ".attention.kv."),
    (r"\.attn\.proj\.", ".attention.proj."),
    (r"\.attn\.sr\.", ".attention.spatial_reduction."),
    (r"\.attn\.norm\.", ".attention.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv.dwconv."),
    (r"\.mlp\.dwconv\.(weight|bias)$", r".mlp.dwconv.dwconv.\1"),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
]
_TIMM_STAGES = convert.stage_renamer(
    [
        (r"^patch_embed\.proj\.", lambda m: "encoder.layers.0.patch_embedding.proj."),
        (r"^patch_embed\.norm\.", lambda m: "encoder.layers.0.patch_embedding.layer_norm."),
        (r"^stages\.(\d+)\.downsample\.proj\.", lambda m: f"encoder.layers.{m[1]}.patch_embedding.proj."),
        (r"^stages\.(\d+)\.downsample\.norm\.", lambda m: f"encoder.layers.{m[1]}.patch_embedding.layer_norm."),
        (r"^stages\.(\d+)\.blocks\.", lambda m: f"encoder.layers.{m[1]}.blocks."),
        (r"^stages\.(\d+)\.norm\.", lambda m: f"encoder.layers.{m[1]}.layer_norm."),
        (r"^head\.", lambda m: "classifier."),
    ]
)
_ORIGINAL_STAGES = convert.stage_renamer(
    [
        (r"^patch_embed(\d)\.proj\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.proj."),
        (r"^patch_embed(\d)\.norm\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.layer_norm."),
        (r"^block(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.blocks."),
        (r"^norm(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.layer_norm."),
        (r"^head\.", lambda m: "classifier."),
    ]
)


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
    fields = infer_stages(
        s,
        "encoder.layers.{}.patch_embedding.proj.weight",
        "encoder.layers.{}.blocks.{}.",
        "attention.spatial_reduction.weight",
    )
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
    Layout("transformers", "pvt_v2", "encoder.layers.0.patch_embedding.proj.weight", convert.identity, prefix="pvt_v2"),
    Layout("timm", "pvt_v2", "stages.0.blocks.0.attn.q.weight", _converter(_TIMM_STAGES), _EPS, prefix="pvt_v2"),
    Layout("original", "pvt_v2", "patch_embed1.proj.weight", _converter(_ORIGINAL_STAGES), _EPS, prefix="pvt_v2"),
)
