"""timm's ResNet (bottleneck variants) as a features-only detection backbone, under timm's parameter names
(`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, ...), so the timm ResNet inside released Deformable DETR
checkpoints loads as it is. Its BatchNorms are frozen (statistics and affine parameters are buffers), as every DETR
freezes them.

He et al., "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .configuration import STEM_WIDTH, TimmBackboneConfig


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all four buffers (`weight`, `bias`, `running_mean`,
    `running_var`), applied as `x * scale + shift`; a checkpoint's `num_batches_tracked` is ignored.

    Args:
        num_features: Channels.
        eps: Added to the variance (timm's and transformers' 1e-5).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_parameters(self) -> None:
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            getattr(self, name).fill_(value)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # a trainable BatchNorm's counter: nothing to freeze
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[nn.Conv2d, nn.Module]:
    pad = dilation * (kernel // 2)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False)
    return conv, FrozenBatchNorm2d(cout)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride and dilation here, as timm's), 1x1 expand x4, each with frozen BatchNorm; a strided
    1x1 projection (`downsample`) on the shortcut where the shape changes."""

    def __init__(self, cin: int, width: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride, dilation)
        self.conv3, self.bn3 = _conv_bn(width, width * 4, 1)
        self.act = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(*_conv_bn(cin, width * 4, 1, stride)) if stride != 1 or cin != width * 4 else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.act(self.bn3(self.conv3(x)) + shortcut)


class TimmResNet(nn.Module):
    """timm's features-only ResNet: the stem (7x7 stride-2 conv, max-pool) and the stages up to the deepest map in
    `config.out_indices` (a stage no map needs is not built, as timm's `FeatureListNet` leaves it out).

    `channels` and `strides` describe the returned maps. The stem and `layer1` start frozen (`requires_grad`
    False), as DETR trains its ResNet: `trainable_prefixes` names what trains.

    Args:
        config: The architecture and which maps to return.
    """

    trainable_prefixes = ("layer2.", "layer3.", "layer4.")

    def __init__(self, config: TimmBackboneConfig) -> None:
        super().__init__()
        self.out_indices = list(config.out_indices)
        self.channels = config.channels
        self.strides = [config.stage_strides[i] for i in self.out_indices]
        self.conv1, self.bn1 = _conv_bn(config.num_channels, STEM_WIDTH, 7, 2)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # timm's stride-to-dilation rule: once the network stride reaches `output_stride`, a stage's stride becomes
        # dilation; its first block still uses the previous stage's dilation.
        cin, net_stride, dilation, limit = STEM_WIDTH, 4, 1, config.output_stride or 32
        for i, depth in enumerate(config.depths[: max(self.out_indices)]):
            stride, previous = (1 if i == 0 else 2), dilation
            if net_stride >= limit:
                dilation, stride = dilation * stride, 1
            else:
                net_stride *= stride
            width = STEM_WIDTH * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(cin, width, stride if j == 0 else 1, previous if j == 0 else dilation))
                cin = width * 4
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(self.trainable_prefixes))

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """`(B, num_channels, H, W)` -> the maps of `out_indices`, `(B, C, h, w)` (channels-last in memory)."""
        # oneDNN runs these convolutions fastest channels-last: ResNet-50 at 800x1333 on the 2-core EPYC, 1.5 s
        # NCHW, 1.1 s so; and a channels-last map flattens to tokens without a copy
        x = self.act1(self.bn1(self.conv1(pixel_values.contiguous(memory_format=torch.channels_last))))
        maps = [x]
        x = self.maxpool(x)
        for i in range(1, max(self.out_indices) + 1):
            x = getattr(self, f"layer{i}")(x)
            maps.append(x)
        return [maps[i] for i in self.out_indices]
