"""Monocular depth estimation: an image in, metres per pixel out (GLPN); trained with GLPN's recipe (AdamW, poly
decay, random scale + crop + flip of image and depth map together, CutDepth on request, the scale-invariant log
loss on valid pixels), measured in AbsRel, RMSE, delta < 1.25 and the other standard metrics
(`evaluation.depth_metrics`); served as an FP32 depth map (V2) or summary statistics and a 16-bit PNG (V1,
`/predict`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from .task import Task


class DepthTask(Task):
    name = "depth-estimation"
    heads = ("depth-estimation",)
    pipeline_task = "depth-estimation"
    aliases = ("depth",)
    auto_class_name = "AutoModelForDepthEstimation"
    pipeline_class_name = "DepthEstimationPipeline"
    default_model = "vinvino02/glpn-nyu"
    export_heads = {"depth": "depth-estimation"}
    head_title = "depth"
    title = "depth estimation"
    output_name = "predicted_depth"
    trainable = True
    # GLPN's paper: AdamW, lr 1e-4, weight decay 1e-4 (fine-tuning from an ImageNet encoder; the new decoder learns
    # at the same rate). Its one-cycle (3e-5 -> 1e-4 -> 3e-5, poly 0.9 each half) is neither `poly` nor `onecycle`
    # (PyTorch's OneCycleLR); poly stays the default (README "Depth fine-tuning").
    recipe = {"weight_decay": 1e-4, "schedule": "poly", "batch_size": 8, "lr_from_scratch": 1e-3, "lr_fine_tune": 1e-4}
    # `cutdepth`: the probability of GLPN's vertical CutDepth (0: off; `data.depth.cut_depth_strip`)
    settings = {"depth_scale": 1000.0, "min_depth": 1e-3, "max_depth": None, "cutdepth": 0.0}
    default_image_size = 448
    best_metric = "val_delta1"
    metric_title = "delta < 1.25"
    train_metric = "train_delta1"
    eval_batch_size = 1
    eval_options = ("depth_scale", "min_depth", "max_depth", "flip", "crop", "median_scaling", "per_image", "worst")

    def _read(self, settings: Mapping[str, Any], model_max_depth: float | None = None) -> Any:
        from ..data.depth import read_depth

        max_depth = settings["max_depth"] if settings["max_depth"] is not None else model_max_depth
        return partial(
            read_depth, depth_scale=settings["depth_scale"], min_depth=settings["min_depth"], max_depth=max_depth
        )

    def load_data(self, settings: Mapping[str, Any], progress: bool) -> Any:
        from ..data.depth import load_depth_data

        return load_depth_data(
            settings["data"],
            settings["val_fraction"],
            settings["depth_scale"],
            settings["min_depth"],
            settings["max_depth"],
        )

    def samples(self, data: Any, config: Any) -> tuple[list[Any], list[Any], list[int]]:
        return list(data.train), list(data.val), []

    def config_overrides(self, classes: list[str]) -> dict[str, Any]:
        return {}

    def prepare_model(self, model: Any, classes: list[str]) -> None:
        """Depth has no classes: nothing to fit."""

    def train_dataset(self, samples: list[Any], processor: Any, settings: Mapping[str, Any]) -> Any:
        from ..data.depth import DepthPairDataset, DepthTrainTransform

        transform = DepthTrainTransform(
            processor, settings["image_size"], settings["hflip"], settings["seed"], cutdepth=settings["cutdepth"]
        )
        return DepthPairDataset(samples, transform, self._read(settings))

    def train_loss(self, output: Any, labels: Any, weights: Any, settings: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """Per image: the model's own scale-invariant log loss over its valid pixels (images without one, or
        unreadable, weigh 0); the train metric is each image's share of valid pixels with delta < 1.25. Both are
        summed over the images that count, and what they count is images (the record's `train_loss` and
        `train_delta1` are means over images, as the validation's)."""
        import torch

        from ..losses import silog_loss

        predicted = output.predicted_depth.float()
        valid = labels > 0
        has = valid.flatten(1).any(1) & (weights > 0)
        losses = [silog_loss(p[None], t[None]) for p, t, ok in zip(predicted, labels, has.tolist()) if ok]
        loss = torch.stack(losses).sum() if losses else predicted.sum() * 0.0
        with torch.no_grad():
            ratio = torch.maximum(predicted / labels.clamp(min=1e-6), labels / predicted.clamp(min=1e-6))
            shares = ((ratio < 1.25) & valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
            hits = (shares * has).sum()
        return loss, hits, has.sum()

    def loss_units(self, micro_batches: list[Any]) -> Any:
        """Per image with a valid depth: the loss is a mean of per-image losses over the global batch."""
        return sum(((b[1] > 0).flatten(1).any(1) & (b[2] > 0)).sum() for b in micro_batches).double()

    def evaluator(
        self, model: Any, samples: list[Any], ids: list[int], processor: Any, settings: Mapping[str, Any], **common: Any
    ) -> Any:
        from ..evaluation import DepthEvaluator

        common.pop("batch_size")
        max_depth = settings["max_depth"] if settings["max_depth"] is not None else model.config.max_depth
        return DepthEvaluator(
            model,
            samples,
            processor,
            self._read(settings, max_depth),
            min_depth=settings["min_depth"],
            max_depth=max_depth,
            **common,
        )

    def validation_record(self, result: Any) -> tuple[dict[str, Any], float]:
        import math

        record = {
            "val_loss": result.loss,
            **{f"val_{k}": v for k, v in result.metrics.items()},
            "val_images": result.num_images,
        }
        return record, -math.inf if math.isnan(result.delta1) else result.delta1

    def short_metrics(self, record: Mapping[str, Any], validated: bool) -> tuple[str, str]:
        val = f"val AbsRel {record['val_abs_rel']:.4f}, delta1 {record['val_delta1']:.2%}" if validated else ""
        return f"delta1 {record['train_delta1']:.2%}", val

    def evaluate(self, model: Any, data: Any, **options: Any) -> Any:
        from ..evaluation import evaluate_depth

        options = {k: v for k, v in options.items() if v is not None or k not in self.settings}
        return evaluate_depth(model, data, **options)

    def report_table(self, report: dict[str, Any]) -> str:
        from ..evaluation import DEPTH_METRICS

        lines = [f"model     {report['model']}", f"data      {report['data']} ({report['num_images']} images)"]
        measured = [f"crop {report['crop']}"] if report.get("crop") else []
        measured += [name.replace("_", " ") for name in ("flip", "median_scaling") if report.get(name)]
        if measured:
            lines.append(f"measured  {', '.join(measured)}")
        lines += [f"{name:<9} {report[name]:.4f}" for name in DEPTH_METRICS]
        lines.append(f"loss      {report['loss']:.4f}")
        if report["skipped"]:
            lines.append(f"skipped   {len(report['skipped'])} pair(s):")
            lines += [f"  {path}: {reason}" for path, reason in report["skipped"].items()]
        return "\n".join(lines) + "\n"

    # -- what the server answers --

    served_outputs = ("predicted_depth",)
    served_default_outputs = ("predicted_depth",)
    answer_off_loop = answers_at_input_size = draws_overlay = True
    png_scale = 1000.0  # `/predict`'s 16-bit PNG: millimetres, as NYU's maps

    def served_answer(self, pipe: Any, output: Any, size: tuple[int, int]) -> Any:
        """The `(H, W)` float32 depth at the image's own size (bicubic, as `post_process_depth_estimation`)."""
        import torch

        from ..processing import depth_maps

        return depth_maps(torch.from_numpy(output)[None], [size])[0]["predicted_depth"].numpy()

    def served_record(self, pipe: Any, answer: Any, top_k: int) -> Any:
        """The size and the depth's minimum, maximum, mean and median (in the model's unit: metres)."""
        import numpy as np

        stats = {"min": answer.min(), "max": answer.max(), "mean": answer.mean(), "median": np.median(answer)}
        return {"size": list(answer.shape), **{k: round(float(v), 6) for k, v in stats.items()}}

    def upload_record(self, name: str, record: Any, answer: Any = None) -> dict[str, Any]:
        """`/predict`'s record: the statistics plus the depth as a base64 16-bit PNG of millimetres (`depth_scale`
        1000; depths past 65.535 m clip, counted in `clipped_pixels`)."""
        import base64

        out = {"path": name, **record}
        if answer is not None:
            data, clipped = depth_png(answer, self.png_scale)
            out.update(depth_png=base64.b64encode(data).decode(), depth_scale=self.png_scale)
            if clipped:
                out["clipped_pixels"] = clipped
        return out

    def served_view(self, pipe: Any, image: Any, answer: Any) -> Any:
        """The coloured depth (dark near, bright far) at the image's size."""
        import PIL.Image

        from ..visualize import colormap, normalize

        return PIL.Image.fromarray(colormap(normalize(answer)))

    def served_v2_outputs(
        self, pipe: Any, answers: list[Any], asked: Mapping[str, Any], top_k: int, check_top_k: Any
    ) -> list[tuple[str, str, Any]]:
        """`predicted_depth`: FP32 `[N, H, W]` depth maps at the images' size."""
        import numpy as np

        return [("predicted_depth", "FP32", np.stack(answers).astype(np.float32))]

    def served_output_types(self, num_labels: int) -> list[dict[str, Any]]:
        return [{"name": "predicted_depth", "datatype": "FP32", "shape": [-1, -1, -1]}]


def predict_depth(model: Any, pixel_values: Any, flip: bool = False) -> Any:
    """The model's float32 depth `(B, h, w)` of a batch; with `flip`, averaged with the depth of the horizontally
    flipped images flipped back (GLPN's test-time augmentation). The one place the pipeline, `pvtkit depth` and the
    evaluator run a depth model."""
    depth = model(pixel_values=pixel_values).predicted_depth.float()
    if flip:
        flipped = model(pixel_values=pixel_values.flip(-1)).predicted_depth.float()
        depth = (depth + flipped.flip(-1)) / 2
    return depth


def depth_png(depth: Any, scale: float) -> tuple[bytes, int]:
    """`round(depth * scale)` as the bytes of a 16-bit grayscale PNG (0 = no value), the scale in its `depth_scale`
    text chunk, and how many pixels were clipped at 65535."""
    import io

    import numpy as np
    import PIL.Image
    import PIL.PngImagePlugin

    values = np.round(np.asarray(depth, dtype=np.float64) * scale)
    clipped = int((values > 65535).sum())
    image = PIL.Image.fromarray(values.clip(0, 65535).astype(np.uint16))
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("depth_scale", repr(scale))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue(), clipped


TASK = DepthTask()
