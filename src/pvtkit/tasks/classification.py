"""Image classification: class folders in, top-k labels out; trained with the usual ViT/PVT fine-tuning recipe
(AdamW, warmup + cosine, label smoothing, random-resized-crop + flip), measured in top-1/top-5 accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .task import Task


class ClassificationTask(Task):
    name = "image-classification"
    heads = ("image-classification",)
    pipeline_task = "image-classification"
    aliases = ("classification", "classify")
    auto_class_name = "AutoModelForImageClassification"
    pipeline_class_name = "ImageClassificationPipeline"
    default_model = "OpenGVLab/pvt_v2_b0"
    export_heads = {"classification": "image-classification"}
    head_title = "classification"
    title = "image classification"
    trainable = True
    labelled = True
    recipe = {"lr_from_scratch": 1e-3, "lr_fine_tune": 1e-4}
    settings = {"label_smoothing": 0.1, "crop_scale": 0.08}
    default_image_size = 224
    best_metric = "val_accuracy"
    metric_title = "accuracy"
    train_metric = "train_accuracy"
    served_outputs = ("logits", "probabilities", "labels", "scores")

    def load_data(self, settings: Mapping[str, Any], progress: bool) -> Any:
        from ..data.classification import load_training_folders

        return load_training_folders(settings["data"], settings["val_fraction"])

    def samples(self, data: Any, config: Any) -> tuple[list[Any], list[Any], list[int]]:
        from ..data.classification import model_label_ids

        ids = model_label_ids(data.classes, config)
        return [(p, ids[label]) for p, label in data.train], [(p, ids[label]) for p, label in data.val], ids

    def prepare_model(self, model: Any, classes: list[str]) -> None:
        model.config.problem_type = "single_label_classification"
        super().prepare_model(model, classes)

    def train_dataset(self, samples: list[Any], processor: Any, settings: Mapping[str, Any]) -> Any:
        from ..data.classification import ImageDataset
        from ..data.transforms import TrainTransform

        size = settings["image_size"]
        transform = TrainTransform(processor, size, settings["crop_scale"], settings["hflip"], settings["seed"])
        return ImageDataset(samples, transform, (3, size, size))

    def train_loss(self, output: Any, labels: Any, weights: Any, settings: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """Per image: label-smoothed cross-entropy, unreadable images weighted 0."""
        import torch.nn.functional as F

        logits = output.logits.float()
        per_image = F.cross_entropy(logits, labels, reduction="none", label_smoothing=settings["label_smoothing"])
        correct = ((logits.argmax(-1) == labels).float() * weights).sum()
        return (per_image * weights).sum(), correct.detach(), weights.sum()

    def evaluator(
        self, model: Any, samples: list[Any], ids: list[int], processor: Any, settings: Mapping[str, Any], **common: Any
    ) -> Any:
        from ..evaluation import Evaluator

        common["batch_size"] = max(common["batch_size"], 32)
        return Evaluator(model, samples, sorted(set(ids)), processor, **common)

    def validation_record(self, result: Any) -> tuple[dict[str, Any], float]:
        record = {
            "val_loss": result.loss,
            "val_accuracy": result.accuracy,
            "val_top5_accuracy": result.top5_accuracy,
            "val_images": result.num_images,
        }
        return record, result.accuracy

    def short_metrics(self, record: Mapping[str, Any], validated: bool) -> tuple[str, str]:
        return f"acc {record['train_accuracy']:.2%}", f"val acc {record['val_accuracy']:.2%}" if validated else ""

    def evaluate(self, model: Any, data: Any, **options: Any) -> Any:
        from ..evaluation import evaluate

        return evaluate(model, data, **options)

    def report_table(self, report: dict[str, Any]) -> str:
        """`pvtkit eval`'s table of a report (the evaluation result's `to_dict()` with `model` and `data`)."""
        import io

        stream = io.StringIO()
        classes = report["per_class"]
        stream.write(f"model     {report['model']}\n")
        stream.write(f"data      {report['data']} ({report['num_images']} images, {len(classes)} classes)\n")
        stream.write(f"accuracy  {report['accuracy']:.2%}\n")
        stream.write(f"top-5     {report['top5_accuracy']:.2%}\n")
        stream.write(f"loss      {report['loss']:.4f}\n")
        if report["skipped"]:
            stream.write(f"skipped   {len(report['skipped'])} unreadable image(s):\n")
            for path, reason in report["skipped"].items():
                stream.write(f"  {path}: {reason}\n")
        width = max(5, *(len(name) for name in classes))
        stream.write(f"\n{'class':<{width}}  accuracy  correct / images\n")
        for name, row in classes.items():
            accuracy = f"{row['accuracy']:.2%}" if row["accuracy"] is not None else "-"
            stream.write(f"{name:<{width}}  {accuracy:>8}  {row['correct']:>7} / {row['num_images']}\n")
        return stream.getvalue()

    served_default_outputs = ("logits", "labels", "scores")

    def serve_options(self, top_k: int) -> dict[str, Any]:
        return {"top_k": top_k}

    def served_record(self, pipe: Any, answer: Any, top_k: int) -> Any:
        import torch

        return pipe.records(torch.from_numpy(answer)[None], top_k)[0]

    def served_v2_outputs(
        self, pipe: Any, answers: list[Any], asked: Mapping[str, Any], top_k: int, check_top_k: Any
    ) -> list[tuple[str, str, Any]]:
        """`logits`, `probabilities` (FP32 `[N, classes]`), `labels` (BYTES) and `scores` (`[N, top_k]`); an output
        with Triton's classification extension (`classification: k`) as `"score:index:label"` strings, best first."""
        import numpy as np
        import torch

        labels = pipe.labels
        logits = torch.from_numpy(np.stack(answers))
        scores = pipe.scores(logits)
        top_scores, top_ids = scores.topk(top_k, dim=-1)
        outputs = []
        for name, count in asked.items():
            if count is not None:
                values = logits if name == "logits" else scores
                v, ids = values.topk(check_top_k(count, f"output {name!r} classification"), dim=-1)
                data = np.array(
                    [
                        [f"{a:f}:{j}:{labels[j]}".encode() for a, j in zip(vs.tolist(), js.tolist())]
                        for vs, js in zip(v, ids)
                    ],
                    dtype=np.object_,
                )
                outputs.append((name, "BYTES", data))
            elif name in ("logits", "probabilities"):
                outputs.append((name, "FP32", (logits if name == "logits" else scores).numpy().astype(np.float32)))
            elif name == "labels":
                outputs.append(
                    (name, "BYTES", np.array([[labels[j].encode() for j in js] for js in top_ids.tolist()], np.object_))
                )
            else:
                outputs.append((name, "FP32", top_scores.numpy().astype(np.float32)))
        return outputs

    def served_output_types(self, num_labels: int) -> list[dict[str, Any]]:
        return [
            {"name": "logits", "datatype": "FP32", "shape": [-1, num_labels]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_labels]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ]


TASK = ClassificationTask()
