"""GLPN's checkpoint layout (transformers') and config inference: no PyTorch."""

from __future__ import annotations

from typing import Any

from ... import convert
from ...convert import Layout, StateDict
from ..pyramid import configuration as pyramid_config


def infer_config(state: StateDict) -> dict[str, Any]:
    """GLPNConfig fields read off a transformers-named state dict (`max_depth` cannot be read: the default, 10)."""
    s = convert.strip_prefix(state, "glpn.")
    fields = pyramid_config.infer_stages(
        s, "encoder.patch_embeddings.{}.proj.weight", "encoder.block.{}.{}.", "attention.self.sr.weight"
    )
    if "head.head.0.weight" in state:
        fields["decoder_hidden_size"] = state["head.head.0.weight"].shape[0]
    return fields


LAYOUTS = (Layout("transformers", "glpn", "encoder.patch_embeddings.0.proj.weight", convert.identity, prefix="glpn"),)
