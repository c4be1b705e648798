"""SegFormer: `configuration` (config, variants), `conversion` (checkpoint layouts), `modeling` (the PyTorch models
and the family spec), `processing` (image processors). Importing the package imports no PyTorch: its names are
read from those modules at first use (PEP 562)."""

from __future__ import annotations

from ..._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
