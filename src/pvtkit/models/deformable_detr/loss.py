"""Deformable DETR's training loss (Zhu et al. 2020, https://arxiv.org/abs/2010.04159), equal to transformers'.

Each image's objects are matched one-to-one to queries by the Hungarian algorithm (SciPy's `linear_sum_assignment`)
on a cost of three parts: a focal-style class cost, the L1 distance of the `(cx, cy, w, h)` boxes and the negative
generalized IoU. Matched queries are then supervised towards their object, the rest towards "no object":

- `loss_ce`: sigmoid focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002) over every query and class,
  summed and divided by the number of objects;
- `loss_bbox`, `loss_giou`: L1 and 1 - GIoU of the matched boxes, summed and divided by the number of objects;
- `cardinality_error`: |queries scoring above 0.5 - objects|, averaged over images, for logging only.

With `config.auxiliary_loss` the same losses are computed for every decoder layer but the last (each matched on its
own), as `loss_ce_0`, `loss_bbox_0`, ... The total weights `loss_ce*` by 1, `loss_bbox*` by
`config.bbox_loss_coefficient` and `loss_giou*` by `config.giou_loss_coefficient`; cardinality is not in it.

Where this differs from transformers 5.25, on purpose:

- Two-stage (`config.two_stage` with `config.auxiliary_loss`): the encoder's proposals get the same losses, as the
  original code computes them (`SetCriterion`, fundamentalvision/Deformable-DETR) and transformers does not: matched
  to the image's objects with every object's class being 0 (the original's binary "object" target, the class whose
  score picks the proposals), suffixed `_enc`, and weighted into the total like the decoder's.
- The number of objects that normalises the losses is averaged over processes when `torch.distributed` is
  initialised: the global batch's count, at least 1, divided by the number of processes (DETR clamps after the
  division, which differs from one process on a global batch without objects). transformers reduces it only when
  accelerate's state exists, and then divides accelerate's (already averaged) mean by the number of processes again.
  In one process both are `max(objects in the batch, 1)`.
- Labels are validated (a clear `ValueError` naming the image, key and value), where transformers silently treats a
  class id equal to `num_labels` as "no object" and trains on any box it is given.
- Predicted boxes that are NaN cost the most (matched last) and make the loss NaN, for the trainer's non-finite
  check to see; transformers' GIoU raises a `ValueError` about the corner format on them.
- fp16/bf16 inputs are computed in float32.

The encoder's `cardinality_error_enc` counts proposals whose best class scores above 0.5, as the decoder's does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ...boxes import center_to_corners, generalized_box_iou, paired_generalized_box_iou

__all__ = ["detection_loss", "hungarian_match", "sigmoid_focal_loss", "validate_labels"]

# The matcher's focal class cost uses fixed alpha and gamma (as transformers and the original do), whatever
# `config.focal_alpha` says; the loss uses `config.focal_alpha`.
MATCH_ALPHA = 0.25
FOCAL_GAMMA = 2.0
# How far outside [0, 1] a normalised box's corner may lie: rounding in whatever normalised it (a float32 round trip
# is ~1e-7 off; 1e-3 is a pixel of a 1000-pixel image), or the label dtype's own epsilon when that is coarser.
BOX_TOLERANCE = 1e-3

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """The element-wise sigmoid focal loss, unreduced: `alpha_t (1 - p_t)^gamma BCE(logits, targets)`, with
    `p_t = p` and `alpha_t = alpha` where the target is 1, `1 - p` and `1 - alpha` where it is 0 (a negative
    `alpha` leaves the alpha weighting out).

    Args:
        logits: raw scores, any shape.
        targets: 0/1 targets of the same shape and dtype.
        alpha: the weight of the positives.
        gamma: the focusing exponent.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _targets(
    labels: Sequence[Mapping[str, torch.Tensor]], num_labels: int, batch_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Checks `labels` and concatenates them: `(class ids (T,), boxes (T, 4), objects per image)`. One host sync
    for the values, none for the shapes."""
    if isinstance(labels, Mapping) or not isinstance(labels, Sequence):
        raise ValueError(f"labels must be a list with one dict per image, got {type(labels).__name__}")
    if batch_size is not None and len(labels) != batch_size:
        raise ValueError(f"labels has {len(labels)} images but the predictions have {batch_size}")
    sizes: list[int] = []
    class_list: list[torch.Tensor] = []
    box_list: list[torch.Tensor] = []
    for i, target in enumerate(labels):
        if not isinstance(target, Mapping):
            raise ValueError(f"labels[{i}] must be a dict with 'class_labels' and 'boxes', got {type(target).__name__}")
        for key in ("class_labels", "boxes"):
            if key not in target:
                raise ValueError(f"labels[{i}] has no {key!r} (keys: {sorted(target)})")
            if not isinstance(target[key], torch.Tensor):
                raise ValueError(f"labels[{i}][{key!r}] must be a torch.Tensor, got {type(target[key]).__name__}")
        classes, boxes = target["class_labels"], target["boxes"]
        if classes.numel() == 0 and boxes.numel() == 0:  # no objects: `torch.tensor([])` will do for either
            sizes.append(0)
            continue
        if classes.ndim != 1 or classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise ValueError(
                f"labels[{i}]['class_labels'] must be a 1-D integer tensor, got shape {tuple(classes.shape)} and "
                f"dtype {classes.dtype}"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != classes.shape[0]:
            raise ValueError(
                f"labels[{i}]['boxes'] must be ({classes.shape[0]}, 4), one (cx, cy, w, h) per class label, got "
                f"shape {tuple(boxes.shape)}"
            )
        if not boxes.is_floating_point():
            raise ValueError(f"labels[{i}]['boxes'] must be floating point (normalised to [0, 1]), got {boxes.dtype}")
        sizes.append(len(classes))
        class_list.append(classes)
        box_list.append(boxes)

    if not class_list:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), sizes
    class_ids = torch.cat(class_list).long()
    boxes = torch.cat(box_list)
    tolerance = max([BOX_TOLERANCE] + [torch.finfo(b.dtype).eps for b in box_list])
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return class_ids, boxes, sizes
    corners = center_to_corners(boxes.float())
    bad_box = (
        ~torch.isfinite(boxes).all(-1)
        | (boxes[:, 2:] <= 0).any(-1)
        | (corners[:, :2] < -tolerance).any(-1)
        | (corners[:, 2:] > 1 + tolerance).any(-1)
    )
    bad_class = (class_ids < 0) | (class_ids >= num_labels)
    if (bad_box | bad_class).any():  # the one host sync; what follows runs only to word the error
        k = int(torch.nonzero(bad_box | bad_class)[0])
        image = int(np.searchsorted(np.cumsum(sizes), k, side="right"))
        j = k - sum(sizes[:image])
        if bad_class[k]:
            raise ValueError(
                f"labels[{image}]['class_labels'][{j}] = {int(class_ids[k])} is outside [0, {num_labels}) "
                f"(num_labels={num_labels})"
            )
        box = "[" + ", ".join(f"{v:.6g}" for v in boxes[k].tolist()) + "]"
        if not torch.isfinite(boxes[k]).all():
            why = "is not finite"
        elif (boxes[k, 2:] <= 0).any():
            why = "has a width or height <= 0"
        else:
            edges = ", ".join(f"{v:.6g}" for v in corners[k].tolist())
            why = f"reaches outside the image: its corners [{edges}] leave [0, 1] by more than {tolerance:g}"
        raise ValueError(
            f"labels[{image}]['boxes'][{j}] = {box} {why}; boxes must be (cx, cy, w, h) normalised by the image "
            "size, inside the image"
        )
    return class_ids, boxes, sizes


def validate_labels(
    labels: Sequence[Mapping[str, torch.Tensor]], num_labels: int, batch_size: int | None = None
) -> None:
    """Raise a `ValueError` naming the image, key and value if `labels` are not detection labels: a list (of
    `batch_size` if given) of dicts with `class_labels` (integer `(n,)` in `[0, num_labels)`) and `boxes`
    (floating `(n, 4)`, `(cx, cy, w, h)` normalised, finite, `w, h > 0`, corners in `[0, 1]` within
    `BOX_TOLERANCE`, or the dtype's epsilon when coarser). Images with no objects are valid."""
    _targets(labels, num_labels, batch_size)


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    class_ids: torch.Tensor,
    boxes: torch.Tensor,
    sizes: Sequence[int],
    class_cost: float = 1.0,
    bbox_cost: float = 5.0,
    giou_cost: float = 2.0,
) -> Indices:
    """The one-to-one assignment of each image's objects to queries of least total cost.

    The cost of query q for object t is `class_cost * (focal(p) - focal(1 - p)) + bbox_cost * |box_q - box_t|_1 -
    giou_cost * GIoU(box_q, box_t)`, with `p` the sigmoid score of t's class and the focal terms at alpha 0.25, gamma
    2. The batch's costs are one `(B, Q, max objects)` computation (images padded to the most objects), moved to the
    CPU once and solved per image. NaN and infinite costs become the largest float, so such queries are matched last.

    Args:
        logits: `(B, Q, C)` class logits.
        pred_boxes: `(B, Q, 4)` predicted `(cx, cy, w, h)`.
        class_ids: `(T,)` every image's object classes, concatenated.
        boxes: `(T, 4)` every image's `(cx, cy, w, h)` boxes, concatenated.
        sizes: the number of objects of each image (summing to T).
        class_cost, bbox_cost, giou_cost: the weights of the three costs (defaults: DeformableDetrConfig's).

    Returns:
        Per image `(query indices, object indices)`, int64 on the CPU, `min(Q, n)` long, sorted by query.
    """
    if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
        raise ValueError("the matcher's class_cost, bbox_cost and giou_cost can't all be 0")
    batch_size, num_queries = logits.shape[:2]
    most = max(sizes, default=0)
    empty = torch.zeros(0, dtype=torch.int64)
    if most == 0:
        return [(empty, empty) for _ in sizes]

    # Pad each image's objects to `most` with a harmless box and class 0; the padding's costs are never read.
    device = logits.device
    image = torch.repeat_interleave(torch.arange(batch_size, device=device), torch.as_tensor(sizes, device=device))
    starts = torch.as_tensor(np.cumsum([0] + list(sizes[:-1])), device=device)
    slot = torch.arange(len(class_ids), device=device) - starts[image]
    padded_ids = class_ids.new_zeros(batch_size, most)
    padded_ids[image, slot] = class_ids
    padded_boxes = boxes.new_full((batch_size, most, 4), 0.5)
    padded_boxes[image, slot] = boxes

    prob = logits.sigmoid().gather(2, padded_ids[:, None, :].expand(-1, num_queries, -1))  # (B, Q, most)
    neg = (1 - MATCH_ALPHA) * (prob**FOCAL_GAMMA) * (-(1 - prob + 1e-8).log())
    pos = MATCH_ALPHA * ((1 - prob) ** FOCAL_GAMMA) * (-(prob + 1e-8).log())
    l1 = torch.cdist(pred_boxes, padded_boxes, p=1)  # (B, Q, most)
    giou = -generalized_box_iou(center_to_corners(pred_boxes), center_to_corners(padded_boxes))
    cost = bbox_cost * l1 + class_cost * (pos - neg) + giou_cost * giou
    top = torch.finfo(cost.dtype).max
    cost = torch.nan_to_num(cost, nan=top, posinf=top, neginf=top).cpu().numpy()

    indices = []
    for b, n in enumerate(sizes):
        queries, objects = linear_sum_assignment(cost[b, :, :n])
        indices.append((torch.as_tensor(queries, dtype=torch.int64), torch.as_tensor(objects, dtype=torch.int64)))
    return indices


def _num_boxes(count: int, device: torch.device) -> float:
    """The losses' normaliser: the global batch's objects (at least 1) divided by the number of processes, so that
    the processes' gradients, averaged, are one process's on the whole batch (a batch without objects included)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        total = torch.tensor([float(count)], device=device)
        dist.all_reduce(total)
        return max(total.item(), 1.0) / dist.get_world_size()
    return float(max(count, 1))


def _set_losses(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    class_ids: torch.Tensor,
    boxes: torch.Tensor,
    sizes: list[int],
    num_boxes: float,
    config: Any,
) -> dict[str, torch.Tensor]:
    """One prediction set's matching and its four terms: `loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`."""
    indices = hungarian_match(
        logits, pred_boxes, class_ids, boxes, sizes, config.class_cost, config.bbox_cost, config.giou_cost
    )
    device = logits.device
    starts = np.cumsum([0] + sizes[:-1])
    image = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
    query = torch.cat([q for q, _ in indices]).to(device)
    target = torch.cat([o + int(s) for (_, o), s in zip(indices, starts)]).to(device)  # into the concatenation

    onehot = torch.zeros_like(logits)
    onehot[image, query, class_ids[target]] = 1
    focal = sigmoid_focal_loss(logits, onehot, config.focal_alpha, FOCAL_GAMMA)
    # The mean over queries times their number is the sum (transformers' order of operations, kept for equality).
    loss_ce = focal.mean(1).sum() / num_boxes * logits.shape[1]

    matched, wanted = pred_boxes[image, query], boxes[target]  # (matches, 4)
    loss_bbox = F.l1_loss(matched, wanted, reduction="none").sum() / num_boxes
    giou = paired_generalized_box_iou(center_to_corners(matched), center_to_corners(wanted))
    loss_giou = (1 - giou).sum() / num_boxes

    with torch.no_grad():
        found = (logits.sigmoid().max(-1).values > 0.5).sum(1)  # (B,) queries that claim an object
        cardinality = F.l1_loss(found.float(), torch.as_tensor(sizes, device=device, dtype=torch.float))
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality}


