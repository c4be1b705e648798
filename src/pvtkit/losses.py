"""The losses the models compute with `labels` and the trainer and evaluators use: one copy each.

- `segmentation_loss`: transformers' SegFormer loss (logits upsampled to the labels, cross-entropy ignoring an
  index; BCE for one label).
- `silog_loss`: the scale-invariant log loss of Eigen et al. 2014, as transformers' GLPN computes it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    ignore_index: int,
    reduction: str = "mean",
    upsampled: bool = False,
    check: bool = True,
) -> Any:
    """transformers' SegFormer loss: logits upsampled (bilinear) to the labels' size, then cross-entropy with
    `ignore_index`, or for one label BCE-with-logits over the valid pixels.

    Labels must be `(B, H, W)` class indices in `[0, num_labels)` or `ignore_index` (for one label: 0/1 targets);
    a value outside that is refused by name (cross-entropy would fail with a device-side assert on a GPU).

    `reduction="sum"` sums over the labelled pixels (the trainer normalises by the global batch's); `upsampled=True`
    returns `(loss, upsampled logits)`, for metrics on the same upsampling; `check=False` skips the label check
    (one pass and a host sync) for labels the caller built valid. This is the one copy of the loss: the
    models, the trainer and the evaluator all call it."""
    if labels.ndim != 3 or labels.shape[0] != logits.shape[0] or labels.is_floating_point() and num_labels > 1:
        raise ValueError(
            f"labels must be (batch={logits.shape[0]}, height, width) integer class indices, got shape "
            f"{tuple(labels.shape)} and dtype {labels.dtype}"
        )
    if check and not torch.jit.is_tracing() and not torch.compiler.is_compiling():  # one host sync, none when traced
        classes = max(num_labels, 2)
        bad = ((labels < 0) | (labels >= classes)) & (labels != ignore_index)
        if bad.any():
            raise ValueError(
                f"label value {labels[bad][0].item()} is outside [0, {classes}) and is not the ignore "
                f"index {ignore_index}; expected class indices below num_labels={num_labels}"
            )
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if num_labels > 1:
        loss = F.cross_entropy(up, labels.long(), ignore_index=ignore_index, reduction=reduction)
    else:
        valid = ((labels >= 0) & (labels != ignore_index)).float()
        per_pixel = F.binary_cross_entropy_with_logits(up.squeeze(1), labels.float(), reduction="none") * valid
        loss = per_pixel.sum() if reduction == "sum" else per_pixel.mean()
    return (loss, up) if upsampled else loss


def silog_loss(predicted: torch.Tensor, target: torch.Tensor, lambd: float = 0.5) -> torch.Tensor:
    """The scale-invariant log loss (Eigen et al. 2014) over the pixels with a positive target, as transformers
    computes it: sqrt(mean(d^2) - lambd * mean(d)^2), d = log target - log predicted."""
    valid = target > 0
    d = torch.log(target[valid]) - torch.log(predicted[valid])
    return torch.sqrt(d.pow(2).mean() - lambd * d.mean().pow(2))
