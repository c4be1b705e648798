"""Evaluating an object detector on COCO-format data: COCO's AP (IoU .50:.95), AP50, AP75, AP by object size, AR
and per-class AP, by pycocotools (`coco_metrics`), over the detections the model makes.

The detections are what COCO's protocol scores (and Deformable DETR's evaluation makes): per image the 100 best
(query, class) pairs by sigmoid score, no threshold, boxes in the image's own pixels. Under `torchrun` the images are
sharded across processes and the detections gathered; every process returns the same result. Unreadable images
are skipped and reported.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ._files import atomic_write
from .coco_metrics import STAT_NAMES, coco_evaluate
from .data.detection import DetectionEvalDataset, DetectionSample, coco_ground_truth, detection_collate
from .distributed import DistContext
from .evaluation import _prepare, autocast_context, progress_bar

logger = logging.getLogger("pvtkit")

MAX_DETECTIONS = 100  # per image, as COCO's protocol counts them


@dataclass
class DetectionEvalResult:
    """What a detection evaluation measured.

    Attributes:
        metrics: `coco_metrics.STAT_NAMES` -> value (`AP` the mAP at IoU .50:.95; NaN where the data has nothing of
            that kind to find).
        per_class: Class name -> AP (None for a class without ground-truth objects).
        num_images: Images evaluated; `num_detections` the detections scored.
        detections: COCO results records (`image_id`, `category_id`, `bbox` `[x, y, w, h]`, `score`), what
            pycocotools scored.
        skipped: Unreadable images -> reason.
        seconds: Wall time of the model loop and the scoring.
    """

    metrics: dict[str, float]
    per_class: dict[str, float | None]
    num_images: int
    num_detections: int
    detections: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        def number(v: float) -> float | None:
            return None if v is None or math.isnan(v) else v

        return {
            **{name: number(self.metrics[name]) for name in STAT_NAMES},
            "per_class": self.per_class,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
        }


def model_categories(model: Any) -> list[dict[str, Any]]:
    """COCO categories of a model's classes: class k is category k, named by `id2label`."""
    labels = model.config.id2label or {}
    return [{"id": k, "name": str(labels.get(k, f"LABEL_{k}"))} for k in range(model.config.num_labels)]


