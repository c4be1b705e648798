"""Bounding boxes: the layouts, areas and overlaps that detection's loss, processor, pipeline and data share.

Three layouts, each a last dimension of 4:

- center `(cx, cy, w, h)`: what DETR-style models predict and their labels hold, normalised by the image size;
- corners `(x0, y0, x1, y1)`: what overlaps are computed on and what post-processing returns, in pixels;
- xywh `(x, y, w, h)`: the top-left corner and the size, COCO's annotation and results layout.

Scaling (`scale_boxes`, `normalize_boxes`) is the same for every layout: x-like values by the width, y-like values by
the height. Sizes are `(height, width)`, as transformers' `target_sizes`. Overlaps (`box_iou`,
`generalized_box_iou`) are pairwise and batch over leading dimensions; `paired_generalized_box_iou` is the
element-wise one a loss needs on matched pairs (the diagonal of the pairwise matrix, without the matrix).

Boxes with `x1 < x0` or `y1 < y0` are not checked for here (a check is a host sync): their overlaps are meaningless,
and a box of zero area against another of zero area divides by zero. Callers that take boxes from users validate
them where they take them (the detection loss does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "box_area",
    "box_iou",
    "center_to_corners",
    "clip_boxes",
    "corners_to_center",
    "corners_to_xywh",
    "generalized_box_iou",
    "normalize_boxes",
    "paired_generalized_box_iou",
    "scale_boxes",
    "xywh_to_corners",
]

Sizes = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def _check(boxes: torch.Tensor, name: str = "boxes", min_ndim: int = 1) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim < min_ndim or boxes.shape[-1] != 4:
        expected = "(..., 4)" if min_ndim == 1 else "(..., N, 4)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(boxes.shape)}")


def _upcast(boxes: torch.Tensor) -> torch.Tensor:
    # Products of pixel coordinates overflow float16 (65504 is a 256 x 256 box); compute in float32 instead.
    return boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """`(cx, cy, w, h)` -> `(x0, y0, x1, y1)`, over any leading dimensions."""
    _check(boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def corners_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """`(x0, y0, x1, y1)` -> `(cx, cy, w, h)`, over any leading dimensions."""
    _check(boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def xywh_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """COCO's `(x, y, w, h)` (top-left corner, size) -> `(x0, y0, x1, y1)`."""
    _check(boxes)
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def corners_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """`(x0, y0, x1, y1)` -> COCO's `(x, y, w, h)` (top-left corner, size), e.g. for a results file."""
    _check(boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """The areas of corner boxes `(..., 4)` -> `(...)` (float16/bfloat16 computed and returned in float32)."""
    _check(boxes)
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union area of corner boxes.

    Args:
        boxes1: `(..., N, 4)` corner boxes.
        boxes2: `(..., M, 4)` corner boxes; leading dimensions broadcast with `boxes1`'s.

    Returns:
        `(iou, union)`, each `(..., N, M)`.
    """
    _check(boxes1, "boxes1", 2)
    _check(boxes2, "boxes2", 2)
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    a, b = boxes1[..., :, None, :], boxes2[..., None, :, :]  # (..., N, 1, 4), (..., 1, M, 4)
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)  # (..., N, M, 2)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019, https://arxiv.org/abs/1902.09630) of corner boxes:
    IoU minus the fraction of the smallest enclosing box that the union leaves uncovered, in [-1, 1].

    Args:
        boxes1: `(..., N, 4)` corner boxes.
        boxes2: `(..., M, 4)` corner boxes; leading dimensions broadcast with `boxes1`'s.

    Returns:
        `(..., N, M)` GIoU.
    """
    iou, union = box_iou(boxes1, boxes2)
    a, b = _upcast(boxes1)[..., :, None, :], _upcast(boxes2)[..., None, :, :]
    wh = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0)  # enclosing box
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise generalized IoU of corner boxes `(..., 4)` of the same shape -> `(...)`: box i against box i,
    the same numbers as the diagonal of `generalized_box_iou` without computing the N x N matrix."""
    _check(boxes1, "boxes1")
    _check(boxes2, "boxes2")
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"paired boxes must have one shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    wh = (torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / union
    wh = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def _scale(boxes: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """`(w, h, w, h)` per image, shaped to broadcast against `boxes`: one `(height, width)` for any boxes, or
    `(B, 2)` sizes for `(B, N, 4)` boxes."""
    _check(boxes)
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    sizes = torch.as_tensor(sizes, dtype=dtype, device=boxes.device)
    if sizes.shape == (2,):
        h, w = sizes.unbind(-1)
        return torch.stack([w, h, w, h])
    if sizes.ndim == 2 and sizes.shape[1] == 2 and boxes.ndim == 3 and sizes.shape[0] == boxes.shape[0]:
        h, w = sizes.unbind(-1)
        return torch.stack([w, h, w, h], dim=-1)[:, None, :]  # (B, 1, 4)
    raise ValueError(
        f"sizes must be one (height, width) or one per image, (batch, 2) for boxes (batch, N, 4); got sizes of "
        f"shape {tuple(sizes.shape)} for boxes of shape {tuple(boxes.shape)}"
    )


def scale_boxes(boxes: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """Normalised boxes (any layout) -> pixels: x-like values times the width, y-like times the height.

    Args:
        boxes: `(..., 4)` boxes in `[0, 1]`, or `(B, N, 4)` with per-image sizes.
        sizes: one `(height, width)`, or `(B, 2)` (a tensor or a list of pairs), one per image of `boxes`.
    """
    return boxes * _scale(boxes, sizes)


def normalize_boxes(boxes: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """Pixel boxes (any layout) -> normalised: the inverse of `scale_boxes` (same arguments)."""
    return boxes / _scale(boxes, sizes)


def clip_boxes(boxes: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """Corner boxes clipped to the image: x in `[0, width]`, y in `[0, height]` (sizes as for `scale_boxes`)."""
    scale = _scale(boxes, sizes)
    return torch.minimum(boxes.clamp(min=0), scale.to(boxes.dtype))
