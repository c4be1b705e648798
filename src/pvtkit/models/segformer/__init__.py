"""SegFormer: `configuration` (config, variants), `conversion` (checkpoint layouts), `modeling` (the PyTorch models
and the family spec), `processing` (image processors). Importing the package imports no PyTorch: its names are
read from those modules at first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SegformerConfig": "configuration",
    "VARIANTS": "configuration",
    "LAYOUTS": "conversion",
    "from_mmseg": "conversion",
    "from_nvlabs": "conversion",
    "infer_config": "conversion",
    "FAMILY": "modeling",
    "SegformerForImageClassification": "modeling",
    "SegformerForSemanticSegmentation": "modeling",
    "SegformerModel": "modeling",
    "SegformerPreTrainedModel": "modeling",
    "SegformerImageProcessor": "processing",
    "SegformerImageProcessorFast": "processing",
}
__all__ = [
    "VARIANTS",
    "SegformerConfig",
    "SegformerForImageClassification",
    "SegformerForSemanticSegmentation",
    "SegformerModel",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
