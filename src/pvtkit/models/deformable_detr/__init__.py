"""Deformable DETR: `configuration` (config, variants), `conversion` (checkpoint layouts), `modeling` (the PyTorch
models and the family spec), `loss` (the Hungarian-matched training loss), `processing` (image processors).
Importing the package imports no PyTorch: its names are read from those modules at first use (PEP 562)."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "DeformableDetrConfig": "configuration",
    "VARIANTS": "configuration",
    "LAYOUTS": "conversion",
    "infer_config": "conversion",
    "FAMILY": "modeling",
    "DeformableDetrForObjectDetection": "modeling",
    "DeformableDetrModel": "modeling",
    "DeformableDetrPreTrainedModel": "modeling",
    "detection_loss": "loss",
    "DeformableDetrImageProcessor": "processing",
    "DeformableDetrImageProcessorFast": "processing",
}
__all__ = ["VARIANTS", "DeformableDetrConfig", "DeformableDetrForObjectDetection", "DeformableDetrModel"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
