"""GLPN: `configuration` (config, variants), `conversion` (checkpoint layout), `modeling` (the PyTorch models and
the family spec), `processing` (image processors). Importing the package imports no PyTorch: its names are read
from those modules at first use (PEP 562)."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "GLPNConfig": "configuration",
    "VARIANTS": "configuration",
    "LAYOUTS": "conversion",
    "infer_config": "conversion",
    "FAMILY": "modeling",
    "GLPNForDepthEstimation": "modeling",
    "GLPNModel": "modeling",
    "GLPNPreTrainedModel": "modeling",
    "GLPNImageProcessor": "processing",
    "GLPNImageProcessorFast": "processing",
}
__all__ = ["VARIANTS", "GLPNConfig", "GLPNForDepthEstimation", "GLPNModel"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
