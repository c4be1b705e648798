"""The configuration of timm's ResNet as a detection backbone, in the form transformers 5 writes a timm backbone
into a detector's `config.json` (`{"model_type": "timm_backbone", "backbone": "resnet50", "out_indices": [2, 3,
4], ...}`): no PyTorch.

He et al., "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import PretrainedConfig

# The bottleneck ResNets, by timm's names: blocks per stage (`layer1`..`layer4`).
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
STEM_WIDTH = 64
# timm's feature indices: 0 is the stem's ReLU (`act1`, stride 2), 1..4 the stages `layer1`..`layer4`.
FEATURE_NAMES = ("act1", "layer1", "layer2", "layer3", "layer4")


class TimmBackboneConfig(PretrainedConfig):
    """A timm ResNet as a features-only backbone; field names are transformers' `TimmBackboneConfig`'s.

    Only the architecture comes from here: weights come from the detector's checkpoint (pvtkit downloads nothing
    from timm), so `use_pretrained_backbone`, when given, is kept for round trips only.

    Args:
        backbone: timm's model name: `resnet50`, `resnet101` or `resnet152`.
        num_channels: Input channels.
        features_only: Must be True (a backbone returns feature maps; there is no classifier).
        out_indices: The feature maps returned, by timm's index (0: the stem, stride 2; 1..4: `layer1`..`layer4`,
            strides 4..32); negative ones count from the end. Default: the last.
        output_stride: 16 or 8 replaces the stride of the last stage(s) by dilation (Deformable DETR's DC5: 16);
            None or 32 keeps the plain network.
        freeze_batch_norm_2d: Kept for round trips: the BatchNorms of a detection backbone are always frozen.
        **kwargs: The common fields of `PretrainedConfig`; other keys are kept and written back.
    """

    model_type = "timm_backbone"
    title = "timm ResNet"

    def __init__(
        self,
        backbone: str = "resnet50",
        num_channels: int = 3,
        features_only: bool = True,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
        freeze_batch_norm_2d: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("out_features", None)  # transformers writes None: timm backbones are addressed by index
        super().__init__(**kwargs)
        if backbone not in DEPTHS:
            raise ValueError(
                f"TimmBackboneConfig: backbone {backbone!r} is not a timm ResNet pvtkit builds; expected one of "
                f"{', '.join(DEPTHS)}"
            )
        if not features_only:
            raise ValueError("TimmBackboneConfig: features_only must be True (a backbone has no classifier)")
        if output_stride not in (None, 8, 16, 32):
            raise ValueError(f"TimmBackboneConfig: output_stride must be None, 8, 16 or 32, got {output_stride!r}")
        indices = [-1] if out_indices is None else [int(i) for i in out_indices]
        indices = [i + len(FEATURE_NAMES) if i < 0 else i for i in indices]
        if not indices or any(not 0 <= i < len(FEATURE_NAMES) for i in indices) or indices != sorted(set(indices)):
            raise ValueError(
                f"TimmBackboneConfig: out_indices must be distinct, increasing indices into {list(FEATURE_NAMES)}, "
                f"got {out_indices!r}"
            )
        self.backbone, self.num_channels, self.features_only = backbone, int(num_channels), True
        self.out_indices, self.output_stride = indices, output_stride
        self.freeze_batch_norm_2d = bool(freeze_batch_norm_2d)

    @property
    def depths(self) -> list[int]:
        """Blocks per stage (`layer1`..`layer4`)."""
        return list(DEPTHS[self.backbone])

    @property
    def stage_channels(self) -> list[int]:
        """Channels of every feature map timm's features-only ResNet can return (stem, then the four stages)."""
        return [STEM_WIDTH] + [STEM_WIDTH * 4 * 2**i for i in range(4)]

    @property
    def stage_strides(self) -> list[int]:
        """Strides of those maps, once `output_stride` has turned the deepest strides into dilation."""
        limit = self.output_stride or 32
        return [2] + [min(4 * 2**i, limit) for i in range(4)]

    @property
    def channels(self) -> list[int]:
        """Channels of the returned maps."""
        return [self.stage_channels[i] for i in self.out_indices]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "out_features": None}