class DetectionEvaluator:
    """Evaluates a detector on fixed samples, again and again (training validates every epoch).

    Args:
        model: A detection model returning `.logits` (queries x classes) and `.pred_boxes` (normalised cx, cy, w, h).
        samples: `data.detection.DetectionSample`s, all of them: this process takes its share under torchrun.
        processor: The model's processor (`post_process_object_detection`).
        categories: The data's COCO categories, in the data's class order (sample label k is `categories[k]`;
            default: the model's classes as categories 0..K-1, for data whose classes are the model's).
        category_of: The model's class -> the category id its detections count as (default: class k is
            `categories[k]`); a class missing from it (a class the data does not have) is not scored.
        batch_size, num_workers: Per process.
        device, amp_dtype: Where and in which autocast precision the model runs.
        ctx: The distributed context.
        progress: Show a progress bar (on the main process).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        samples: Sequence[DetectionSample],
        processor: Any,
        *,
        categories: Sequence[Mapping[str, Any]] | None = None,
        category_of: Mapping[int, int] | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.processor = model, processor
        self.device, self.amp_dtype = torch.device(device), amp_dtype
        self.ctx, self.progress, self.samples = ctx or DistContext(), progress, list(samples)
        self.categories = [dict(c) for c in categories] if categories is not None else model_categories(model)
        if category_of is None:
            category_of = {k: int(c["id"]) for k, c in enumerate(self.categories)}
        self.category_of = dict(category_of)
        self.ground_truth = coco_ground_truth(self.samples, self.categories)
        self.dataset = DetectionEvalDataset(self.samples[self.ctx.rank :: self.ctx.world_size], processor)
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=detection_collate,
            generator=torch.Generator(),
        )

    @torch.no_grad()
    def run(self, desc: str = "eval") -> DetectionEvalResult:
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        detections: list[dict[str, Any]] = []
        skipped: dict[str, str] = {}
        bar = progress_bar(len(self.samples), desc, self.progress and self.ctx.is_main)
        for (pixels, mask), targets, weights, indices, reasons in self.loader:
            keep = [k for k, w in enumerate(weights.tolist()) if w > 0]
            for k, w in enumerate(weights.tolist()):
                if w <= 0:
                    skipped[str(self.dataset.samples[int(indices[k])].path)] = reasons[k]
            if keep:
                with autocast_context(device, self.amp_dtype):
                    output = model(pixel_values=pixels[keep].to(device), pixel_mask=mask[keep].to(device))
                sizes = [targets[k]["orig_size"] for k in keep]
                found = self.processor.post_process_object_detection(
                    output, threshold=0.0, target_sizes=sizes, top_k=MAX_DETECTIONS
                )
                for k, image in zip(keep, found):
                    detections += self._records(targets[k]["image_id"], image)
            bar.update(len(indices) * self.ctx.world_size)
        bar.close()
        for part in self.ctx.gather_objects(skipped):
            skipped.update(part)
        detections = [d for part in self.ctx.gather_objects(detections) for d in part]
        model.train(was_training)
        kept = [s for s in self.samples if str(s.path) not in skipped]
        truth = coco_ground_truth(kept, self.categories) if skipped else self.ground_truth
        scored = coco_evaluate(truth, detections)
        return DetectionEvalResult(
            {name: scored[name] for name in STAT_NAMES},
            scored["per_class"],
            len(kept),
            len(detections),
            sorted(detections, key=lambda d: (d["image_id"], -d["score"])),
            skipped,
            time.perf_counter() - start,
        )

    def _records(self, image_id: int, found: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        records = []
        for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist()):
            if label not in self.category_of:  # a class of the model's that the data does not have
                continue
            x0, y0, x1, y1 = box
            records.append(
                {
                    "image_id": image_id,
                    "category_id": self.category_of[label],
                    "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                    "score": round(float(score), 6),
                }
            )
        return records


def match_categories(model: Any, categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """The model's class -> the data's category id, matched by name (a COCO checkpoint's "N/A" classes and others
    the data does not have are left out: their detections are not scored). A model whose classes are unnamed
    (`LABEL_k`) and as many as the data's categories is taken to have the data's classes in order (class k is
    `categories[k]`). A ValueError names both sides when no class matches."""
    model_names = [c["name"] for c in model_categories(model)]
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    matched = {k: by_name[name] for k, name in enumerate(model_names) if name in by_name}
    if not matched and len(model_names) == len(categories) and all(n.startswith("LABEL_") for n in model_names):
        return {k: int(c["id"]) for k, c in enumerate(categories)}
    if not matched:
        names = [c["name"] for c in categories]
        raise ValueError(
            f"none of the model's classes ({', '.join(model_names[:10])}{', ...' if len(model_names) > 10 else ''}) "
            f"is a category of the data ({', '.join(map(str, names[:10]))}{', ...' if len(names) > 10 else ''})"
        )
    return matched


def evaluate_detection(
    model: Any,
    data: str | Path,
    *,
    processor: Any = None,
    val_fraction: float | None = None,
    detections: str | Path | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    confusion: str | Path | None = None,
    progress: bool = True,
    revision: str | None = None,
    local_files_only: bool = False,
) -> DetectionEvalResult:
    """Evaluate a detector on COCO-format data (`data.detection.DETECTION_LAYOUTS`): COCO mAP by pycocotools.

    Args:
        model: A detection model, or where to load one (Hub id, directory, weights file).
        data: The dataset; its validation split when it has one, else the `val_fraction` hold-out that training
            validated on, else every image.
        detections: Also write the scored detections here (COCO's results JSON: `image_id`, `category_id`, `bbox`,
            `score`), which `pycocotools.COCO.loadRes` reads back.
        confusion: Not for detection (a ValueError if given).

    Returns:
        A `DetectionEvalResult` (the same on every process under torchrun).
    """
    from .auto import AutoModelForObjectDetection
    from .data.detection import load_detection_data
    from .dtypes import parse_dtype

    if confusion is not None:
        raise ValueError("a confusion matrix is for classifiers; pvtkit eval gives a detector per-class AP instead")
    model, processor, name, device, ctx = _prepare(
        model, AutoModelForObjectDetection, processor, device, revision, local_files_only
    )
    found = load_detection_data(data, val_fraction or 0.0)
    samples = found.val if found.val_source == "folder" or val_fraction else found.train
    evaluator = DetectionEvaluator(
        model,
        samples,
        processor,
        categories=found.categories,
        category_of=match_categories(model, found.categories),
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        amp_dtype=parse_dtype(dtype),
        ctx=ctx,
        progress=progress,
    )
    result = evaluator.run()
    result.skipped = {**dict(found.unreadable), **result.skipped}
    if detections is not None and ctx.is_main:
        text = json.dumps(result.detections)
        atomic_write(detections, lambda tmp: Path(tmp).write_text(text))
    logger.info("evaluated %s on %s: mAP %.4f, mAP50 %.4f", name, data, result.metrics["AP"], result.metrics["AP50"])
    return result


def detection_table(report: Mapping[str, Any]) -> str:
    """`pvtkit eval`'s table of a detection report (`DetectionEvalResult.to_dict()` with `model` and `data`)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    titles = {
        "AP": "AP @[.50:.95]",
        "AP50": "AP @.50",
        "AP75": "AP @.75",
        "APs": "AP small",
        "APm": "AP medium",
        "APl": "AP large",
        "AR1": "AR @1",
        "AR10": "AR @10",
        "AR100": "AR @100",
        "ARs": "AR small",
        "ARm": "AR medium",
        "ARl": "AR large",
    }
    lines = [
        f"model          {report['model']}",
        f"data           {report['data']} ({report['num_images']} images, {report['num_detections']} detections)",
    ]
    lines += [f"{titles[name]:<14} {pct(report[name])}" for name in STAT_NAMES]
    if report["skipped"]:
        lines.append(f"skipped        {len(report['skipped'])} image(s):")
        lines += [f"  {path}: {reason}" for path, reason in report["skipped"].items()]
    classes = report["per_class"]
    if classes:
        width = max(5, *(len(str(n)) for n in classes))
        lines += ["", f"{'class':<{width}}  AP @[.50:.95]"]
        lines += [f"{name:<{width}}  {pct(ap):>13}" for name, ap in classes.items()]
        lines.append("\n(-: no ground-truth object of that kind in the data)")
    return "\n".join(lines) + "\n"
