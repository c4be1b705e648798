"""Deformable DETR's loss (`pvtkit.models.deformable_detr.loss`) and the box helpers (`pvtkit.boxes`) it stands on.

Parity with transformers' `DeformableDetrForObjectDetectionLoss` (total, every term, the auxiliary outputs, the
gradients), and, independently of transformers, against a float64 NumPy computation written out per pair: GIoU,
the focal loss, the matcher's optimality (brute force over assignments), the two-stage `_enc` terms."""

from __future__ import annotations

import itertools
import math
import types

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss
from transformers.loss.loss_for_object_detection import generalized_box_iou as hf_generalized_box_iou

from pvtkit import boxes as B
from pvtkit.models.deformable_detr import loss as L
from pvtkit.models.deformable_detr.loss import detection_loss, hungarian_match, sigmoid_focal_loss, validate_labels

from helpers import assert_close


def make_config(**changes) -> types.SimpleNamespace:
    """transformers' DeformableDetrConfig defaults for the fields the loss reads."""
    fields = dict(
        num_labels=7,
        class_cost=1.0,
        bbox_cost=5.0,
        giou_cost=2.0,
        focal_alpha=0.25,
        auxiliary_loss=False,
        decoder_layers=6,
        bbox_loss_coefficient=5.0,
        giou_loss_coefficient=2.0,
        two_stage=False,
    )
    return types.SimpleNamespace(**{**fields, **changes})


