"""GLPN: monocular depth estimation on the Mix Transformer encoder, with a selective-feature-fusion decoder.

Kim et al., "Global-Local Path Networks for Monocular Depth Estimation with Vertical CutDepth",
https://arxiv.org/abs/2201.07436.

The encoder is the pyramid encoder (`models/pyramid/`) under the names GLPN checkpoints carry
(`glpn.encoder.block.0.0.attention.self.query`, ...: SegFormer's), so `vinvino02/glpn-kitti` and `vinvino02/glpn-nyu`
load as they are. The decoder goes from the deepest stage up: a 1x1 conv to `decoder_hidden_size`, then at each
shallower stage a selective feature fusion (the two maps weighted by a learned two-channel attention map) and a 2x
bilinear upsampling; the head predicts `sigmoid(x) * max_depth` at the input's size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import cpu_kernels as kernels
from ...losses import silog_loss
from ...outputs import BaseModelOutput, DepthEstimatorOutput
from ..family import Family
from ..pyramid import modeling as pyramid
from .configuration import GLPNConfig
from .conversion import LAYOUTS, infer_config

# ---------------------------------------------------------------------------------------------------------------
# Decoder and head


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.ReLU())


class SelectiveFeatureFusion(nn.Module):
    """Local and global maps weighted by a two-channel attention map computed from both (section 3.4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convolutional_layer1 = _conv_bn_relu(2 * channels, channels)
        self.convolutional_layer2 = _conv_bn_relu(channels, channels // 2)
        self.convolutional_layer3 = nn.Conv2d(channels // 2, 2, 3, 1, 1)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        x = torch.cat((local, global_), dim=1)
        for seq in (self.convolutional_layer1, self.convolutional_layer2):  # conv, BatchNorm, ReLU
            x = kernels.conv_act(x, seq[0], F.relu, norm=seq[1])
        attn = kernels.conv_act(x, self.convolutional_layer3, torch.sigmoid)  # (B, 2, h, w)
        return local * attn[:, :1] + global_ * attn[:, 1:]


class DecoderStage(nn.Module):
    """A 1x1 conv to the decoder width (none when the widths agree), fusion with the deeper stage, upsampling."""

    def __init__(self, in_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.fusion = SelectiveFeatureFusion(out_channels) if fuse else None

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, size: Any) -> torch.Tensor:
        x = kernels.conv(x, self.convolution) if isinstance(self.convolution, nn.Conv2d) else x
        if self.fusion is not None and deeper is not None:
            x = self.fusion(x, deeper)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class GLPNDecoder(nn.Module):
    """The stages from the deepest up, each upsampled to the next (shallower) stage's size, the last one twice
    (to 1/2, then to the input's size); returns every stage's output.

    transformers upsamples by exactly 2x each time, which only fits inputs whose sides are multiples of 32; sizes
    taken from the maps are the same there and also serve every other size."""

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        width = config.decoder_hidden_size
        self.stages = nn.ModuleList(DecoderStage(c, width, i > 0) for i, c in enumerate(config.hidden_sizes[::-1]))

    def forward(self, maps: tuple[torch.Tensor, ...], size: Any) -> list[torch.Tensor]:
        deepest_first = maps[::-1]
        targets = [m.shape[-2:] for m in deepest_first[1:]] + [[2 * s for s in deepest_first[-1].shape[-2:]]]
        outputs, x = [], None
        for hidden, stage, target in zip(deepest_first, self.stages, targets):
            x = stage(hidden, x, target)
            outputs.append(x)
        outputs[-1] = F.interpolate(outputs[-1], size=size, mode="bilinear", align_corners=False)
        return outputs


class DepthHead(nn.Module):
    """Conv 3x3, ReLU, conv 3x3 to one channel; depth = sigmoid * `max_depth`: `(B, H, W)`."""

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        c = config.decoder_hidden_size
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, 1, 3, 1, 1))
        self.max_depth, self.index = config.max_depth, getattr(config, "head_in_index", -1)

    def forward(self, decoded: list[torch.Tensor]) -> torch.Tensor:
        x = kernels.conv_act(decoded[self.index], self.head[0], F.relu)
        return (kernels.conv_act(x, self.head[2], torch.sigmoid) * self.max_depth).squeeze(1)


# ---------------------------------------------------------------------------------------------------------------
# Models


class GLPNPreTrainedModel(pyramid.MixPreTrainedModel):
    """GLPN's config class and state-dict prefix; the forward is the pyramid one, attentions flat over blocks."""

    config_class = GLPNConfig
    base_model_prefix = "glpn"


class GLPNModel(GLPNPreTrainedModel, pyramid.PyramidModel):
    """The MiT encoder. `last_hidden_state` is the last stage's NCHW map; `hidden_states` one map per stage.

    Args:
        config: The architecture.
    """

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__(config)
        self.encoder = pyramid.MixEncoder(config)


class DepthEstimation(pyramid.PyramidPreTrainedModel):
    """The forward of every pyramid model with GLPN's decoder and depth head (GLPN's, PVTv2's): `predicted_depth`
    `(B, H, W)`; with `labels` `(B, H, W)` (0: no ground truth), the scale-invariant log loss. A family's class
    builds its encoder model under its prefix, `decoder = GLPNDecoder(config)` and `head = DepthHead(config)`; the
    config carries `decoder_hidden_size` and `max_depth`."""

    head_prefixes = ("decoder.", "head.")
    output_names = ("predicted_depth",)
    decoder: GLPNDecoder
    head: DepthHead

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> DepthEstimatorOutput | tuple:
        """`pixel_values` `(B, num_channels, H, W)`; `labels` `(B, H, W)` ground-truth depth."""
        pyramid.check_dense_input(pixel_values, self.config)
        return self._forward(pixel_values, labels, output_attentions, output_hidden_states, return_dict)

    def _head(self, out: BaseModelOutput, hidden: Any, attentions: Any, labels: Any, size: Any) -> DepthEstimatorOutput:
        depth = self.head(self.decoder(out.hidden_states, size))
        if labels is not None and labels.shape[-2:] != depth.shape[-2:]:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}; expected (batch, height, width) at the "
                f"input's size, {tuple(depth.shape)}"
            )
        loss = silog_loss(depth, labels) if labels is not None else None
        return DepthEstimatorOutput(loss=loss, predicted_depth=depth, hidden_states=hidden, attentions=attentions)


class GLPNForDepthEstimation(GLPNPreTrainedModel, DepthEstimation):
    """GLPN: the MiT encoder, the decoder and the depth head: `predicted_depth` `(B, H, W)`; with `labels`
    `(B, H, W)` (0: no ground truth), the scale-invariant log loss.

    Args:
        config: The architecture; `max_depth` scales the prediction.
    """

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__(config)
        self.glpn = GLPNModel(config)
        self.decoder = GLPNDecoder(config)
        self.head = DepthHead(config)


FAMILY = Family(
    model_type="glpn",
    config_class=GLPNConfig,
    processor="GLPNImageProcessor",
    classes={"model": GLPNModel, "depth-estimation": GLPNForDepthEstimation},
    layouts=LAYOUTS,
    infer_config=infer_config,
    min_export_side=pyramid.min_export_side,
    describe=pyramid.describe,
)
