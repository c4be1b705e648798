"""COCO detection metrics (Lin et al. 2014, https://arxiv.org/abs/1405.0312): mean average precision over IoU
0.50:0.95 and its usual companions, computed by pycocotools.

pycocotools is the reference implementation: the numbers papers, leaderboards, DETR, Deformable DETR, mmdetection
and transformers' examples quote all come out of its `COCOeval`, so a number pvtkit prints is comparable with theirs
as it is. faster-coco-eval (a C++ rewrite) was considered: several times faster on COCO's 5,000 validation images and
equal to within rounding, but one more compiled dependency for what is seconds per evaluation here.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# `COCOeval.stats` in its order (summarize()): AP at IoU .50:.95 / .50 / .75, AP of small / medium / large objects,
# recall given 1 / 10 / 100 detections per image, recall of small / medium / large objects (100 detections).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet_coco(dataset: Mapping[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_detections(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> list[dict]:
    images = {image["id"] for image in ground_truth["images"]}
    categories = {c["id"] for c in ground_truth["categories"]}
    out = []
    for i, d in enumerate(detections):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in d:
                raise ValueError(f'detection {i} has no "{key}" (expected image_id, category_id, bbox, score)')
        if d["image_id"] not in images:
            raise ValueError(f"detection {i}: image_id {d['image_id']!r} is no image of the ground truth")
        if d["category_id"] not in categories:
            raise ValueError(f"detection {i}: category_id {d['category_id']!r} is no category of the ground truth")
        x, y, w, h = (float(v) for v in d["bbox"])
        # copies: pycocotools' loadRes writes `area`, `id` and `iscrowd` into the dicts it is given
        out.append(
            {
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "bbox": [x, y, w, h],
                "score": float(d["score"]),
            }
        )
    return out


def coco_evaluate(
    ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], per_class: bool = True
) -> dict[str, Any]:
    """COCO's box metrics of `detections` against `ground_truth`, by pycocotools (its printing swallowed).

    Args:
        ground_truth: A COCO dict: `images` (`id`, ...), `annotations` (`id`, `image_id`, `category_id`, `bbox`
            `[x, y, w, h]`, `area`, `iscrowd`), `categories` (`id`, `name`); `data.detection.coco_ground_truth`
            makes one.
        detections: `{"image_id", "category_id", "bbox": [x, y, w, h] in pixels, "score"}` records (COCO's results
            format); pycocotools keeps the 100 best-scored per image.
        per_class: Also compute each category's AP.

    Returns:
        `STAT_NAMES` -> value in [0, 1] (`AP` is the mAP at IoU 0.50:0.95, `AR100` the recall at 100 detections per
        image, ...), NaN where the ground truth has nothing to measure (no object of that size: pycocotools' -1);
        with no detections at all, 0 wherever there is something to find. `per_class`: category name -> AP (IoU
        .50:.95, all areas, 100 detections), None for a category without ground-truth objects. `num_images`,
        `num_detections`.

    Raises:
        ValueError: A detection lacks a key, or names an image or category the ground truth does not have.
    """
    from pycocotools.cocoeval import COCOeval

    gt = _quiet_coco(ground_truth)
    records = _check_detections(ground_truth, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        if records:
            dt = gt.loadRes(records)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 wherever there is ground truth
            dt = _quiet_coco({**gt.dataset, "annotations": []})
        evaluation = COCOeval(gt, dt, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    result: dict[str, Any] = {
        name: (math.nan if value < 0 else float(value)) for name, value in zip(STAT_NAMES, evaluation.stats)
    }
    if per_class:
        # precision: (IoU thresholds, recall points, categories, area ranges, max detections); area "all" is 0 and
        # 100 detections the last; -1 marks "no ground truth", left out as summarize() leaves it out
        precision = evaluation.eval["precision"]
        names = {c["id"]: c["name"] for c in ground_truth["categories"]}
        result["per_class"] = {}
        for k, category in enumerate(evaluation.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            result["per_class"][names[category]] = float(np.mean(values)) if values.size else None
    result["num_images"] = len(ground_truth["images"])
    result["num_detections"] = len(records)
    return result