def random_boxes(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`(n, 4)` normalised `(cx, cy, w, h)` boxes inside the image."""
    x0y0 = torch.rand(n, 2, generator=generator) * 0.8
    wh = torch.rand(n, 2, generator=generator) * (1 - x0y0) * 0.95 + 0.01
    return torch.cat([x0y0 + wh / 2, wh], dim=1)


def random_labels(sizes: list[int], num_labels: int) -> list[dict[str, torch.Tensor]]:
    return [{"class_labels": torch.randint(0, num_labels, (n,)), "boxes": random_boxes(n)} for n in sizes]


def random_predictions(layers: int, batch: int, queries: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every decoder layer's logits and (sigmoid) boxes, as leaves that collect gradients."""
    logits = (torch.randn(layers, batch, queries, classes) * 2 - 1).requires_grad_()
    boxes = torch.randn(layers, batch, queries, 4).sigmoid().requires_grad_()
    return logits, boxes


# ---------------------------------------------------------------- an independent float64 computation, per pair


def np_corners(box) -> tuple[float, float, float, float]:
    cx, cy, w, h = (float(v) for v in box)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def np_giou(a, b) -> float:
    """GIoU of two corner boxes, written out."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclosing - union) / enclosing


def np_focal(x: np.ndarray, t: np.ndarray, alpha: float) -> np.ndarray:
    """The focal loss as the paper writes it: -alpha (1-p)^2 log p for positives, -(1-alpha) p^2 log(1-p) else."""
    p = 1 / (1 + np.exp(-x))
    return t * (-alpha * (1 - p) ** 2 * np.log(p)) + (1 - t) * (-(1 - alpha) * p**2 * np.log(1 - p))


def np_cost(logits: np.ndarray, boxes: np.ndarray, classes: np.ndarray, targets: np.ndarray, config) -> np.ndarray:
    """One image's (Q, n) matching cost, per pair."""
    p = 1 / (1 + np.exp(-logits))
    cost = np.empty((len(logits), len(classes)))
    for q, t in itertools.product(range(len(logits)), range(len(classes))):
        pr = p[q, classes[t]]
        focal = 0.25 * (1 - pr) ** 2 * -math.log(pr + 1e-8) - 0.75 * pr**2 * -math.log(1 - pr + 1e-8)
        l1 = np.abs(boxes[q] - targets[t]).sum()
        giou = np_giou(np_corners(boxes[q]), np_corners(targets[t]))
        cost[q, t] = config.bbox_cost * l1 + config.class_cost * focal - config.giou_cost * giou
    return cost


def np_losses(logits, pred_boxes, labels, config, num_boxes: float, objectness: bool = False) -> dict[str, float]:
    """`loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error` of one prediction set, in float64 NumPy: a
    per-image cost, SciPy's assignment, the focal loss on a one-hot target; `objectness` makes every class 0."""
    logits, pred_boxes = logits.detach().double().numpy(), pred_boxes.detach().double().numpy()
    onehot = np.zeros_like(logits)
    l1 = giou = 0.0
    cardinality = []
    for b, target in enumerate(labels):
        classes = target["class_labels"].numpy() * (0 if objectness else 1)
        boxes = target["boxes"].double().numpy()
        if len(classes):
            rows, cols = linear_sum_assignment(np_cost(logits[b], pred_boxes[b], classes, boxes, config))
            for q, t in zip(rows, cols):
                onehot[b, q, classes[t]] = 1
                l1 += np.abs(pred_boxes[b, q] - boxes[t]).sum()
                giou += 1 - np_giou(np_corners(pred_boxes[b, q]), np_corners(boxes[t]))
        claimed = ((1 / (1 + np.exp(-logits[b]))).max(-1) > 0.5).sum()
        cardinality.append(abs(claimed - len(classes)))
    return {
        "loss_ce": np_focal(logits, onehot, config.focal_alpha).sum() / num_boxes,
        "loss_bbox": l1 / num_boxes,
        "loss_giou": giou / num_boxes,
        "cardinality_error": float(np.mean(cardinality)),
    }


# ---------------------------------------------------------------- boxes


def test_box_conversions_round_trip_and_match_transformers():
    center = random_boxes(20)
    corners = B.center_to_corners(center)
    assert torch.equal(corners, center_to_corners_format(center))
    assert_close(B.corners_to_center(corners), center, what="center -> corners -> center")
    xywh = B.corners_to_xywh(corners)
    assert_close(xywh[:, 2:], center[:, 2:], what="xywh size")
    assert_close(B.xywh_to_corners(xywh), corners, what="corners -> xywh -> corners")
    batched = center.view(4, 5, 4)
    assert torch.equal(B.center_to_corners(batched), corners.view(4, 5, 4))
    assert_close(B.box_area(corners), center[:, 2] * center[:, 3], what="area")
    assert B.box_area(torch.tensor([[0.0, 0.0, 300.0, 300.0]], dtype=torch.float16)).item() == 90000.0


def test_generalized_box_iou_against_a_per_pair_computation_and_transformers():
    a, b = B.center_to_corners(random_boxes(7)), B.center_to_corners(random_boxes(5))
    a[3] = b[2]  # one pair identical: GIoU 1
    expected = torch.tensor([[np_giou(x.tolist(), y.tolist()) for y in b] for x in a], dtype=torch.float64)
    giou = B.generalized_box_iou(a, b)
    assert_close(giou, expected, what="pairwise GIoU")
    assert torch.equal(giou, hf_generalized_box_iou(a, b))
    assert giou[3, 2].item() == pytest.approx(1.0, abs=1e-6)
    iou, union = B.box_iou(a, b)
    assert torch.all(iou <= 1) and torch.all(union >= B.box_area(a)[:, None] - 1e-7)
    # Batched over a leading dimension, and element-wise on pairs: the same numbers.
    stacked = B.generalized_box_iou(torch.stack([a, a]), torch.stack([b, b]))
    assert torch.equal(stacked[1], giou)
    assert torch.equal(B.paired_generalized_box_iou(a[:5], b), torch.diagonal(giou[:5, :5]))
    # Disjoint boxes a box-width apart: IoU 0, enclosing 3, union 2.
    far = B.generalized_box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]]))
    assert far.item() == pytest.approx(-1 / 3)