def _check_stack(name: str, value: torch.Tensor | None, shape: tuple[int, ...], why: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is required {why}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} {why}, got {tuple(value.shape)}")
    return value


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def detection_loss(
    logits: torch.Tensor,
    labels: Sequence[Mapping[str, torch.Tensor]],
    pred_boxes: torch.Tensor,
    config: Any,
    outputs_class: torch.Tensor | None = None,
    outputs_coord: torch.Tensor | None = None,
    enc_outputs_class: torch.Tensor | None = None,
    enc_outputs_coord_logits: torch.Tensor | None = None,
    *,
    num_boxes: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict[str, torch.Tensor]] | None]:
    """Deformable DETR's loss, as transformers' `DeformableDetrForObjectDetectionLoss` computes it (plus the
    two-stage encoder terms; see the module docstring).

    Args:
        logits: `(B, Q, num_labels)` the last decoder layer's class logits.
        labels: one dict per image: `class_labels` (integer `(n,)` in `[0, num_labels)`) and `boxes` (`(n, 4)`
            `(cx, cy, w, h)` normalised to the image); `n` may be 0. Moved to the logits' device.
        pred_boxes: `(B, Q, 4)` the last decoder layer's `(cx, cy, w, h)` boxes (after the sigmoid).
        config: anything with `num_labels`, `class_cost`, `bbox_cost`, `giou_cost`, `focal_alpha`,
            `auxiliary_loss`, `decoder_layers`, `bbox_loss_coefficient`, `giou_loss_coefficient`, `two_stage`.
        outputs_class: `(decoder_layers, B, Q, num_labels)` every decoder layer's logits; needed with
            `config.auxiliary_loss`.
        outputs_coord: `(decoder_layers, B, Q, 4)` every decoder layer's boxes; needed with `config.auxiliary_loss`.
        enc_outputs_class: `(B, S, num_labels)` the encoder proposals' logits; needed with `config.two_stage` and
            `config.auxiliary_loss`.
        enc_outputs_coord_logits: `(B, S, 4)` the proposals' boxes before the sigmoid; needed with them.
        num_boxes: the losses' normaliser, where the caller knows better (e.g. a global batch's object count under
            gradient accumulation); by default the batch's objects, averaged over processes, at least 1. That
            default is a collective when `torch.distributed` is initialised: every process must call this equally
            often, so pass `num_boxes` where they may not (evaluation over uneven shards).

    Returns:
        `(loss, loss_dict, auxiliary_outputs)`: the weighted total; every term (`loss_ce`, `loss_bbox`,
        `loss_giou`, `cardinality_error`, then `_0`, `_1`, ... per auxiliary layer, then `_enc`); and per auxiliary
        layer `{"logits", "pred_boxes"}` (None without `config.auxiliary_loss`).

    Raises:
        ValueError: malformed labels (naming the image, key and value) or predictions of the wrong shape.
    """
    if logits.ndim != 3 or logits.shape[-1] != config.num_labels:
        raise ValueError(f"logits must be (batch, queries, num_labels={config.num_labels}), got {tuple(logits.shape)}")
    batch_size, num_queries, num_labels = logits.shape
    if tuple(pred_boxes.shape) != (batch_size, num_queries, 4):
        raise ValueError(f"pred_boxes must be ({batch_size}, {num_queries}, 4), got {tuple(pred_boxes.shape)}")
    class_ids, boxes, sizes = _targets(labels, num_labels, batch_size)
    device, dtype = logits.device, _float(pred_boxes).dtype
    class_ids, boxes = class_ids.to(device), boxes.to(device, dtype)
    if num_boxes is None:
        num_boxes = _num_boxes(sum(sizes), device)

    weights = {"loss_ce": 1, "loss_bbox": config.bbox_loss_coefficient, "loss_giou": config.giou_loss_coefficient}
    loss_dict = _set_losses(_float(logits), _float(pred_boxes), class_ids, boxes, sizes, num_boxes, config)
    weight_dict = dict(weights)

    auxiliary_outputs = None
    if config.auxiliary_loss:
        layers = config.decoder_layers
        why = "with config.auxiliary_loss"
        outputs_class = _check_stack("outputs_class", outputs_class, (layers, batch_size, num_queries, num_labels), why)
        outputs_coord = _check_stack("outputs_coord", outputs_coord, (layers, batch_size, num_queries, 4), why)
        auxiliary_outputs = [{"logits": c, "pred_boxes": b} for c, b in zip(outputs_class[:-1], outputs_coord[:-1])]
        for i, aux in enumerate(auxiliary_outputs):
            terms = _set_losses(
                _float(aux["logits"]), _float(aux["pred_boxes"]), class_ids, boxes, sizes, num_boxes, config
            )
            loss_dict.update({f"{k}_{i}": v for k, v in terms.items()})
            weight_dict.update({f"{k}_{i}": v for k, v in weights.items()})

        if getattr(config, "two_stage", False):
            why = "with config.two_stage and config.auxiliary_loss"
            if enc_outputs_class is None or enc_outputs_class.ndim != 3:
                shape = None if enc_outputs_class is None else tuple(enc_outputs_class.shape)
                raise ValueError(f"enc_outputs_class must be (batch, proposals, num_labels) {why}, got {shape}")
            proposals = enc_outputs_class.shape[1]
            _check_stack("enc_outputs_class", enc_outputs_class, (batch_size, proposals, num_labels), why)
            _check_stack("enc_outputs_coord_logits", enc_outputs_coord_logits, (batch_size, proposals, 4), why)
            enc_boxes = _float(enc_outputs_coord_logits).sigmoid()
            objectness = torch.zeros_like(class_ids)  # every object is class 0, "object"
            terms = _set_losses(_float(enc_outputs_class), enc_boxes, objectness, boxes, sizes, num_boxes, config)
            loss_dict.update({f"{k}_enc": v for k, v in terms.items()})
            weight_dict.update({f"{k}_enc": v for k, v in weights.items()})

    loss = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
    return loss, loss_dict, auxiliary_outputs
