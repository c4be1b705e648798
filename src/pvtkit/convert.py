"""Checkpoint layouts: detection by sentinel keys, pure dict -> dict converters, config inference.

Supported sources, all converted to transformers' names (pvtkit's own):

* PVTv2: transformers (`encoder.layers.0.patch_embedding.proj.weight`), timm (`stages.0.blocks.0.attn.kv.weight`)
  and the authors' whai362/PVT release (`patch_embed1.proj.weight`, `block1.0.attn.kv.weight`).
* ViT: transformers (`embeddings.patch_embeddings.projection.weight`) and timm (`blocks.0.attn.qkv.weight`).

Checkpoints wrapped as `{"model": ...}`, `{"state_dict": ...}` or `{"module": ...}`, and keys carrying a
`module.` / `backbone.` / `encoder.` prefix (DDP, detection and segmentation frameworks), are unwrapped first.
Each converter is an ordered list of `(regex, replacement)` rules plus the tensor splits the rules cannot express
(`kv` -> key, value; `qkv` -> query, key, value).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import torch

logger = logging.getLogger("pvtkit")

StateDict = dict[str, torch.Tensor]
Rules = list[tuple[str, str]]

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "module", "net")
# Prefixes frameworks put in front of a backbone's keys; stripped when the rest of the key is recognisable.
FOREIGN_PREFIXES = ("module.", "backbone.", "model.", "encoder.backbone.")


# ---- the layouts ------------------------------------------------------------------------------------------------


def _rename(state: StateDict, rules: Rules) -> StateDict:
    """Apply the first matching rule to each key; keys no rule matches are kept as they are."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in compiled:
            new, n = pattern.subn(replacement, key, count=1)
            if n:
                key = new
                break
        out[key] = value
    return out


def _split(state: StateDict, fused: str, parts: tuple[str, ...]) -> StateDict:
    """Split every `*.{fused}.{weight,bias}` tensor along dim 0 into `*.{part}.{weight,bias}`."""
    out: StateDict = {}
    suffix = re.compile(rf"^(.*)\.{re.escape(fused)}\.(weight|bias)$")
    for key, value in state.items():
        m = suffix.match(key)
        if not m:
            out[key] = value
            continue
        for part, chunk in zip(parts, value.chunk(len(parts), dim=0)):
            out[f"{m.group(1)}.{part}.{m.group(2)}"] = chunk.clone()
    return out


