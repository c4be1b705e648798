"""Deformable DETR's checkpoint layouts and config inference: no PyTorch.

pvtkit's module names are the names transformers writes to disk (`model.backbone.conv_encoder.model.*`,
`layers.N.fc1`, `self_attn.out_proj`), so `model.safetensors` files move between the libraries untouched. Two other
spellings are read: transformers 5's in-memory names (its `state_dict()`: `model.backbone.model.*`,
`layers.N.mlp.fc1`, `self_attn.o_proj`), and transformers 4's place for a learned position embedding (under
`model.backbone.`). `tie_heads` resolves the heads that transformers stores once for several layers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ... import convert
from ...convert import Layout, StateDict

_BACKBONE = "backbone.conv_encoder.model."
_ON_DISK: convert.Rules = [(r"^(model\.)?backbone\.position_embedding\.", r"\1position_embedding.")]
_IN_MEMORY: convert.Rules = [
    (r"^(model\.)?backbone\.model\.", rf"\1{_BACKBONE}"),
    (r"\.self_attn\.o_proj\.", ".self_attn.out_proj."),
    (r"\.layers\.(\d+)\.mlp\.(fc[12])\.", r".layers.\1.\2."),
]


def _rules(rules: convert.Rules) -> Callable[[StateDict], StateDict]:
    def to_disk_names(state: StateDict) -> StateDict:
        # a frozen BatchNorm has no counter: timm's checkpoints carry one
        kept = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
        return convert.rename(kept, rules)

    return to_disk_names


_HEAD = re.compile(r"^(?:model\.decoder\.)?((?:class|bbox)_embed)\.(\d+)\.(.+)$")


def tie_heads(state: StateDict, own: Iterable[str]) -> StateDict:
    """A checkpoint's detection heads under the model's names (`own`: its state-dict keys). The same head has
    several names: transformers' in-memory state and older files hold refinement's box heads both as `bbox_embed.i`
    and as the decoder's `model.decoder.bbox_embed.i` (pvtkit's name: the decoder's), and a head that serves every
    layer as `class_embed.i` for each layer i (pvtkit's: `class_embed.0`). A head the model names otherwise is
    renamed, a copy of a shared head dropped; and a layer's head that the checkpoint lacks is its layer 0's, as
    transformers writes a head tied across layers once (`class_embed.0` for every layer with box refinement)."""
    own = set(own)
    out = {k: v for k, v in state.items() if k in own or not _HEAD.match(k)}
    for key, value in state.items():
        m = _HEAD.match(key)
        if key in own or not m:
            continue
        names = [f"{p}{m[1]}.{m[2]}.{m[3]}" for p in ("", "model.decoder.")]
        name = next((n for n in names if n in own), None)
        first = next((f"{p}{m[1]}.0.{m[3]}" for p in ("", "model.decoder.") if f"{p}{m[1]}.0.{m[3]}" in own), None)
        copy_of_first = first in out and out[first].shape == value.shape and bool((out[first] == value).all())
        if name is not None:
            out.setdefault(name, value)
        elif not copy_of_first:
            out[key] = value  # not this model's head: reported as unexpected
    for key in own:
        m = _HEAD.match(key)
        first = m and key.replace(f"{m[1]}.{m[2]}.", f"{m[1]}.0.", 1)
        if m and key not in out and first in out:
            out[key] = out[first]
    return out


def infer_config(state: StateDict) -> dict[str, Any]:
    """DeformableDetrConfig fields read off a transformers-named state dict (one without `config.json`). Heads and
    sampling points cannot both be read off the projections: 4 points per head and level is assumed; nor can DC5's
    dilation or two-stage's number of proposals (the defaults)."""
    from .. import family  # the registry imports this module: read it at call time

    s = convert.strip_prefix({k: v for k, v in state.items() if k.startswith("model.")}, "model.") or dict(state)
    levels, width = s["level_embed"].shape
    count = lambda pattern: len({k.split(".")[2] for k in s if re.match(pattern, k)})  # noqa: E731
    fields: dict[str, Any] = {
        "d_model": width,
        "num_feature_levels": levels,
        "encoder_layers": count(r"encoder\.layers\.\d+\.fc1\.weight"),
        "decoder_layers": count(r"decoder\.layers\.\d+\.fc1\.weight"),
        "encoder_ffn_dim": s["encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": s["decoder.layers.0.fc1.weight"].shape[0],
        "encoder_attention_heads": s["encoder.layers.0.self_attn.attention_weights.weight"].shape[0] // (levels * 4),
        "decoder_attention_heads": s["decoder.layers.0.encoder_attn.attention_weights.weight"].shape[0] // (levels * 4),
        "two_stage": "enc_output.weight" in s,
        "with_box_refine": "decoder.bbox_embed.0.layers.0.weight" in s,
    }
    if "query_position_embeddings.weight" in s:
        fields["num_queries"] = s["query_position_embeddings.weight"].shape[0]
    if "position_embedding.row_embeddings.weight" in s:
        fields["position_embedding_type"] = "learned"
    head = next((k for k in ("class_embed.0.weight", "model.decoder.class_embed.0.weight") if k in state), None)
    if head is not None:
        fields["num_labels"] = state[head].shape[0]
    backbone = {k[len(_BACKBONE) :]: v for k, v in s.items() if k.startswith(_BACKBONE)}
    projections = [s.get(f"input_proj.{i}.0.weight") for i in range(levels)]
    maps = [p.shape[1] for p in projections if p is not None and p.shape[-1] == 1]  # 1x1: a backbone map's
    if "conv1.weight" in backbone:  # timm's ResNet: its depth from layer3, its maps from the projections' inputs
        blocks = len({k.split(".")[1] for k in backbone if k.startswith("layer3.")})
        name = {6: "resnet50", 23: "resnet101", 36: "resnet152"}.get(blocks, "resnet50")
        indices = [[64, 256, 512, 1024, 2048].index(c) for c in maps]
        fields["backbone_config"] = {"model_type": "timm_backbone", "backbone": name, "out_indices": indices}
    else:
        layout, converted = family.detect_layout(backbone, "the detector's backbone")
        sub = {**family.infer_config(layout.convert(converted), layout), "model_type": layout.model_type}
        sizes = list(sub.get("hidden_sizes", []))
        sub["out_indices"] = [sizes.index(c) for c in maps] if all(c in sizes for c in maps) else None
        fields["backbone_config"] = {k: v for k, v in sub.items() if v is not None}
    return fields


LAYOUTS = (
    Layout("transformers", "deformable_detr", "encoder.layers.0.fc1.weight", _rules(_ON_DISK), prefix="model"),
    Layout(
        "transformers-memory", "deformable_detr", "encoder.layers.0.mlp.fc1.weight", _rules(_IN_MEMORY), prefix="model"
    ),
)