def test_scale_normalize_clip():
    center = random_boxes(6).view(2, 3, 4)
    sizes = torch.tensor([[480, 640], [100, 200]])
    pixels = B.scale_boxes(center, sizes)
    assert_close(pixels[1, :, 0], center[1, :, 0] * 200, what="x scaled by width")
    assert_close(pixels[1, :, 3], center[1, :, 3] * 100, what="h scaled by height")
    assert_close(B.normalize_boxes(pixels, [(480, 640), (100, 200)]), center, what="normalize(scale(b))")
    assert torch.equal(B.scale_boxes(center[0], (480, 640)), pixels[0])
    clipped = B.clip_boxes(torch.tensor([[-5.0, 10.0, 700.0, 500.0]]), (480, 640))
    assert clipped.tolist() == [[0.0, 10.0, 640.0, 480.0]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: B.center_to_corners(torch.zeros(3, 5)), r"\(\.\.\., 4\), got \(3, 5\)"),
        (lambda: B.box_iou(torch.zeros(4), torch.zeros(2, 4)), r"boxes1 must have shape \(\.\.\., N, 4\)"),
        (lambda: B.generalized_box_iou(torch.zeros(2, 4), torch.zeros(2, 3)), r"boxes2 must have shape"),
        (lambda: B.paired_generalized_box_iou(torch.zeros(2, 4), torch.zeros(3, 4)), r"one shape"),
        (lambda: B.scale_boxes(torch.zeros(2, 3, 4), torch.zeros(3, 2)), r"sizes must be one \(height, width\)"),
        (lambda: B.box_area([0, 0, 1, 1]), r"must be a torch.Tensor"),
    ],
)
def test_box_shape_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---------------------------------------------------------------- the loss against transformers

