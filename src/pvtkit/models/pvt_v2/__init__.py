"""PVTv2: `configuration` (config, variants), `conversion` (checkpoint layouts), `modeling` (the PyTorch models and
the family spec), `processing` (image processors). Importing the package imports no PyTorch: its names are read
from those modules at first use (PEP 562)."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "PvtV2Config": "configuration",
    "VARIANTS": "configuration",
    "LAYOUTS": "conversion",
    "infer_config": "conversion",
    "FAMILY": "modeling",
    "PvtV2Backbone": "modeling",
    "PvtV2ForDepthEstimation": "modeling",
    "PvtV2ForImageClassification": "modeling",
    "PvtV2ForSemanticSegmentation": "modeling",
    "PvtV2Model": "modeling",
    "PvtV2PreTrainedModel": "modeling",
    "PvtImageProcessor": "processing",
    "PvtImageProcessorFast": "processing",
}
__all__ = [
    "VARIANTS",
    "PvtV2Backbone",
    "PvtV2Config",
    "PvtV2ForDepthEstimation",
    "PvtV2ForImageClassification",
    "PvtV2ForSemanticSegmentation",
    "PvtV2Model",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
