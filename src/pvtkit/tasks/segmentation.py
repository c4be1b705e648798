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
        "loss": "ce",
        "class_weights": None,
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
            settings["data"],
            settings["val_fraction"],
            settings["reduce_labels"],
            progress=progress,
            label_checks=settings.get("check_data", True),  # the label doctor's errors refuse the data
        )

    def samples(self, data: Any, config: Any) -> tuple[list[Any], list[Any], list[int]]:
        # mask value i is class i: the model's labels are the data's, in order
        return list(data.train), list(data.val), list(range(len(data.classes)))

    def prepare_model(self, model: Any, classes: list[str]) -> None:
        """Give the model the data's classes; a one-label model (binary: BCE, a pixel is the label where its logit
        is > 0) on data of two classes (0 background, 1 the object) keeps its one logit, named for class 1."""
        if model.config.num_labels == 1 and len(classes) == 2:
            model.config.id2label = {0: str(classes[1])}
            model.config.label2id = {str(classes[1]): 0}
            return
        super().prepare_model(model, classes)

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

    def data_settings(self, settings: Mapping[str, Any], data: Any) -> dict[str, Any]:
        """`class_weight_values`: `--class-weights` as numbers, one per class (`auto`: ENet's 1 / ln(1.02 + p) of
        the training masks' pixel shares, `losses.class_weights_from_counts`), or None; logged."""
        import logging

        from ..losses import class_weights_from_counts, parse_class_weights
        from ..training.arguments import TrainingConfigError

        spec, values = settings.get("class_weights"), None
        if spec is not None:
            try:
                values = parse_class_weights(spec, len(data.classes))
                if values is None:
                    values = class_weights_from_counts(data.class_pixels)
            except ValueError as e:
                raise TrainingConfigError(f"--class-weights: {e} ({', '.join(map(str, data.classes))})") from None
            logging.getLogger("pvtkit").info(
                "class weights (%s): %s",
                "auto: 1 / ln(1.02 + pixel share), mean 1 per labelled pixel" if spec == "auto" else "given",
                ", ".join(f"{name} {w:.3g}" for name, w in zip(data.classes, values)),
            )
        return {**settings, "class_weight_values": values}

    def train_loss(self, output: Any, labels: Any, weights: Any, settings: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """Summed over the labelled pixels (the trainer divides by the global batch's): the model's own loss
        (logits upsampled to the labels, cross-entropy ignoring 255; BCE for one label), or the `--loss` terms with
        the `--class-weights` (`losses.combined_loss`, whose docstring says how Dice, Lovasz and OHEM are summed)."""
        import torch.nn.functional as F

        from ..data.folders import IGNORE_INDEX
        from ..losses import combined_loss, parse_loss_spec, segmentation_loss
        from ..processing import class_map

        logits = output.logits.float()
        terms = parse_loss_spec(settings.get("loss") or "ce")
        class_weights = settings.get("class_weight_values")
        if terms == [("ce", 1.0)] and class_weights is None:
            # every mask was checked when the data was loaded (values are classes or 255): no per-step check, no sync
            loss, up = segmentation_loss(
                logits, labels, logits.shape[1], IGNORE_INDEX, reduction="sum", upsampled=True, check=False
            )
        else:
            up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = combined_loss(up, labels, terms, IGNORE_INDEX, class_weights)
        valid = labels != IGNORE_INDEX
        correct = ((class_map(up.detach(), dim=1) == labels) & valid).sum()
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
            "val_mean_dice": result.mean_dice,
            "val_mean_precision": result.mean_precision,
            "val_mean_recall": result.mean_recall,
            "val_mean_fscore": result.mean_fscore,
            "val_mean_boundary_iou": result.mean_boundary_iou,
            "val_images": result.num_images,
        }
        return record, -math.inf if math.isnan(result.mean_iou) else result.mean_iou

    def short_metrics(self, record: Mapping[str, Any], validated: bool) -> tuple[str, str]:
        return (
            f"pixel acc {record['train_pixel_accuracy']:.2%}",
            f"val mIoU {record['val_mean_iou']:.2%}" if validated else "",
        )

    eval_batch_size = 8
    eval_options = ("reduce_labels", "mode", "scales", "flip", "aligned_resize")

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
        if report.get("tta"):
            from ..tta import describe

            stream.write(f"test-time aug     {describe(report['tta'])}\n")
        stream.write(f"mIoU              {pct(report['mean_iou'])}\n")
        stream.write(f"pixel accuracy    {pct(report['overall_accuracy'])}\n")
        stream.write(f"mean class acc    {pct(report['mean_accuracy'])}\n")
        stream.write(f"mDice (= mF1)     {pct(report['mean_dice'])}\n")
        stream.write(f"mean precision    {pct(report['mean_precision'])}   mean recall {pct(report['mean_recall'])}\n")
        stream.write(
            f"boundary mIoU     {pct(report['mean_boundary_iou'])}   (band: {report['boundary_ratio']:.0%} of each "
            "image's diagonal)\n"
        )
        stream.write(
            f"loss              {report['loss']:.4f}\n" if report["loss"] is not None else "loss              -\n"
        )
        if report["skipped"]:
            stream.write(f"skipped           {len(report['skipped'])} unreadable pair(s):\n")
            for path, reason in report["skipped"].items():
                stream.write(f"  {path}: {reason}\n")
        width = max(5, *(len(name) for name in classes))
        stream.write(
            f"\n{'class':<{width}}       IoU      Dice  precision  accuracy  boundary IoU      pixels   predicted\n"
        )
        for name, row in classes.items():
            stream.write(
                f"{name:<{width}}  {pct(row['iou']):>8}  {pct(row['dice']):>8}  {pct(row['precision']):>9}  "
                f"{pct(row['accuracy']):>8}  {pct(row['boundary_iou']):>12}  {row['pixels']:>10}  "
                f"{row['predicted_pixels']:>10}\n"
            )
        stream.write(
            "\n(accuracy is the class's recall; F1 equals Dice. -: the class is in neither the masks nor the "
            "predictions (accuracy: not in the masks); left out of the means)\n"
        )
        return stream.getvalue()

    comparable = True
    # `pvtkit eval --compare`: the means set side by side, in this order, and their names in the table
    compare_means = {
        "mean_iou": "mIoU",
        "mean_dice": "mDice",
        "mean_boundary_iou": "boundary mIoU",
        "mean_accuracy": "mean class acc",
        "overall_accuracy": "pixel accuracy",
    }

    def compare_report(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """`pvtkit eval --compare`'s report of two models' reports (`report_table`'s input) on the same data: each
        mean and each class's IoU for A and B and the difference B - A (None where either is None), and both full
        reports. Classes are A's, then any only B has."""

        def side_by_side(x: float | None, y: float | None) -> dict[str, float | None]:
            return {"a": x, "b": y, "delta": None if x is None or y is None else y - x}

        names = list(dict.fromkeys([*a["per_class"], *b["per_class"]]))
        per_class = {}
        for name in names:
            row_a, row_b = a["per_class"].get(name, {}), b["per_class"].get(name, {})
            per_class[name] = {
                **side_by_side(row_a.get("iou"), row_b.get("iou")),
                "pixels": row_a.get("pixels", row_b.get("pixels")),
            }
        return {
            "task": self.name,
            "data": a["data"],
            "models": [a["model"], b["model"]],
            "num_images": [a["num_images"], b["num_images"]],
            "means": {key: side_by_side(a[key], b[key]) for key in self.compare_means},
            "per_class": per_class,
            "reports": [a, b],
        }

    def compare_table(self, comparison: dict[str, Any]) -> str:
        """`pvtkit eval --compare`'s table of `compare_report`'s report: the means, then per class IoU of A, of B,
        and B - A in percentage points."""
        import io

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.2%}"

        def points(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:+.2f}"

        stream = io.StringIO()
        model_a, model_b = comparison["models"]
        stream.write(f"model A   {model_a}\nmodel B   {model_b}\n")
        stream.write(f"data      {comparison['data']} ({comparison['num_images'][0]} images)\n")
        classes = comparison["per_class"]
        width = max(15, *(len(name) for name in classes))
        stream.write(f"\n{'':<{width}}  {'A':>8}  {'B':>8}  {'B - A':>7}\n")
        for key, title in self.compare_means.items():
            row = comparison["means"][key]
            stream.write(f"{title:<{width}}  {pct(row['a']):>8}  {pct(row['b']):>8}  {points(row['delta']):>7}\n")
        stream.write(f"\n{'class':<{width}}  {'IoU A':>8}  {'IoU B':>8}  {'B - A':>7}      pixels\n")
        for name, row in classes.items():
            pixels = "-" if row["pixels"] is None else row["pixels"]
            stream.write(
                f"{name:<{width}}  {pct(row['a']):>8}  {pct(row['b']):>8}  {points(row['delta']):>7}  {pixels:>10}\n"
            )
        stream.write(
            "\n(B - A in percentage points; -: the class is in neither the masks nor that model's predictions, "
            "left out of its means)\n"
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
        """The served record, each class with its `color` in the overlay (`served_view`'s palette) as `#rrggbb`,
        so that the page can show which colour is which class."""
        from ..visualize import palette

        classes = record["classes"]
        # class k's colour is the same in every palette of more than k colours: the highest id present suffices
        colours = palette(max((c["id"] for c in classes), default=0) + 1)
        coloured = [{**c, "color": "#" + bytes(colours[c["id"]].tolist()).hex()} for c in classes]
        return {"path": name, **record, "classes": coloured}

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
