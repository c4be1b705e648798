"""Object detection: images and COCO-format boxes in, scored and labelled boxes out (Deformable DETR); trained with
Deformable DETR's recipe (AdamW lr 2e-4 with the backbone and the sampling-offset / reference-point projections at
a tenth, weight decay 1e-4, gradient clipping at 0.1, the rate dropped tenfold for the last fifth, random flip +
multi-scale resize + random crop that move the boxes, the model's own Hungarian-matched loss), measured in COCO mAP
with pycocotools; served as boxes, scores and labels (V2) or transformers' records (V1, `/predict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .task import Task


class DetectionTask(Task):
    name = "object-detection"
    heads = ("object-detection",)
    pipeline_task = "object-detection"
    aliases = ("detection", "detect")
    auto_class_name = "AutoModelForObjectDetection"
    pipeline_class_name = "ObjectDetectionPipeline"
    default_model = "SenseTime/deformable-detr"
    export_heads = {"detection": "object-detection"}
    head_title = "detection"
    title = "object detection"
    trainable = True
    labelled = True
    output_name = "logits"
    # Deformable DETR (Zhu et al. 2021, its configs/r50_deformable_detr.sh): AdamW 2e-4, backbone and the linear
    # projections that predict sampling offsets and reference points at x0.1, weight decay 1e-4, clip 0.1, 50
    # epochs with the rate dropped at 40 (`step`), batch 32, no warmup.
    recipe = {
        "weight_decay": 1e-4,
        "schedule": "step",
        "max_grad_norm": 0.1,
        "warmup_epochs": 0.0,
        "batch_size": 32,
        "lr_from_scratch": 2e-4,
        "lr_fine_tune": 2e-4,
    }
    # `backbone_lr_scale`: the backbone's (and the offset / reference-point projections') share of the rate;
    # `max_size`: the longest side's limit, as the shortest side's `image_size` (800 / 1333 in the paper);
    # `random_crop`: the recipe's resize + random crop branch of the augmentation (half the images); `multi_scale`:
    # the shortest side resized to one of the recipe's scales (else always to `image_size`).
    settings = {"backbone_lr_scale": 0.1, "max_size": None, "random_crop": True, "multi_scale": True}
    default_image_size = 800
    best_metric = "val_map"
    metric_title = "mAP"
    train_metric = "train_giou"
    eval_batch_size = 4
    eval_options = ("detections",)

    # -- training --

    def load_data(self, settings: Mapping[str, Any], progress: bool) -> Any:
        from ..data.detection import load_detection_data

        data = load_detection_data(settings["data"], settings["val_fraction"], progress=progress)
        if any(data.issues.values()):
            import logging

            logging.getLogger("pvtkit").warning("%s", data.report())
        return data

    def samples(self, data: Any, config: Any) -> tuple[list[Any], list[Any], list[int]]:
        # the data's class k is the model's class k (`labels_in_data_order`)
        return list(data.train), list(data.val), list(range(len(data.classes)))

    labels_in_data_order = True

    def prepare_model(self, model: Any, classes: list[str]) -> None:
        """The data's classes as the model's (in the data's order), and the auxiliary losses on: every decoder
        layer's predictions are matched and trained, as the paper trains (transformers' config defaults it off,
        for inference; without it the refinement heads of the early layers would get no gradient)."""
        super().prepare_model(model, classes)
        model.config.auxiliary_loss = True

    def processor_image_size(self, processor: Any) -> int | None:
        return (getattr(processor, "size", None) or {}).get("shortest_edge")

    def processor_size(self, processor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The shortest side at `image_size`, the longest within `max_size` (default: the processor's ratio of the
        two, 1333 / 800 for DETR's)."""
        return {"size": {"shortest_edge": settings["image_size"], "longest_edge": longest_edge(processor, settings)}}

    def train_dataset(self, samples: list[Any], processor: Any, settings: Mapping[str, Any]) -> Any:
        from ..data.detection import DetectionTrainDataset

        return DetectionTrainDataset(samples, processor, {**settings, "max_size": longest_edge(processor, settings)})

    def collate(self) -> Any:
        """Padded batches without the images that could not be decoded (`detection_collate(drop_failed=True)`)."""
        from functools import partial

        from ..data.detection import detection_collate

        return partial(detection_collate, drop_failed=True)

    def to_device(self, pixels: Any, labels: Any, device: Any) -> tuple[Any, Any]:
        """`pixels` is `(pixel_values, pixel_mask)`; `labels` one `{"class_labels", "boxes"}` dict per image."""
        values, mask = pixels
        moved = [{k: v.to(device) for k, v in target.items()} for target in labels]
        return (values.to(device, non_blocking=True), mask.to(device, non_blocking=True)), moved

    def model_inputs(self, pixels: Any, labels: Any) -> dict[str, Any]:
        """The model computes its own (set-matched) loss: it is given the labels."""
        return {"pixel_values": pixels[0], "pixel_mask": pixels[1], "labels": labels}

    def lr_scale_of(self, model: Any, settings: Mapping[str, Any]) -> Any:
        """The backbone and the projections that predict sampling offsets and reference points learn at
        `backbone_lr_scale` of the rate, the rest at the rate (Deformable DETR's `lr_backbone`, `lr_linear_proj`)."""
        scale = float(settings["backbone_lr_scale"])
        slower = ("sampling_offsets", "reference_points")

        def scale_of(name: str) -> float:
            parts = name.split(".")
            return scale if "backbone" in parts or any(p in slower for p in parts) else 1.0

        return scale_of

    def train_loss(self, output: Any, labels: Any, weights: Any, settings: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """The model's loss (a mean over the micro-batch's objects, as DETR normalises it) times the images that
        count, so that the trainer's mean over images gives the loss back; the train metric is the mean GIoU of the
        matched boxes (1 - `loss_giou`)."""
        import torch

        count = (weights > 0).sum()  # the images in the forward (the collate left the failed ones out)
        loss = output.loss * count
        with torch.no_grad():
            giou = (1.0 - output.loss_dict["loss_giou"].detach().float()) * count
        return loss, giou, count

    def evaluator(
        self, model: Any, samples: list[Any], ids: list[int], processor: Any, settings: Mapping[str, Any], **common: Any
    ) -> Any:
        from ..evaluation_detection import DetectionEvaluator

        return DetectionEvaluator(model, samples, processor, **common)

    def validation_record(self, result: Any) -> tuple[dict[str, Any], float]:
        import math

        record = {
            "val_map": result.metrics["AP"],
            "val_map50": result.metrics["AP50"],
            "val_map75": result.metrics["AP75"],
            "val_images": result.num_images,
        }
        return record, -math.inf if math.isnan(result.metrics["AP"]) else result.metrics["AP"]

    def short_metrics(self, record: Mapping[str, Any], validated: bool) -> tuple[str, str]:
        val = f"val mAP {record['val_map']:.2%}, mAP50 {record['val_map50']:.2%}" if validated else ""
        return f"GIoU {record['train_giou']:.3f}", val

    # -- evaluation (`pvtkit eval`) --

    def evaluate(self, model: Any, data: Any, **options: Any) -> Any:
        from ..evaluation_detection import evaluate_detection

        return evaluate_detection(model, data, **options)

    def report_table(self, report: dict[str, Any]) -> str:
        from ..evaluation_detection import detection_table

        return detection_table(report)

    # -- what the server answers --

    served_outputs = ("boxes", "scores", "labels")
    served_default_outputs = ("boxes", "scores", "labels")
    draws_overlay = True

    def serve_options(self, top_k: int) -> dict[str, Any]:
        return {}

    def served_rows(self, output: Any) -> list[Any]:
        """Per image `(logits (queries, classes), pred_boxes (queries, 4))`."""
        logits, boxes = output.logits.float().cpu().numpy(), output.pred_boxes.float().cpu().numpy()
        return list(zip(logits, boxes))

    def served_answer(self, pipe: Any, output: Any, size: tuple[int, int]) -> Any:
        """`{"scores", "labels", "boxes"}` of one image in its own pixels, above the pipeline's threshold."""
        from types import SimpleNamespace

        import torch

        logits, boxes = output
        row = SimpleNamespace(logits=torch.from_numpy(logits)[None], pred_boxes=torch.from_numpy(boxes)[None])
        found = pipe.image_processor.post_process_object_detection(
            row, threshold=pipe.threshold, target_sizes=[size], top_k=pipe.top_k
        )[0]
        return {k: v.numpy() for k, v in found.items()}

    def served_record(self, pipe: Any, answer: Any, top_k: int) -> Any:
        """transformers' records (`score`, `label`, `box`) of the detections above the threshold, best first."""
        import torch

        from ..pipelines.detection import detection_records

        return detection_records({k: torch.from_numpy(v) for k, v in answer.items()}, pipe.labels)

    def upload_record(self, name: str, record: Any, answer: Any = None) -> dict[str, Any]:
        return {"path": name, "detections": record}

    def served_view(self, pipe: Any, image: Any, answer: Any) -> Any:
        """The boxes drawn over the image, each labelled with its class and score."""
        from ..visualize import draw_boxes

        return draw_boxes(image, answer["boxes"], [pipe.labels[int(k)] for k in answer["labels"]], answer["scores"])

    def served_v2_outputs(
        self, pipe: Any, answers: list[Any], asked: Mapping[str, Any], top_k: int, check_top_k: Any
    ) -> list[tuple[str, str, Any]]:
        """`boxes` FP32 `[N, K, 4]` (xmin, ymin, xmax, ymax in the image's pixels), `scores` FP32 `[N, K]`, `labels`
        INT64 `[N, K]` (class ids; `id2label` is in the model's metadata), best first; K is the most detections any
        image of the request has, and an image with fewer is padded with score 0, label -1 and a zero box."""
        import numpy as np

        most = max((len(a["scores"]) for a in answers), default=0)
        boxes = np.zeros((len(answers), most, 4), np.float32)
        scores = np.zeros((len(answers), most), np.float32)
        labels = np.full((len(answers), most), -1, np.int64)
        for i, a in enumerate(answers):
            n = len(a["scores"])
            boxes[i, :n], scores[i, :n], labels[i, :n] = a["boxes"], a["scores"], a["labels"]
        arrays = {"boxes": ("FP32", boxes), "scores": ("FP32", scores), "labels": ("INT64", labels)}
        return [(name, *arrays[name]) for name in asked]

    def served_output_types(self, num_labels: int) -> list[dict[str, Any]]:
        return [
            {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "labels", "datatype": "INT64", "shape": [-1, -1]},
        ]


def longest_edge(processor: Any, settings: Mapping[str, Any]) -> int:
    """The run's longest-side limit: `max_size`, else the processor's longest / shortest edge ratio at the run's
    shortest side (DETR's 1333 / 800)."""
    if settings.get("max_size"):
        return int(settings["max_size"])
    size = getattr(processor, "size", None) or {}
    ratio = (
        size["longest_edge"] / size["shortest_edge"]
        if size.get("shortest_edge") and size.get("longest_edge")
        else 1333 / 800
    )
    return int(round(settings["image_size"] * ratio))


TASK = DetectionTask()
