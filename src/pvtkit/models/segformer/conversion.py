"""SegFormer's checkpoint layouts (the NVlabs release, mmsegmentation's MiT, transformers 5.25's in-memory names)
and config inference: no PyTorch. The converters are pure `dict -> dict` functions over arrays of any framework.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import convert
from ...convert import Layout, StateDict
from ..pyramid import configuration as pyramid_config

logger = logging.getLogger("pvtkit")


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
]
_NVLABS_STAGES = convert.stage_renamer(_NVLABS_RULES)
_NVLABS_BLOCK: convert.Rules = [
    (r"\.norm1\.", ".layer_norm_1."),
    (r"\.norm2\.", ".layer_norm_2."),
    (r"\.attn\.q\.", ".attention.self.query."),
    (r"\.attn\.kv\.", ".attention.self.kv."),
    (r"\.attn\.sr\.", ".attention.self.sr."),
    (r"\.attn\.norm\.", ".attention.self.layer_norm."),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
]


def from_nvlabs(state: StateDict) -> StateDict:
    """The NVlabs/SegFormer release (`backbone.` + `decode_head.`, or a bare MiT with `head.`) -> transformers'.
    The `decode_head.conv_seg` every mmseg 0.x head carries is unused by SegFormer's head and dropped. NVlabs' MiT
    has LayerNorm epsilon 1e-6 in its blocks, transformers 1e-5: outputs drift by ~1e-6 relative."""
    prefixed = {
        k if k.startswith(("backbone.", "decode_head.")) else "backbone." + k: v
        for k, v in state.items()
        if not k.startswith("decode_head.conv_seg.")
    }
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
        logger.warning(
            "mmsegmentation's SegformerHead (%d tensors: %s, ...) has per-stage BatchNorms that "
            "transformers' decode head does not: only the MiT encoder converts",
            len(head),
            head[0],
        )
    renamed = convert.rename({k.removeprefix("backbone."): v for k, v in state.items() if k not in head}, _MMSEG_RULES)
    for k, v in renamed.items():  # the MLP's 1x1 convs are Linear layers here: (out, in, 1, 1) -> (out, in)
        if k.endswith((".mlp.dense1.weight", ".mlp.dense2.weight")) and v.ndim == 4:
            renamed[k] = v[:, :, 0, 0]
    return convert.split(
        renamed, "attention.self.qkv", ("attention.self.query", "attention.self.key", "attention.self.value")
    )


# transformers 5.25's in-memory names (its `state_dict()`: `segformer.stages.0.blocks.0.attention.q_proj`, ...); its
# files keep the on-disk names above, which pvtkit reads and writes. Stage-level names first, then the blocks'.
_MEMORY_STAGES: convert.Rules = [
    (r"^((?:segformer\.)?)stages\.(\d+)\.patch_embeddings\.", r"\1encoder.patch_embeddings.\2."),
    (r"^((?:segformer\.)?)stages\.(\d+)\.blocks\.(\d+)\.", r"\1encoder.block.\2.\3."),
    (r"^((?:segformer\.)?)stages\.(\d+)\.layer_norm\.", r"\1encoder.layer_norm.\2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]
_MEMORY_BLOCK: convert.Rules = [
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
]


def from_memory(state: StateDict) -> StateDict:
    """transformers 5.25's in-memory SegFormer (`SegformerModel`, or a task model's `segformer.` + head) -> its
    on-disk names."""
    return convert.rename(convert.rename(state, _MEMORY_STAGES), _MEMORY_BLOCK)


def infer_config(state: StateDict) -> dict[str, Any]:
    """SegformerConfig fields read off a transformers-named state dict."""
    s = convert.strip_prefix(state, "segformer.")
    fields = pyramid_config.infer_stages(
        s, "encoder.patch_embeddings.{}.proj.weight", "encoder.block.{}.{}.", "attention.self.sr.weight"
    )
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    if "decode_head.classifier.weight" in state:
        fields["num_labels"] = state["decode_head.classifier.weight"].shape[0]
        fields["decoder_hidden_size"] = state["decode_head.classifier.weight"].shape[1]
    return fields


_PREFIX = "segformer"
LAYOUTS = (
    Layout("transformers", "segformer", "encoder.patch_embeddings.0.proj.weight", convert.identity, prefix=_PREFIX),
    Layout("transformers-memory", "segformer", "stages.0.patch_embeddings.proj.weight", from_memory, prefix=_PREFIX),
    Layout("nvlabs", "segformer", "decode_head.linear_c1.proj.weight", from_nvlabs, prefix=_PREFIX),
    Layout("mmseg", "segformer", "backbone.layers.0.1.0.attn.attn.in_proj_weight", from_mmseg, prefix=_PREFIX),
    Layout("mmseg", "segformer", "layers.0.1.0.attn.attn.in_proj_weight", from_mmseg, prefix=_PREFIX),
    # a bare MiT: after PVTv2's reading
    Layout("nvlabs", "segformer", "patch_embed1.proj.weight", from_nvlabs, prefix=_PREFIX),
)
