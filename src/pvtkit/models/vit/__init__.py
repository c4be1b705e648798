"""ViT: `configuration` (config, variants, input check), `conversion` (checkpoint layouts), `modeling` (the PyTorch
models and the family spec), `processing` (image processors). Importing the package imports no PyTorch: its names
are read from those modules at first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ATTN_IMPLEMENTATIONS": "configuration",
    "VARIANTS": "configuration",
    "ViTConfig": "configuration",
    "check_pixel_values": "configuration",
    "LAYOUTS": "conversion",
    "from_timm": "conversion",
    "infer_config": "conversion",
    "FAMILY": "modeling",
    "ViTForImageClassification": "modeling",
    "ViTForMaskedImageModeling": "modeling",
    "ViTModel": "modeling",
    "ViTPreTrainedModel": "modeling",
    "ViTFeatureExtractor": "processing",
    "ViTImageProcessor": "processing",
    "ViTImageProcessorFast": "processing",
}
__all__ = [
    "VARIANTS",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTForMaskedImageModeling",
    "ViTModel",
    "ViTPreTrainedModel",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
