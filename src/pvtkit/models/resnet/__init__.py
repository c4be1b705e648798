"""timm's ResNet as a detection backbone (Deformable DETR's): `configuration` (the `timm_backbone` config, no
PyTorch) and `modeling` (the network under timm's parameter names, with frozen BatchNorm). Importing the package
imports no PyTorch: its names are read from those modules at first use (PEP 562)."""

from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "TimmBackboneConfig": "configuration",
    "DEPTHS": "configuration",
    "FrozenBatchNorm2d": "modeling",
    "TimmResNet": "modeling",
}
__all__ = ["DEPTHS", "FrozenBatchNorm2d", "TimmBackboneConfig", "TimmResNet"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
