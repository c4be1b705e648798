"""Semantic segmentation: images and masks in, a class per pixel out; trained with SegFormer's recipe
(mmsegmentation's segformer configs: AdamW lr 6e-5 with the decode head at 10x, weight decay 0.01, poly decay, joint
image+mask augmentation, cross-entropy ignoring 255 averaged over the global batch's labelled pixels), measured in
mIoU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .task import Task


class SegmentationTask(Task):
    name = "semantic-segmentation"
    heads = ("semantic-segmentation",)
    pipeline_task = "image-segmentation"
    aliases = ("segmentation", "segment")
    auto_class_name = "AutoModelForSemanticSegmentation"
    pipeline_class_name = "ImageSegmentationPipeline"
    default_model = "nvidia/segformer-b0-finetuned-ade-512-512"
    export_heads = {"segmentation": "semantic-segmentation"}
    head_title = "segmentation"
    title = "semantic segmentation"
    trainable = True
    labelled = True
    recipe = {
        "weight_decay": 0.01,
        "schedule": "poly",
        "head_lr_scale": 10.0,
        "scale_range": [0.5, 2.0],
        "batch_size": 16,
        "lr_from_scratch": 6e-4,
        "lr_fine_tune": 6e-5,
    }
    settings = {
        "reduce_labels": False,
        "scale_range": None,
        "cat_max_ratio": 0.75,
        "jitter": True,
        "eval_mode": "whole",
    }
    default_image_size = 512
    best_metric = "val_mean_iou"
    metric_title = "mIoU"
    train_metric = "train_pixel_accuracy"
    served_outputs = ("segmentation",)
    labels_in_data_order = True

    def load_data(self, settings: Mapping[str, Any], progress: bool) -> Any:
        from ..data.segmentation import load_segmentation_data

        return load_segmentation_data(
            settings["data"], settings["val_fraction"], settings["reduce_labels"], progress=progress
        )

    def samples(self, data: Any, config: Any) -> tuple[list[Any], list[Any], list[int]]:
        # mask value i is class i: the model's labels are the data's, in order
        return list(data.train), list(data.val), list(range(len(data.classes)))

    def processor_options(self, processor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
        return (
            {"do_reduce_labels": bool(settings["reduce_labels"])}
            if "do_reduce_labels" in type(processor)._defaults
            else {}
        )

    def train_dataset(self, samples: list[Any], processor: Any, settings: Mapping[str, Any]) -> Any:
        from ..data.segmentation import PairDataset
        from ..data.transforms import SegmentationTrainTransform

        transform = SegmentationTrainTransform(
            processor,
            settings["image_size"],
            settings["scale_range"],
            settings["cat_max_ratio"],
            settings["hflip"],
            settings["jitter"],
            settings["seed"],
        )
        return PairDataset(samples, transform, settings["reduce_labels"])

    def loss_units(self, micro_batches: list[Any]) -> Any:
        """The labelled pixels: the loss is a mean over the global batch's labelled pixels."""
        from ..data.folders import IGNORE_INDEX

        return sum((b[1] != IGNORE_INDEX).sum() for b in micro_batches).double()

    def train_loss(self, output: Any, labels: Any, weights: Any, settings: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """Per labelled pixel: the model's own loss (logits upsampled to the labels, cross-entropy ignoring 255),
        summed."""
        from ..data.folders import IGNORE_INDEX
        from ..losses import segmentation_loss

        logits = output.logits.float()
        # every mask was checked when the data was loaded (values are classes or 255): no per-step check, no sync
        loss, up = segmentation_loss(
            logits, labels, logits.shape[1], IGNORE_INDEX, reduction="sum", upsampled=True, check=False
        )
        valid = labels != IGNORE_INDEX
        correct = ((up.detach().argmax(1) == labels) & valid).sum()
        return loss, correct, valid.sum()

    def evaluator(
        self, model: Any, samples: list[Any], ids: list[int], processor: Any, settings: Mapping[str, Any], **common: Any
    ) -> Any:
        from ..evaluation import SegmentationEvaluator

        common["batch_size"] = max(common["batch_size"], 8)
        return SegmentationEvaluator(
            model, samples, processor, mode=settings["eval_mode"], reduce_labels=settings["reduce_labels"], **common
        )

    def validation_record(self, result: Any) -> tuple[dict[str, Any], float]:
        import math

        record = {
            "val_loss": result.loss,
            "val_mean_iou": result.mean_iou,
            "val_mean_accuracy": result.mean_accuracy,
            "val_overall_accuracy": result.overall_accuracy,
            "val_images": result.num_images,
        }
        return record, -math.inf if math.isnan(result.mean_iou) else result.mean_iou

    def short_metrics(self, record: Mapping[str, Any], validated: bool) -> tuple[str, str]:
        return (
            f"pixel acc {record['train_pixel_accuracy']:.2%}",
            f"val mIoU {record['val_mean_iou']:.2%}" if validated else "",
        )

    eval_batch_size = 8
    eval_options = ("reduce_labels", "mode")

    def evaluate(self, model: Any, data: Any, **options: Any) -> Any:
        from ..evaluation import evaluate_segmentation

        return evaluate_segmentation(model, data, **options)

    def report_table(self, report: dict[str, Any]) -> str:
        """`pvtkit eval`'s table of a report (the evaluation result's `to_dict()` with `model` and `data`)."""
        import io

        stream = io.StringIO()

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.2%}"

        classes = report["per_class"]
        stream.write(f"model             {report['model']}\n")
        stream.write(
            f"data              {report['data']} ({report['num_images']} images, {len(classes)} classes, "
            f"{report['mode']} mode)\n"
        )
        stream.write(f"mIoU              {pct(report['mean_iou'])}\n")
        stream.write(f"pixel accuracy    {pct(report['overall_accuracy'])}\n")
        stream.write(f"mean class acc    {pct(report['mean_accuracy'])}\n")
        stream.write(
            f"loss              {report['loss']:.4f}\n" if report["loss"] is not None else "loss              -\n"
        )
        if report["skipped"]:
            stream.write(f"skipped           {len(report['skipped'])} unreadable pair(s):\n")
            for path, reason in report["skipped"].items():
                stream.write(f"  {path}: {reason}\n")
        width = max(5, *(len(name) for name in classes))
        stream.write(f"\n{'class':<{width}}       IoU  accuracy      pixels   predicted\n")
        for name, row in classes.items():
            stream.write(
                f"{name:<{width}}  {pct(row['iou']):>8}  {pct(row['accuracy']):>8}  {row['pixels']:>10}  "
                f"{row['predicted_pixels']:>10}\n"
            )
        stream.write(
            "\n(-: the class is in neither the masks nor the predictions (IoU) / not in the masks (accuracy); "
            "left out of the means)\n"
        )
        return stream.getvalue()

    served_default_outputs = ("segmentation",)
    answer_off_loop = answers_at_input_size = draws_overlay = True

    def served_answer(self, pipe: Any, output: Any, size: tuple[int, int]) -> Any:
        """The `(H, W)` class map at the image's own size."""
        import torch

        from ..processing import semantic_segmentation

        return semantic_segmentation(torch.from_numpy(output)[None], [size])[0].numpy()

    def served_record(self, pipe: Any, answer: Any, top_k: int) -> Any:
        from ..pipelines.segmentation import class_areas

        return {"size": list(answer.shape), "classes": class_areas(answer, pipe.labels)}

    def upload_record(self, name: str, record: Any, answer: Any = None) -> dict[str, Any]:
        return {"path": name, **record}

    def served_view(self, pipe: Any, image: Any, answer: Any) -> Any:
        """The class map's colours blended over the image."""
        from ..visualize import label_overlay, palette

        return label_overlay(image, answer, palette(max(len(pipe.labels), 1)), 0.5)

    def served_v2_outputs(
        self, pipe: Any, answers: list[Any], asked: Mapping[str, Any], top_k: int, check_top_k: Any
    ) -> list[tuple[str, str, Any]]:
        """`segmentation`: INT64 `[N, H, W]` class maps."""
        import numpy as np

        return [("segmentation", "INT64", np.stack(answers).astype(np.int64))]

    def served_output_types(self, num_labels: int) -> list[dict[str, Any]]:
        return [{"name": "segmentation", "datatype": "INT64", "shape": [-1, -1, -1]}]


TASK = SegmentationTask()