# Block-level names shared by timm and the original PVT code -> transformers'.
_PVT_BLOCK_RULES: Rules = [
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


def _stage_rules(patterns: list[tuple[str, Callable[[re.Match], str]]]) -> Callable[[StateDict], StateDict]:
    """Stage-level renames whose replacement needs arithmetic (1-based stage numbers)."""

    def apply(state: StateDict) -> StateDict:
        out: StateDict = {}
        for key, value in state.items():
            for pattern, make in patterns:
                m = re.match(pattern, key)
                if m:
                    key = make(m) + key[m.end() :]
                    break
            out[key] = value
        return out

    return apply


_timm_pvt_stages = _stage_rules([
    (r"^patch_embed\.proj\.", lambda m: "encoder.layers.0.patch_embedding.proj."),
    (r"^patch_embed\.norm\.", lambda m: "encoder.layers.0.patch_embedding.layer_norm."),
    (r"^stages\.(\d+)\.downsample\.proj\.", lambda m: f"encoder.layers.{m[1]}.patch_embedding.proj."),
    (r"^stages\.(\d+)\.downsample\.norm\.", lambda m: f"encoder.layers.{m[1]}.patch_embedding.layer_norm."),
    (r"^stages\.(\d+)\.blocks\.", lambda m: f"encoder.layers.{m[1]}.blocks."),
    (r"^stages\.(\d+)\.norm\.", lambda m: f"encoder.layers.{m[1]}.layer_norm."),
    (r"^head\.", lambda m: "classifier."),
])  # fmt: skip

_original_pvt_stages = _stage_rules([
    (r"^patch_embed(\d)\.proj\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.proj."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.layer_norm."),
    (r"^block(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.blocks."),
    (r"^norm(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.layer_norm."),
    (r"^head\.", lambda m: "classifier."),
])  # fmt: skip


def _prefix_encoder(state: StateDict, prefix: str) -> StateDict:
    """Put the encoder's keys under the task model's prefix (`pvt_v2.`, `vit.`); heads stay at the top."""
    return {(k if k.startswith("classifier.") else prefix + k): v for k, v in state.items()}


def pvt_from_timm(state: StateDict) -> StateDict:
    """timm's `pvt_v2_*` state dict -> transformers' `PvtV2ForImageClassification` (or encoder) names."""
    state = _split(_rename(_timm_pvt_stages(state), _PVT_BLOCK_RULES), "attention.kv", ("attention.key", "attention.value"))
    return _prefix_encoder(state, "pvt_v2.")


def pvt_from_original(state: StateDict) -> StateDict:
    """The authors' whai362/PVT `pvt_v2_*` state dict -> transformers' names."""
    state = _split(_rename(_original_pvt_stages(state), _PVT_BLOCK_RULES), "attention.kv", ("attention.key", "attention.value"))
    return _prefix_encoder(state, "pvt_v2.")


_TIMM_VIT_RULES: Rules = [
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


def vit_from_timm(state: StateDict) -> StateDict:
    """timm's `vit_*` state dict (class-token models) -> transformers' `ViTForImageClassification` names."""
    unsupported = sorted({k.split(".")[0] for k in state if k.startswith(("fc_norm", "pre_logits", "reg_token", "norm_pre", "attn_pool"))})  # fmt: skip
    if unsupported:
        raise ValueError(
            f"this timm ViT uses {', '.join(unsupported)}, which transformers' ViT has no place for; only "
            "class-token ViTs (timm's vit_*_patch*_224/384 layout) convert"
        )
    state = _rename(state, _TIMM_VIT_RULES)
    return _split(state, "attention.attention.qkv", ("attention.attention.query", "attention.attention.key", "attention.attention.value"))  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: the family it holds, a key only it has, and how to convert it to transformers'."""

    name: str
    model_type: str
    sentinel: str
    convert: Callable[[StateDict], StateDict]


def _identity(state: StateDict) -> StateDict:
    return state


# Checked in order; the sentinel is matched against keys with any `pvt_v2.` / `vit.` prefix removed.
LAYOUTS = (
    Layout("transformers", "pvt_v2", "encoder.layers.0.patch_embedding.proj.weight", _identity),
    Layout("timm", "pvt_v2", "stages.0.blocks.0.attn.q.weight", pvt_from_timm),
    Layout("original", "pvt_v2", "patch_embed1.proj.weight", pvt_from_original),
    Layout("transformers", "vit", "embeddings.patch_embeddings.projection.weight", _identity),
    Layout("timm", "vit", "blocks.0.attn.qkv.weight", vit_from_timm),
)


def unwrap(obj: Any, source: str = "checkpoint") -> StateDict:
    """The tensor dict inside a training checkpoint (`{"model": ...}`, `{"state_dict": ...}`, ...)."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ValueError(f"{source} holds no tensors: expected a state dict (or one under 'model' / 'state_dict')")


def detect_layout(state: StateDict, source: str = "checkpoint") -> tuple[Layout, StateDict]:
    """Find which layout `state` is in, after stripping framework prefixes (`module.`, `backbone.` ...)."""
    candidates = [state]
    for prefix in FOREIGN_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            candidates.append({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    for candidate in candidates:
        bare = {k.removeprefix("pvt_v2.").removeprefix("vit.") for k in candidate}
        for layout in LAYOUTS:
            if layout.sentinel in bare:
                if candidate is not state:
                    dropped = len(state) - len(candidate)
                    logger.info("%s: using the %d keys under a framework prefix (%d others dropped)", source,
                                len(candidate), dropped)  # fmt: skip
                return layout, candidate
    sample = ", ".join(list(state)[:5])
    raise ValueError(
        f"{source} is not a PVTv2 or ViT checkpoint pvtkit knows (transformers, timm or whai362/PVT layouts); "
        f"its first keys are: {sample}"
    )


def to_transformers(state: StateDict, model_type: str | None = None, source: str = "checkpoint") -> tuple[StateDict, Layout]:
    """Convert any supported checkpoint to transformers' names; check it holds the family asked for."""
    layout, state = detect_layout(unwrap(state, source), source)
    if model_type is not None and layout.model_type != model_type:
        raise ValueError(f"{source} is a {layout.model_type} checkpoint ({layout.name} layout), not a {model_type} one")
    return layout.convert(state), layout


# ---- config inference -------------------------------------------------------------------------------------------

# Head counts cannot be read off the tensors. Every published PVTv2 has one head in stage 1 and keeps that head
# width in every stage (B0: 32; the others: 64); published ViTs by width.
_VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def _bare(state: StateDict, prefix: str) -> StateDict:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def infer_pvt_v2_config(state: StateDict) -> dict[str, Any]:
    """PvtV2Config fields read off a transformers-named state dict (see `to_transformers`)."""
    s = _bare(state, "pvt_v2.")
    n = 0
    while f"encoder.layers.{n}.patch_embedding.proj.weight" in s:
        n += 1
    if n == 0:
        raise ValueError("cannot infer a PVTv2 config: no encoder.layers.0.patch_embedding.proj.weight")
    fields: dict[str, Any] = {"num_encoder_blocks": n, "depths": [], "hidden_sizes": [], "patch_sizes": [],
                              "sr_ratios": [], "mlp_ratios": [], "num_attention_heads": []}  # fmt: skip
    linear = False
    for i in range(n):
        proj = s[f"encoder.layers.{i}.patch_embedding.proj.weight"]  # (C, C_in, k, k)
        dim = proj.shape[0]
        if i == 0:
            fields["num_channels"] = proj.shape[1]
        depth = 0
        while f"encoder.layers.{i}.blocks.{depth}.layer_norm_1.weight" in s:
            depth += 1
        block = f"encoder.layers.{i}.blocks.0."
        sr = s.get(block + "attention.spatial_reduction.weight")
        linear = linear or (sr is not None and sr.shape[-1] == 1)
        fields["depths"].append(depth)
        fields["hidden_sizes"].append(dim)
        fields["patch_sizes"].append(proj.shape[-1])
        fields["sr_ratios"].append(1 if sr is None else sr.shape[-1])
        fields["mlp_ratios"].append(s[block + "mlp.dense1.weight"].shape[0] // dim if depth else 4)
        head_dim = fields["hidden_sizes"][0]
        fields["num_attention_heads"].append(dim // head_dim if dim % head_dim == 0 else 1)
    if linear:  # linear SRA has a 1x1 reduction conv in every stage; the published ratios are kept for reference
        fields["linear_attention"] = True
        fields["sr_ratios"] = [8, 4, 2, 1][:n] if n == 4 else [1] * n
    fields["strides"] = [4] + [2] * (n - 1)
    fields["qkv_bias"] = "encoder.layers.0.blocks.0.attention.query.bias" in s
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    return fields


def infer_vit_config(state: StateDict) -> dict[str, Any]:
    """ViTConfig fields read off a transformers-named state dict (see `to_transformers`)."""
    s = _bare(state, "vit.")
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
        "hidden_size": hidden, "num_hidden_layers": layers, "num_channels": channels, "patch_size": patch,
        "encoder_stride": patch, "image_size": side * patch,
        "num_attention_heads": _VIT_HEADS.get(hidden, max(1, hidden // 64)),
        "intermediate_size": s["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in s,
    }  # fmt: skip
    if "classifier.weight" in state:
        fields["num_labels"] = state["classifier.weight"].shape[0]
    return fields


INFER = {"pvt_v2": infer_pvt_v2_config, "vit": infer_vit_config}


def infer_config(state: StateDict, layout: Layout) -> dict[str, Any]:
    """Config fields for a converted state dict that came without a config.json.

    timm's and the authors' checkpoints add what their code fixes: ViT from timm uses `layer_norm_eps=1e-6`;
    a 1000-class head is an ImageNet-1k classifier and gets its class names.
    """
    fields = INFER[layout.model_type](state)
    if layout.name in ("timm", "original"):
        fields["layer_norm_eps"] = 1e-6
    if fields.get("num_labels") == 1000:
        fields["id2label"] = dict(enumerate(imagenet_labels()))
    return fields


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order (WordNet lemmas, as transformers' id2label)."""
    text = resources.files("pvtkit").joinpath("data/imagenet_1k_labels.json").read_text(encoding="utf-8")
    labels = json.loads(text)
    assert len(labels) == 1000
    return labels