CASES = {
    "one image": dict(sizes=[3], queries=10, aux=False),
    "an empty image": dict(sizes=[0, 5], queries=10, aux=True, layers=2),
    "four images": dict(sizes=[1, 4, 0, 2], queries=16, aux=True, layers=6),
    "many objects": dict(sizes=[80, 120], queries=300, aux=True, layers=3),
    "more objects than queries": dict(sizes=[12, 3], queries=8, aux=False),
    "no objects at all": dict(sizes=[0, 0], queries=10, aux=True, layers=2),
    "other weights": dict(
        sizes=[2, 6, 3],
        queries=20,
        aux=True,
        layers=3,
        config=dict(class_cost=2.0, bbox_cost=3.0, giou_cost=1.5, focal_alpha=0.3, bbox_loss_coefficient=4.0),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_parity_with_transformers(case):
    layers = case.get("layers", 1)
    config = make_config(auxiliary_loss=case["aux"], decoder_layers=layers, **case.get("config", {}))
    labels = random_labels(case["sizes"], config.num_labels)
    classes, coords = random_predictions(layers, len(labels), case["queries"], config.num_labels)

    ours = detection_loss(classes[-1], labels, coords[-1], config, classes, coords)
    theirs = DeformableDetrForObjectDetectionLoss(classes[-1], labels, "cpu", coords[-1], config, classes, coords)

    assert list(ours[1]) == list(theirs[1])
    expected_terms = 4 * (layers if case["aux"] else 1)
    assert len(ours[1]) == expected_terms
    assert_close(ours[0], theirs[0], what="total loss")
    for key, value in theirs[1].items():
        assert_close(ours[1][key], value, what=key)
    if case["aux"]:
        assert len(ours[2]) == len(theirs[2]) == layers - 1
        for mine, reference in zip(ours[2], theirs[2]):
            assert mine.keys() == reference.keys()
            assert all(torch.equal(mine[k], reference[k]) for k in mine)
    else:
        assert ours[2] is None and theirs[2] is None

    our_grads = torch.autograd.grad(ours[0], [classes, coords])
    their_grads = torch.autograd.grad(theirs[0], [classes, coords])
    assert_close(our_grads[0], their_grads[0], what="gradient of the logits")
    assert_close(our_grads[1], their_grads[1], what="gradient of the boxes", floor=1e-6)


def test_against_an_independent_computation():
    config = make_config()
    labels = random_labels([2, 0, 3], config.num_labels)
    classes, coords = random_predictions(1, 3, 6, config.num_labels)
    loss, terms, _ = detection_loss(classes[-1], labels, coords[-1], config)
    expected = np_losses(classes[-1], coords[-1], labels, config, num_boxes=5)
    for key, value in expected.items():
        assert_close(terms[key], torch.tensor(value), what=key)
    total = expected["loss_ce"] + 5 * expected["loss_bbox"] + 2 * expected["loss_giou"]
    assert_close(loss, torch.tensor(total), what="total")


def test_sigmoid_focal_loss_is_the_formula():
    x = torch.randn(4, 9, 5, dtype=torch.float64) * 3
    t = (torch.rand(4, 9, 5) < 0.3).double()
    for alpha in (0.25, 0.6):
        assert_close(sigmoid_focal_loss(x, t, alpha), torch.from_numpy(np_focal(x.numpy(), t.numpy(), alpha)))
    # alpha < 0: no alpha weighting, the focal-modulated cross-entropy alone.
    plain = np_focal(x.numpy(), t.numpy(), 0.5) * 2
    assert_close(sigmoid_focal_loss(x, t, -1.0), torch.from_numpy(plain), what="alpha=-1")


@pytest.mark.parametrize(("queries", "objects"), [(5, 3), (3, 5), (6, 6)])
def test_matcher_is_optimal(queries, objects):
    config = make_config()
    logits = torch.randn(1, queries, config.num_labels) * 2
    pred = torch.randn(1, queries, 4).sigmoid()
    target = random_labels([objects], config.num_labels)[0]
    [(rows, cols)] = hungarian_match(
        logits,
        pred,
        target["class_labels"],
        target["boxes"],
        [objects],
        config.class_cost,
        config.bbox_cost,
        config.giou_cost,
    )
    cost = np_cost(logits[0].double().numpy(), pred[0].double().numpy(), target["class_labels"].numpy(),
                   target["boxes"].double().numpy(), config)  # fmt: skip
    pairs = min(queries, objects)
    assert len(rows) == len(cols) == pairs and len(set(rows.tolist())) == len(set(cols.tolist())) == pairs
    found = cost[rows.numpy(), cols.numpy()].sum()
    if queries >= objects:
        best = min(cost[list(q), list(range(objects))].sum() for q in itertools.permutations(range(queries), objects))
    else:
        best = min(cost[list(range(queries)), list(t)].sum() for t in itertools.permutations(range(objects), queries))
    assert found == pytest.approx(best, rel=1e-6, abs=1e-6)


def test_nan_predictions_are_matched_last_not_raised():
    config = make_config()
    labels = random_labels([2], config.num_labels)
    logits, boxes = torch.randn(1, 4, config.num_labels), torch.rand(1, 4, 4) * 0.5 + 0.25
    boxes[0, 1] = float("nan")
    [(rows, _)] = hungarian_match(logits, boxes, labels[0]["class_labels"], labels[0]["boxes"], [2])
    assert 1 not in rows.tolist()
    boxes[0, :] = float("nan")
    loss, _, _ = detection_loss(logits, labels, boxes, config)
    assert torch.isnan(loss)


# ---------------------------------------------------------------- two-stage, normalisation, precision


def test_two_stage_encoder_terms():
    config = make_config(auxiliary_loss=True, decoder_layers=2, two_stage=True)
    labels = random_labels([2, 3], config.num_labels)
    classes, coords = random_predictions(2, 2, 6, config.num_labels)
    enc_class = torch.randn(2, 12, config.num_labels, requires_grad=True)
    enc_coords = torch.randn(2, 12, 4, requires_grad=True)

    loss, terms, _ = detection_loss(classes[-1], labels, coords[-1], config, classes, coords, enc_class, enc_coords)
    theirs, their_terms, _ = DeformableDetrForObjectDetectionLoss(
        classes[-1], labels, "cpu", coords[-1], config, classes, coords
    )
    assert list(terms) == list(their_terms) + ["loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "cardinality_error_enc"]
    for key, value in their_terms.items():
        assert_close(terms[key], value, what=key)
    expected = np_losses(enc_class, enc_coords.sigmoid(), labels, config, num_boxes=5, objectness=True)
    for key, value in expected.items():
        assert_close(terms[key + "_enc"], torch.tensor(value), what=key + "_enc")
    encoder = terms["loss_ce_enc"] + 5 * terms["loss_bbox_enc"] + 2 * terms["loss_giou_enc"]
    assert_close(loss, theirs + encoder, what="total with the encoder's terms")
    grads = torch.autograd.grad(loss, [enc_class, enc_coords])
    assert all(g.abs().sum() > 0 for g in grads)

    # Without the auxiliary loss, as the original: no encoder terms, transformers' numbers.
    config.auxiliary_loss = False
    loss, terms, _ = detection_loss(classes[-1], labels, coords[-1], config, classes, coords, enc_class, enc_coords)
    assert not any(k.endswith("_enc") for k in terms)
    config.auxiliary_loss = True
    with pytest.raises(ValueError, match="enc_outputs_class .* config.two_stage"):
        detection_loss(classes[-1], labels, coords[-1], config, classes, coords)
    with pytest.raises(ValueError, match=r"enc_outputs_coord_logits must have shape \(2, 12, 4\)"):
        detection_loss(classes[-1], labels, coords[-1], config, classes, coords, enc_class, enc_coords[:, :5])


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    config = make_config()
    labels = random_labels([3, 1], config.num_labels)
    logits, boxes = torch.randn(2, 8, config.num_labels), torch.rand(2, 8, 4) * 0.5 + 0.25
    _, reference, _ = detection_loss(logits, labels, boxes, config)  # one process: normalised by 4 objects

    other_rank = {"objects": 6.0}
    monkeypatch.setattr(L.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(L.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(L.dist, "all_reduce", lambda t: t.add_(other_rank["objects"]))
    _, terms, _ = detection_loss(logits, labels, boxes, config)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        assert_close(terms[key], reference[key] * 4 / 5, what=f"{key} over (4 + 6) / 2 objects")
    other_rank["objects"] = 0.0
    empty = random_labels([0, 0], config.num_labels)
    # no object anywhere: max(0 + 0, 1) / 2, so that the two processes' averaged gradients are one process's on
    # the whole (objectless) batch, which divides by max(0, 1)
    _, terms, _ = detection_loss(logits, empty, boxes, config)
    assert_close(terms["loss_ce"], detection_loss(logits, empty, boxes, config, num_boxes=0.5)[1]["loss_ce"])

    monkeypatch.undo()
    _, terms, _ = detection_loss(logits, labels, boxes, config, num_boxes=8.0)
    assert_close(terms["loss_bbox"], reference["loss_bbox"] / 2, what="an explicit num_boxes")


def test_low_precision_predictions_are_computed_in_float32():
    config = make_config()
    labels = random_labels([3, 2], config.num_labels)
    logits = torch.randn(2, 10, config.num_labels).bfloat16()
    boxes = torch.rand(2, 10, 4).bfloat16()
    loss, terms, _ = detection_loss(logits, labels, boxes, config)
    reference, _, _ = detection_loss(logits.float(), labels, boxes.float(), config)
    assert loss.dtype == torch.float32 and torch.equal(loss, reference)


# ---------------------------------------------------------------- bad labels and inputs


def good(n: int = 2) -> dict[str, torch.Tensor]:
    return {"class_labels": torch.tensor([1, 2, 3][:n]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * n)}


BAD_LABELS = {
    "missing key": ({"class_labels": torch.tensor([1])}, r"labels\[1\] has no 'boxes'"),
    "not a dict": ([1, 2], r"labels\[1\] must be a dict"),
    "class below 0": ({**good(), "class_labels": torch.tensor([1, -1])}, r"labels\[1\]\['class_labels'\]\[1\] = -1"),
    "class = num_labels": ({**good(), "class_labels": torch.tensor([7, 1])}, r"\['class_labels'\]\[0\] = 7 is outside \[0, 7\)"),
    "float classes": ({**good(), "class_labels": torch.tensor([1.0, 2.0])}, r"1-D integer tensor"),
    "boxes (n, 3)": ({**good(), "boxes": torch.rand(2, 3)}, r"labels\[1\]\['boxes'\] must be \(2, 4\).*got shape \(2, 3\)"),
    "boxes and classes disagree": ({**good(), "boxes": torch.rand(3, 4)}, r"must be \(2, 4\)"),
    "integer boxes": ({**good(), "boxes": torch.ones(2, 4, dtype=torch.long)}, r"floating point"),
    "nan": ({**good(), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, float("nan"), 0.2, 0.2]])}, r"\['boxes'\]\[1\] = \[0.5, nan, 0.2, 0.2\] is not finite"),
    "zero width": ({**good(), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.2], [0.5, 0.5, 0.2, 0.2]])}, r"\['boxes'\]\[0\] .* width or height <= 0"),
    "negative height": ({**good(1), "boxes": torch.tensor([[0.5, 0.5, 0.2, -0.1]])}, r"width or height <= 0"),
    "pixels": ({**good(1), "boxes": torch.tensor([[320.0, 240.0, 50.0, 40.0]])}, r"\['boxes'\]\[0\] = \[320, 240, 50, 40\] reaches outside the image"),
    "outside the image": ({**good(1), "boxes": torch.tensor([[0.95, 0.5, 0.2, 0.2]])}, r"corners \[0.85, 0.4, 1.05, 0.6\] leave \[0, 1\]"),
}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_bad_labels_are_named(bad):
    target, message = bad
    config = make_config()
    logits, boxes = torch.randn(3, 5, config.num_labels), torch.rand(3, 5, 4)
    labels = [good(), target, good(0)]
    with pytest.raises(ValueError, match=message):
        detection_loss(logits, labels, boxes, config)
    with pytest.raises(ValueError, match=message):
        validate_labels(labels, config.num_labels)


