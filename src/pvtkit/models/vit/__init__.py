"""ViT: `configuration` (config, variants, input check), `conversion` (checkpoint layouts), `modeling` (the PyTorch
models and the family spec), `processing` (image processors). Importing the package imports no PyTorch: its names
are read from those modules at first use (PEP 562)."""

from __future__ import annotations

from ..._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
