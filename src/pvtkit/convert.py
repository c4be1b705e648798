"""Checkpoint layouts: detection by sentinel keys, the machinery of the pure dict -> dict converters, config
inference for checkpoints without a `config.json`.

Each family lists the layouts it reads (`Layout`, in its `conversion.py`): PVTv2 reads transformers', timm's
(`stages.0.blocks.0.attn.kv.weight`) and the authors' whai362/PVT release (`patch_embed1.proj.weight`); ViT reads
transformers' and timm's (`blocks.0.attn.qkv.weight`). All are converted to transformers' names (pvtkit's own). A
converter is an ordered list of `(regex, replacement)` rules (`rename`, `stage_renamer`) plus the tensor splits the
rules cannot express (`split`: `kv` -> key, value; `qkv` -> query, key, value).

This module knows no family: detection tells apart the layouts it is handed. The family registry
(`pvtkit.models.family`: `detect_layout`, `to_transformers`, `infer_config`) hands it every family's; a model class
its own. Nothing here imports a framework: the rules work on PyTorch tensors and NumPy arrays alike, so the Keras
models read checkpoints through the same code without loading torch (they pass their family's `layouts`).

Checkpoints wrapped as `{"model": ...}`, `{"state_dict": ...}` or `{"module": ...}`, and keys carrying a
`module.` / `backbone.` / `encoder.` prefix (DDP, detection and segmentation frameworks), are unwrapped first.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

logger = logging.getLogger("pvtkit")

Rules = list[tuple[str, str]]

# Tensors by name: PyTorch tensors, or NumPy arrays where no PyTorch is loaded (the Keras models). This module and
# the layouts' converters import no framework.
StateDict = dict[str, Any]

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "module", "net")
# Prefixes frameworks put in front of a backbone's keys; stripped when the rest of the key is recognisable.
FOREIGN_PREFIXES = ("module.", "backbone.", "model.", "encoder.backbone.")


class LoadingError(ValueError):
    """A checkpoint's tensors do not fit the model: the message lists every offending key."""


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: the family it holds, a key only it has, and how to convert it to transformers' names.

    Args:
        name: "transformers", "timm", "original" (the authors' release), ...
        model_type: The family's `model_type`.
        sentinel: A key only this layout has, matched after the family's prefix (`pvt_v2.`) is removed.
        convert: The pure `dict -> dict` conversion to transformers' names.
        config_fields: Config fields the source's code fixes and a checkpoint without `config.json` cannot tell
            (timm's LayerNorm epsilon).
        prefix: The family's state-dict prefix (`vit`), under which the sentinel is also matched; a layout without
            one gets its family's (`Family.prefix`, which it must equal) from the family registry.
    """

    name: str
    model_type: str
    sentinel: str
    convert: Callable[[StateDict], StateDict]
    config_fields: Mapping[str, Any] = field(default_factory=dict)
    prefix: str = ""


# ---- the rule machinery -----------------------------------------------------------------------------------------


def rename(state: StateDict, rules: Rules) -> StateDict:
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


def split(state: StateDict, fused: str, parts: tuple[str, ...]) -> StateDict:
    """Split every `*.{fused}.{weight,bias}` tensor along dim 0 into `*.{part}.{weight,bias}`."""
    out: StateDict = {}
    suffix = re.compile(rf"^(.*)\.{re.escape(fused)}\.(weight|bias)$")
    for key, value in state.items():
        m = suffix.match(key)
        if not m:
            out[key] = value
            continue
        size = value.shape[0] // len(parts)
        for i, part in enumerate(parts):
            chunk = value[i * size : (i + 1) * size]  # a view: copied, so each part owns its memory (safetensors)
            out[f"{m.group(1)}.{part}.{m.group(2)}"] = chunk.clone() if hasattr(chunk, "clone") else chunk.copy()
    return out


def stage_renamer(patterns: list[tuple[str, Callable[[re.Match], str]]]) -> Callable[[StateDict], StateDict]:
    """Renames whose replacement needs arithmetic (1-based stage numbers): `(regex, match -> new prefix)`."""

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


def prefix_encoder(state: StateDict, prefix: str, heads: tuple[str, ...] = ("classifier.",)) -> StateDict:
    """Put the encoder's keys under the task model's prefix (`pvt_v2.`, `vit.`); heads stay at the top."""
    return {(k if k.startswith(heads) else prefix + k): v for k, v in state.items()}


def align_prefix(state: StateDict, own_keys: Iterable[str], prefix: str) -> tuple[StateDict, list[str]]:
    """Put a checkpoint's keys under the model's convention: an encoder-only checkpoint into a task model gets
    `prefix` (`vit.`) in front; a task checkpoint into the encoder loses it and its heads. Returns the aligned
    state and the head keys dropped."""
    model_prefixed = any(k.startswith(prefix) for k in own_keys)
    ckpt_prefixed = any(k.startswith(prefix) for k in state)
    if model_prefixed and not ckpt_prefixed:
        return {prefix + k: v for k, v in state.items()}, []
    if ckpt_prefixed and not model_prefixed:
        dropped = [k for k in state if not k.startswith(prefix)]
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, dropped
    return state, []


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def identity(state: StateDict) -> StateDict:
    return state


# ---- detection --------------------------------------------------------------------------------------------------


def is_array(value: Any) -> bool:
    """A NumPy array, or a PyTorch tensor (checked only when torch is loaded: nothing here imports it)."""
    import numpy as np

    torch = sys.modules.get("torch")
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def unwrap(obj: Any, source: str = "checkpoint") -> StateDict:
    """The tensor dict inside a training checkpoint (`{"model": ...}`, `{"state_dict": ...}`, ...)."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(is_array(v) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if is_array(v)}
        if tensors:
            return tensors
    raise ValueError(f"{source} holds no tensors: expected a state dict (or one under 'model' / 'state_dict')")


def detect_layout(
    state: StateDict,
    source: str = "checkpoint",
    prefer: str | None = None,
    *,
    layouts: Sequence[Layout],
    expected: str | None = None,
) -> tuple[Layout, StateDict]:
    """Find which of `layouts` `state` is in, after stripping framework prefixes (`module.`, `backbone.` ...).
    Families whose layouts look alike (a bare MiT encoder is one for SegFormer and GLPN alike) are told apart by
    `prefer`, the `model_type` the caller asks for, whose layouts are tried first. `layouts`: every family's
    (`pvtkit.models.family.detect_layout` hands them) or one model's (each naming its `prefix`), which reads a
    checkpoint without importing any family's PyTorch classes. `expected`: what the error says the checkpoint is
    not, when none matches (default: a checkpoint in one of `layouts`)."""
    candidates = [state]
    for prefix in FOREIGN_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            candidates.append({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    layouts = sorted(layouts, key=lambda layout: layout.model_type != prefer)
    for candidate in candidates:
        for layout in layouts:  # the sentinel, bare or under the family's prefix (`pvt_v2.`)
            prefixed = layout.prefix and f"{layout.prefix}.{layout.sentinel}" in candidate
            if layout.sentinel in candidate or prefixed:
                if candidate is not state:
                    dropped = len(state) - len(candidate)
                    logger.info(
                        "%s: using the %d keys under a framework prefix (%d others dropped)",
                        source,
                        len(candidate),
                        dropped,
                    )
                return layout, candidate
    sample = ", ".join(list(state)[:5])
    if expected is None:
        names = ", ".join(f"{lo.model_type} {lo.name}" for lo in layouts)
        expected = f"a checkpoint in a layout this model reads ({names})"
    raise ValueError(f"{source} is not {expected}; its first keys are: {sample}")


def to_transformers(
    state: StateDict, model_type: str | None = None, source: str = "checkpoint", *, layouts: Sequence[Layout]
) -> tuple[StateDict, Layout]:
    """Convert a checkpoint in one of `layouts` to transformers' names; check it holds the family `model_type`
    asked for. (Any family's checkpoint: `pvtkit.models.family.to_transformers`.)"""
    layout, state = detect_layout(unwrap(state, source), source, prefer=model_type, layouts=layouts)
    if model_type is not None and layout.model_type != model_type:
        raise ValueError(f"{source} is a {layout.model_type} checkpoint ({layout.name} layout), not a {model_type} one")
    return layout.convert(state), layout


# ---- config inference -------------------------------------------------------------------------------------------


def infer_config(state: StateDict, layout: Layout, infer: Callable[[StateDict], dict[str, Any]]) -> dict[str, Any]:
    """Config fields for a converted state dict that came without a config.json: the family reads the architecture
    off the tensors (`infer`, the family's: `pvtkit.models.family.infer_config` passes it), the layout adds what its
    code fixes (timm's LayerNorm epsilon), and a 1000-class head is an ImageNet-1k classifier and gets its class
    names."""
    fields = {**infer(state), **layout.config_fields}
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