def test_label_tolerance_and_batch():
    validate_labels([{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.9002, 0.5, 0.2, 0.2]])}], 1)
    validate_labels([{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.9, 0.5, 0.2, 0.2]]).bfloat16()}], 1)
    with pytest.raises(ValueError, match="labels has 1 images but the predictions have 2"):
        validate_labels([good()], 7, batch_size=2)
    with pytest.raises(ValueError, match="one dict per image"):
        validate_labels(good(), 7)


def test_bad_predictions():
    config = make_config(auxiliary_loss=True, decoder_layers=3)
    classes, coords = random_predictions(3, 2, 5, config.num_labels)
    labels = [good(), good(1)]
    with pytest.raises(ValueError, match=r"pred_boxes must be \(2, 5, 4\)"):
        detection_loss(classes[-1], labels, coords[-1, :, :4], config, classes, coords)
    with pytest.raises(ValueError, match=r"num_labels=7"):
        detection_loss(classes[-1, ..., :6], labels, coords[-1], config, classes, coords)
    with pytest.raises(ValueError, match="outputs_class is required with config.auxiliary_loss"):
        detection_loss(classes[-1], labels, coords[-1], config)
    with pytest.raises(ValueError, match=r"outputs_coord must have shape \(3, 2, 5, 4\)"):
        detection_loss(classes[-1], labels, coords[-1], config, classes, coords[1:])
    with pytest.raises(ValueError, match="can't all be 0"):
        detection_loss(classes[-1], labels, coords[-1], make_config(class_cost=0, bbox_cost=0, giou_cost=0))
