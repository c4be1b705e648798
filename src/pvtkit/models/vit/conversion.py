"""ViT's checkpoint layouts (timm's, transformers 5.25's in-memory names) and config inference: no PyTorch, so that
a TensorFlow or JAX process (`pvtkit.keras`) reads ViT checkpoints without loading torch. The converters are pure
`dict -> dict` functions over arrays of any framework (PyTorch tensors or NumPy arrays).
"""

from __future__ import annotations

from typing import Any

from ... import convert
from ...convert import Layout, StateDict

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: timm's names -> transformers', and config inference.

_TIMM_RULES: convert.Rules = [
    (r"^cls_token$", "vit.embeddings.cls_token"),
    (r"^pos_embed$", "vit.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "vit.embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"vit.encoder.layer.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.norm2\.", r"vit.encoder.layer.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"vit.encoder.layer.\1.attention.attention.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
    (r"^norm\.", "vit.layernorm."),
    (r"^head\.", "classifier."),
]


def from_timm(state: StateDict) -> StateDict:
    """timm's `vit_*` state dict (class-token models) -> transformers' `ViTForImageClassification` names."""
    unsupported = sorted(
        {
            k.split(".")[0]
            for k in state
            if k.startswith(("fc_norm", "pre_logits", "reg_token", "norm_pre", "attn_pool"))
        }
    )
    if unsupported:
        raise ValueError(
            f"this timm ViT uses {', '.join(unsupported)}, which transformers' ViT has no place for; only "
            "class-token ViTs (timm's vit_*_patch*_224/384 layout) convert"
        )
    qkv = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
    return convert.split(convert.rename(state, _TIMM_RULES), "attention.attention.qkv", qkv)


# transformers 5.25's in-memory names (its `state_dict()`: `vit.layers.0.attention.q_proj`, `vit.layers.0.mlp.fc1`);
# its files keep the on-disk names, which pvtkit reads and writes. The layer first, then what is inside it.
_MEMORY_LAYERS: convert.Rules = [(r"^((?:vit\.)?)layers\.(\d+)\.", r"\1encoder.layer.\2.")]
_MEMORY_BLOCK: convert.Rules = [
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def from_memory(state: StateDict) -> StateDict:
    """transformers 5.25's in-memory ViT (`ViTModel`, or a task model's `vit.` + head) -> its on-disk names."""
    return convert.rename(convert.rename(state, _MEMORY_LAYERS), _MEMORY_BLOCK)


_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # head counts cannot be read off the tensors: by width


def infer_config(state: StateDict) -> dict[str, Any]:
    """ViTConfig fields read off a transformers-named state dict."""
    s = convert.strip_prefix(state, "vit.")
    proj = s.get("embeddings.patch_embeddings.projection.weight")
    if proj is None:
        raise ValueError("cannot infer a ViT config: no embeddings.patch_embeddings.projection.weight")
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    layers = 0
    while f"encoder.layer.{layers}.layernorm_before.weight" in s:
        layers += 1
    positions = s["embeddings.position_embeddings"].shape[1] - 1
    side = int(round(positions**0.5))
    if side * side != positions:
        raise ValueError(f"cannot infer the image size: {positions} position embeddings do not form a square grid")
    fields: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_channels": channels,
        "patch_size": patch,
        "encoder_stride": patch,
        "image_size": side * patch,
        "num_attention_heads": _HEADS.get(hidden, max(1, hidden // 64)),
        "intermediate_size": s["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in s,
    }
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    return fields


LAYOUTS = (  # transformers 5.25's in-memory layout first: it shares the embeddings' names with the on-disk one
    Layout("transformers-memory", "vit", "layers.0.layernorm_before.weight", from_memory, prefix="vit"),
    Layout("transformers", "vit", "embeddings.patch_embeddings.projection.weight", convert.identity, prefix="vit"),
    Layout("timm", "vit", "blocks.0.attn.qkv.weight", from_timm, {"layer_norm_eps": 1e-6}, prefix="vit"),
)
