"""Evaluating an image classifier on class folders (accuracy, top-5, per-class accuracy, a confusion matrix) and a
semantic segmentation model on image/mask folders (mIoU, per-class IoU, pixel and mean class accuracy, Dice,
precision, recall and Boundary IoU).

The data is torchvision's `ImageFolder` layout, one folder of images per class. Folders are matched to the model's
classes by name (`config.id2label`), so a model fine-tuned by `pvtkit train` evaluates on any folder of the same
classes, in any order, and a folder of a few of its classes works too. Images go through the model's own image
processor. Under `torchrun` the images are sharded across processes and the counts summed.

Unreadable images are skipped and reported, never fatal: a file PIL cannot even open is found before the run
starts; one whose pixel data turns out to be truncated is found when it is decoded and counted out then.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ._files import atomic_write
from .auto import default_image_processor, image_processor_for
from .data.classification import ImageDataset, load_eval_folders, model_label_ids
from .data.folders import IGNORE_INDEX, DatasetError
from .data.segmentation import EvalPairDataset, SegSample, as_lists, load_eval_segmentation
from .data.transforms import ProcessorTransform, SlideTransform, processor_image_size
from .distributed import DistContext, init_distributed
from .losses import segmentation_loss
from .processing import class_map, segmentation_labels

logger = logging.getLogger("pvtkit")

# ---- the evaluation loop ---------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What `evaluate` measured.

    Attributes:
        accuracy: Top-1 accuracy over `num_images`.
        top5_accuracy: Top-5 accuracy (top-k with k = number of classes when the model has fewer than 5).
        loss: Mean cross-entropy (no label smoothing).
        num_images: Images evaluated (unreadable ones are not counted).
        per_class: Class name -> `{"accuracy", "correct", "num_images"}`, in folder order.
        class_names: The evaluated classes (rows of `confusion`).
        confusion: Counts, rows = true class, columns = predicted class in `confusion_labels` order.
        confusion_labels: Column names: `class_names`, plus `"(other)"` for the model's remaining classes.
        skipped: Unreadable files -> reason.
        seconds: Wall time of the loop.
        held_out: What was evaluated: "folder" (a validation split), "fraction" (a hold-out), None (all images).
    """

    accuracy: float
    top5_accuracy: float
    loss: float
    num_images: int
    per_class: dict[str, dict[str, Any]]
    class_names: list[str]
    confusion: list[list[int]]
    confusion_labels: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    held_out: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "top5_accuracy": self.top5_accuracy,
            "loss": self.loss,
            "num_images": self.num_images,
            "num_skipped": len(self.skipped),
            "per_class": self.per_class,
            "confusion_matrix": {
                "true": self.class_names,
                "predicted": self.confusion_labels,
                "counts": self.confusion,
            },
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
        }


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` for bf16/fp16 compute, or nothing for fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress_bar(total: int, desc: str, show: bool) -> Any:
    """An evaluation's progress bar on stderr (images), shown on the main process only."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr, disable=not show, dynamic_ncols=True)


class Evaluator:
    """Evaluates a model on fixed samples, again and again (the training loop validates every epoch).

    Args:
        model: An image classifier (pvtkit's, or anything returning `.logits`).
        samples: `(path, model class index)` pairs, all of them: this process takes its share under torchrun.
        rows: The model class indices that are evaluated (rows of the confusion matrix), in display order.
        processor: The model's image processor.
        batch_size, num_workers: Per process.
        device: Where the model runs.
        amp_dtype: bf16/fp16 autocast, or None.
        ctx: The distributed context (counts are summed across processes).
        progress: Show a progress bar (on the main process).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        samples: Sequence[tuple[str, int]],
        rows: Sequence[int],
        processor: Any,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.rows, self.device = model, list(rows), torch.device(device)
        self.amp_dtype, self.ctx, self.progress = amp_dtype, ctx or DistContext(), progress
        self.num_labels = int(model.config.num_labels)
        self.samples = list(samples)
        mine = self.samples[self.ctx.rank :: self.ctx.world_size]
        self.dataset = ImageDataset(mine, ProcessorTransform(processor), (3, *processor_image_size(processor)))
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # not the global RNG, which training's dropout draws from
        )

    @torch.no_grad()
    def run(self, desc: str = "eval") -> EvalResult:
        model, device, n = self.model, self.device, self.num_labels
        was_training = model.training
        model.eval()
        k = min(5, n)
        confusion = torch.zeros(n, n, dtype=torch.int64, device=device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-k hits, images
        skipped: dict[str, str] = {}
        start = time.perf_counter()
        bar = progress_bar(len(self.samples), desc, self.progress and self.ctx.is_main)
        for pixels, labels, weights, indices, reasons in self.loader:
            pixels = pixels.to(device, non_blocking=True)
            labels, ok = labels.to(device), weights.to(device) > 0
            with autocast_context(device, self.amp_dtype):
                logits = model(pixel_values=pixels).logits
            logits = logits.float()
            labels_ok, logits_ok = labels[ok], logits[ok]
            confusion.index_put_((labels_ok, logits_ok.argmax(-1)), torch.ones_like(labels_ok), accumulate=True)
            hits = (logits_ok.topk(k, dim=-1).indices == labels_ok[:, None]).any(-1).sum()
            loss = F.cross_entropy(logits_ok, labels_ok, reduction="sum") if len(labels_ok) else logits.new_zeros(())
            sums += torch.stack((loss.double(), hits.double(), ok.sum().double()))
            for i, reason in zip(indices.tolist(), reasons):
                if reason:
                    skipped[self.dataset.samples[i][0]] = reason
            bar.update(len(labels) * self.ctx.world_size)
        bar.close()
        self.ctx.all_reduce_sum(confusion)
        self.ctx.all_reduce_sum(sums)
        for part in self.ctx.gather_objects(skipped):
            skipped.update(part)
        model.train(was_training)
        return self._result(confusion.cpu(), sums.cpu().tolist(), skipped, time.perf_counter() - start)

    def _result(
        self, confusion: torch.Tensor, sums: list[float], skipped: dict[str, str], seconds: float
    ) -> EvalResult:
        id2label = self.model.config.id2label
        names = [str(id2label[r]) for r in self.rows]
        loss_sum, hits, count = sums
        count = int(count)
        per_class = {}
        for name, r in zip(names, self.rows):
            total = int(confusion[r].sum())
            correct = int(confusion[r, r])
            per_class[name] = {"accuracy": correct / total if total else None, "correct": correct, "num_images": total}
        rows = confusion[self.rows]
        columns = rows[:, self.rows]
        others = sorted(set(range(self.num_labels)) - set(self.rows))
        labels = list(names)
        if others:
            columns = torch.cat((columns, rows[:, others].sum(1, keepdim=True)), 1)
            labels.append("(other)")
        return EvalResult(
            accuracy=int(confusion.diagonal().sum()) / count if count else 0.0,
            top5_accuracy=hits / count if count else 0.0,
            loss=loss_sum / count if count else math.nan,
            num_images=count,
            per_class=per_class,
            class_names=names,
            confusion=columns.tolist(),
            confusion_labels=labels,
            skipped=skipped,
            seconds=seconds,
        )


def _prepare(
    model: Any,
    auto_class: Any,
    processor: Any,
    device: str | torch.device,
    revision: str | None,
    local_files_only: bool,
) -> tuple[Any, Any, str, torch.device, DistContext]:
    """What both evaluations start with: (the model loaded with `auto_class` if a path or Hub id was given, on the
    device; its processor, by default its own; its name for messages; the device; the process group)."""
    from .devices import resolve_device

    device = resolve_device(device)
    ctx = init_distributed(device)
    name = (
        str(model)
        if isinstance(model, (str, Path))
        else (getattr(model.config, "_name_or_path", "") or type(model).__name__)
    )
    if isinstance(model, (str, Path)):
        model = auto_class.from_pretrained(model, revision=revision, local_files_only=local_files_only)
        if processor is None:
            processor = image_processor_for(name, model, revision=revision, local_files_only=local_files_only)
    if processor is None:
        processor = default_image_processor(model)
    return model.to(device), processor, name, device, ctx


def evaluate(
    model: Any,
    data: str | Path,
    *,
    processor: Any = None,
    val_fraction: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    confusion: str | Path | None = None,
    progress: bool = True,
    revision: str | None = None,
    local_files_only: bool = False,
) -> EvalResult:
    """Evaluate an image classifier on a folder of class folders.

    Args:
        model: A pvtkit image classifier, or where to load one (Hub id, directory, weights file).
        data: A folder of class folders, or a dataset with `val/` (or `validation/`), which is then evaluated.
        processor: The image processor; by default the model's own (its `preprocessor_config.json`), else the
            family's defaults at the model's `image_size`.
        val_fraction: Evaluate only the stratified hold-out `pvtkit train --val-fraction` validated on.
        batch_size, num_workers: Per process.
        device: `auto` (the local GPU, else the CPU), `cpu`, `cuda`, ...
        dtype: Compute in bf16/fp16 (autocast); default fp32.
        confusion: Also draw the confusion matrix into this PNG file.
        progress: Show a progress bar.
        revision, local_files_only: How to reach the Hub.

    Returns:
        An `EvalResult` (the same on every process under torchrun; only the main one writes `confusion`).
    """
    from .auto import AutoModelForImageClassification
    from .dtypes import parse_dtype

    model, processor, name, device, ctx = _prepare(
        model, AutoModelForImageClassification, processor, device, revision, local_files_only
    )
    directory, by_class, unreadable = load_eval_folders(data, val_fraction)
    classes = list(by_class)
    ids = model_label_ids(classes, model.config, str(directory))
    samples = [(str(p), i) for i, files in zip(ids, by_class.values()) for p in files]
    amp = parse_dtype(dtype)
    evaluator = Evaluator(
        model,
        samples,
        ids,
        processor,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        amp_dtype=amp,
        ctx=ctx,
        progress=progress,
    )
    result = evaluator.run()
    result.skipped = {**dict(unreadable), **result.skipped}
    in_val_split = Path(directory).name in ("val", "validation") and Path(directory).parent == Path(data)
    result.held_out = "folder" if in_val_split else "fraction" if val_fraction else None
    if confusion is not None and ctx.is_main:
        title = f"{name}: accuracy {result.accuracy:.1%} on {result.num_images} images"
        draw_confusion_matrix(result.confusion, result.class_names, result.confusion_labels, confusion, title)
    logger.info("evaluated %s on %s: accuracy %.4f", name, directory, result.accuracy)
    return result


def training_run_args(model: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The `training_args.json` that `pvtkit train` wrote beside the model (its output directory is the model) or
    in the folder above (a model saved inside its run's folder), and what it holds; None for a model that is not
    a local training run's (a Hub id, a downloaded model) or whose file cannot be read."""
    import json

    from .training.trainer import ARGS_NAME

    path = Path(model)
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / ARGS_NAME, folder.parent / ARGS_NAME):
        if candidate.is_file():
            try:
                found = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return (candidate, found) if isinstance(found, dict) else None
    return None


def seen_in_training_warning(
    model: str | Path, data: str | Path, val_fraction: float | None, held_out: str | None
) -> str | None:
    """One paragraph when an evaluation's images are (mostly) ones the model was trained on, else None.

    That is when `data` is the folder the model's training run used (its `training_args.json`, found by
    `training_run_args`) and the evaluation was not on a split training held out: not the data's validation folder
    (`held_out` "folder"), nor the run's own `--val-fraction` hold-out (`held_out` "fraction" with the run's
    fraction).

    Args:
        model: Where the model was loaded from.
        data: The evaluated folder.
        val_fraction: The evaluation's `--val-fraction`.
        held_out: What was evaluated: "folder" (a val/ or validation/ split), "fraction" (a hold-out), None (all).
    """
    found = training_run_args(model)
    if found is None or held_out == "folder":
        return None
    path, run = found
    trained = run.get("data")
    if not trained:
        return None
    with contextlib.suppress(OSError):
        if Path(trained).resolve() != Path(data).resolve():
            return None
    run_fraction = float(run.get("val_fraction") or 0.0)
    if held_out == "fraction" and val_fraction is not None and math.isclose(val_fraction, run_fraction):
        return None
    honest = (
        f"evaluate its hold-out with --val-fraction {run_fraction:g} (the images that run validated on), or "
        "evaluate on a folder of images it never saw"
        if run_fraction > 0
        else "that run held nothing out (val_fraction 0), so evaluate on a folder of images it never saw"
    )
    if held_out == "fraction":
        seen = (
            f"this evaluation's hold-out (--val-fraction {val_fraction:g}) is not the one that run kept out of "
            f"training ({run_fraction:g}), so some of its images were trained on"
        )
    else:
        share = f"{1 - run_fraction:.0%} of them" if run_fraction > 0 else "all of them"
        seen = f"this evaluation covers all of that folder's images, and the model was trained on {share}"
    return (
        f"warning: {model} was trained on {trained} ({path} says so); {seen}. The numbers overstate how well it "
        f"does on new images: for the honest number, {honest}."
    )


# ---- the confusion matrix picture ------------------------------------------------------------------------------


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def draw_confusion_matrix(
    counts: Sequence[Sequence[int]],
    true_labels: Sequence[str],
    predicted_labels: Sequence[str],
    path: str | Path,
    title: str = "",
    show: str = "count",
) -> None:
    """Draw a confusion matrix as a PNG with PIL: rows are true classes, columns predicted ones, each cell shaded
    by its share of the row (so classes of any size compare) and labelled, when there is room, with its count
    (`show="count"`) or its share of the row in percent (`show="share"`: pixel counts are too long to print).
    Written atomically."""
    from PIL import ImageDraw, ImageFont

    matrix = np.asarray(counts, dtype=np.int64).reshape(len(true_labels), len(predicted_labels))
    rows, cols = matrix.shape
    cell = int(np.clip(640 // max(rows, cols, 1), 12, 44))
    font = ImageFont.load_default(size=max(9, min(14, cell // 2)))
    title_font = ImageFont.load_default(size=14)
    probe = ImageDraw.Draw(PIL.Image.new("L", (1, 1)))

    def width(text: str, f: Any = font) -> int:
        box = probe.textbbox((0, 0), text, font=f)
        return int(box[2] - box[0])

    row_names, col_names = [_short(t) for t in true_labels], [_short(t) for t in predicted_labels]
    left = max(width(t) for t in row_names) + 30
    top = max(width(t) for t in col_names) + 50
    W = max(left + cols * cell + 10, width(title, title_font) + 20)
    H = top + rows * cell + 10
    image = PIL.Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), title, fill="black", font=title_font)
    draw.text((left, 26), "predicted", fill=(90, 90, 90), font=font)
    draw.text((left - 6, top - 4), "true", fill=(90, 90, 90), font=font, anchor="rb")
    totals = matrix.sum(1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])  # white -> deep blue
    for r in range(rows):
        y = top + r * cell
        draw.text((left - 6 - width(row_names[r]), y + cell // 2), row_names[r], fill="black", font=font, anchor="lm")
        for c in range(cols):
            x = left + c * cell
            color = tuple(int(v) for v in light + (dark - light) * shares[r, c])
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color, outline=(220, 220, 220))
            if cell >= 16 and matrix[r, c]:
                ink = "white" if shares[r, c] > 0.5 else "black"
                text = str(matrix[r, c]) if show == "count" else f"{100 * shares[r, c]:.0f}"
                draw.text((x + cell // 2, y + cell // 2), text, fill=ink, font=font, anchor="mm")
    for c, name in enumerate(col_names):  # column names run upwards
        label = PIL.Image.new("RGB", (width(name) + 4, cell), "white")
        ImageDraw.Draw(label).text((2, cell // 2), name, fill="black", font=font, anchor="lm")
        label = label.rotate(90, expand=True)
        image.paste(label, (left + c * cell, top - 4 - label.height))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# ---- semantic segmentation: the metric, the evaluation loop ------------------------------------------


BOUNDARY_RATIO = 0.02  # boundary IoU's band: pixels within 2% of the image diagonal of a contour (Cheng et al.)


def _window_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The maximum of every run of `k` values along `dim` (that dimension shrinks by k - 1): log2(k) elementwise
    maxima of shifted views, each doubling the window, then one of two overlapping windows (a sparse table's
    doubling); a max-pool costs k per value instead."""
    n, width = x.shape[dim], 1
    while 2 * width <= k:
        x = torch.maximum(x.narrow(dim, 0, x.shape[dim] - width), x.narrow(dim, width, x.shape[dim] - width))
        width *= 2
    if width < k:
        x = torch.maximum(x.narrow(dim, 0, n - k + 1), x.narrow(dim, k - width, n - k + 1))
    return x


def boundary_band(labels: torch.Tensor, ratio: float = BOUNDARY_RATIO) -> torch.Tensor:
    """The pixels of a class map `(..., H, W)` within distance d of their own class's contour: those whose
    (2d+1)² square window (chessboard distance d) holds another value or reaches past the image's edge (the edge
    counts as a contour, as Boundary IoU's reference code pads the mask with zeros), d = max(1, round(ratio *
    diagonal)). This is each class mask minus its erosion by d, for every class at once: the window's maximum and
    minimum of the map, one separable sliding maximum, instead of one erosion per class."""
    height, width = labels.shape[-2:]
    d = max(1, round(ratio * math.hypot(height, width)))
    # int16 when the values allow (class maps): the sliding maxima run three times faster than in int32
    top = int(labels.abs().max()) if labels.numel() else 0
    dtype, beyond = (torch.int16, 2**14) if top < 2**14 else (torch.int32, 2**30)
    flat = labels.reshape(-1, height, width).to(dtype)
    both = torch.stack((flat, -flat), 1)  # (N, 2, H, W): the second channel's maximum is minus the minimum
    # beyond the edge: a value above every class in both channels, so a window reaching it is never uniform
    padded = F.pad(both, (d, d, d, d), value=beyond)
    k = 2 * d + 1
    extreme = _window_max(_window_max(padded, k, -1), k, -2)  # (N, 2, H, W)
    return (extreme[:, 0] != -extreme[:, 1]).reshape(labels.shape)  # the window's max differs from its min


class SegmentationMetric:
    """Intersection and union per class, accumulated over a whole data set the way mmsegmentation and the
    `evaluate` library's `mean_iou` count them (never averaged per batch): a `num_classes`² confusion matrix of
    pixels (rows true, columns predicted) over the pixels whose label is not `ignore_index`; and, for Boundary IoU
    (Cheng et al. 2021, https://arxiv.org/abs/2103.16562), the same counts over each class's boundary band
    (`boundary_band`), summed over the set.

    Args:
        num_classes: The model's classes.
        ignore_index: The label of unlabelled pixels: left out of every count (an ignored region's edge is still a
            contour of the classes beside it).
        boundary_ratio: The band's width as a share of each image's diagonal; None skips Boundary IoU.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: Any = "cpu",
        boundary_ratio: float | None = BOUNDARY_RATIO,
    ) -> None:
        self.num_classes, self.ignore_index, self.boundary_ratio = num_classes, ignore_index, boundary_ratio
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        # rows: the band pixels both maps agree on (intersection), the label's band, the prediction's band
        self.boundary = torch.zeros(3, num_classes, dtype=torch.int64, device=device)

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Add `predicted` class indices against `labels` (same shape: one map `(H, W)` or a batch `(B, H, W)`;
        the boundary band's width is measured on each map's own size)."""
        if predicted.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predicted.shape)} and labels {tuple(labels.shape)} differ in shape")
        k = self.num_classes
        predicted = predicted.long()
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < k)
        target = torch.where(valid, labels.long(), -1)  # every unlabelled pixel one value: a region of its own
        # Pixels left out are counted in one extra bin, then dropped: cheaper than selecting the others.
        index = torch.where(valid, target * k + predicted, k * k)
        self.confusion += torch.bincount(index.flatten(), minlength=k * k + 1)[: k * k].reshape(k, k)
        if self.boundary_ratio is None or predicted.dim() < 2 or predicted.numel() == 0:
            return
        label_band, predicted_band = boundary_band(torch.stack((target, predicted)), self.boundary_ratio) & valid
        both = label_band & predicted_band & (predicted == target)
        rows = [
            torch.where(both, target, k),
            torch.where(label_band, target, k),
            torch.where(predicted_band, predicted, k),
        ]
        index = torch.stack(rows) + (k + 1) * torch.arange(3, device=predicted.device).view(3, *[1] * predicted.dim())
        self.boundary += torch.bincount(index.flatten(), minlength=3 * (k + 1)).view(3, k + 1)[:, :k]

    def compute(self) -> dict[str, Any]:
        """`iou_from_confusion`'s metrics, with Boundary IoU's (`per_category_boundary_iou`,
        `mean_boundary_iou`) when it was counted."""
        out = iou_from_confusion(self.confusion.cpu().numpy())
        if self.boundary_ratio is not None:
            out.update(boundary_iou(self.boundary.cpu().numpy()))
        return out


def boundary_iou(counts: np.ndarray) -> dict[str, Any]:
    """Boundary IoU per class from `SegmentationMetric.boundary`'s counts (intersection, label band, predicted band),
    NaN for a class whose band is empty in both (in neither map), and its mean over the others."""
    intersection, label_band, predicted_band = np.asarray(counts, dtype=np.float64)
    union = label_band + predicted_band - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    return {
        "per_category_boundary_iou": iou,
        "mean_boundary_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan,
    }


def iou_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
    """The segmentation metrics of a pixel confusion matrix (rows true, columns predicted).

    Per class: IoU TP/(TP+FP+FN), accuracy TP/label pixels, Dice 2TP/(2TP+FP+FN), precision TP/(TP+FP), recall
    TP/(TP+FN) and F-score 2PR/(P+R) (mmsegmentation's mFscore with beta 1). A class in neither the labels nor the
    predictions is NaN in all of them and left out of every mean (`mean_*`, over the other classes), as for mIoU;
    accuracy is also NaN for a class only predicted. Otherwise a 0/0 counts as 0 (scikit-learn's
    `zero_division=0`): precision of a class never predicted, recall of one only predicted, F-score when both are
    0. So the F-score equals Dice for every class and mFscore equals mDice (mmsegmentation leaves a class with
    precision and recall 0 out of mFscore instead).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    label_area, predicted_area = confusion.sum(1), confusion.sum(0)
    union = label_area + predicted_area - intersection
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, intersection / union, np.nan)
        accuracy = np.where(label_area > 0, intersection / label_area, np.nan)
        dice = np.where(present, 2 * intersection / (label_area + predicted_area), np.nan)
        precision = np.where(predicted_area > 0, intersection / predicted_area, np.where(present, 0.0, np.nan))
        recall = np.where(label_area > 0, intersection / label_area, np.where(present, 0.0, np.nan))
        fscore = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        fscore = np.where(present, fscore, np.nan)
    total = label_area.sum()

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    return {
        "mean_iou": mean(iou),
        "mean_accuracy": mean(accuracy),
        "overall_accuracy": float(intersection.sum() / total) if total else math.nan,
        "mean_dice": mean(dice),
        "mean_precision": mean(precision),
        "mean_recall": mean(recall),
        "mean_fscore": mean(fscore),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
        "per_category_dice": dice,
        "per_category_precision": precision,
        "per_category_recall": recall,
        "per_category_fscore": fscore,
        "label_area": label_area.astype(np.int64),
        "predicted_area": predicted_area.astype(np.int64),
    }


@dataclass
class SegmentationEvalResult:
    """What `evaluate_segmentation` measured (`mean_iou` etc. as `iou_from_confusion`, `mean_boundary_iou` as
    `boundary_iou`, over `num_images`).

    Attributes:
        per_class: Class name -> `{"iou", "accuracy", "dice", "precision", "recall", "fscore", "boundary_iou",
            "pixels", "predicted_pixels"}` (a metric is None where the class is in neither the labels nor the
            predictions; accuracy also where it is not in the labels).
        confusion: Pixel counts, rows true class, columns predicted, in `class_names` order.
        boundary_ratio: Boundary IoU's band width, as a share of each image's diagonal.
    """

    mean_iou: float
    mean_accuracy: float
    overall_accuracy: float
    loss: float
    num_images: int
    per_class: dict[str, dict[str, Any]]
    class_names: list[str]
    confusion: list[list[int]]
    mode: str = "whole"
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    mean_dice: float = math.nan
    mean_precision: float = math.nan
    mean_recall: float = math.nan
    mean_fscore: float = math.nan
    mean_boundary_iou: float = math.nan
    boundary_ratio: float = BOUNDARY_RATIO
    held_out: str | None = None  # what was evaluated: "folder" (a validation split), "fraction" (a hold-out), None
    tta: dict[str, Any] | None = None  # the test-time augmentation that ran (`Augmentation.to_dict()`), or None

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v is None or math.isnan(v) else v

        return {
            "task": "semantic-segmentation",
            "mode": self.mode,
            "mean_iou": clean(self.mean_iou),
            "mean_accuracy": clean(self.mean_accuracy),
            "overall_accuracy": clean(self.overall_accuracy),
            "mean_dice": clean(self.mean_dice),
            "mean_precision": clean(self.mean_precision),
            "mean_recall": clean(self.mean_recall),
            "mean_fscore": clean(self.mean_fscore),
            "mean_boundary_iou": clean(self.mean_boundary_iou),
            "boundary_ratio": self.boundary_ratio,
            "tta": self.tta,
            "loss": clean(self.loss),
            "num_images": self.num_images,
            "num_skipped": len(self.skipped),
            "per_class": self.per_class,
            "confusion_matrix": {"true": self.class_names, "predicted": self.class_names, "counts": self.confusion},
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }


class SegmentationEvaluator:
    """Evaluates a segmentation model on fixed `(image, mask)` pairs, again and again (training validates every
    epoch): logits upsampled to each image's own size, then compared with its mask pixel by pixel.

    Args:
        model: A pvtkit (or transformers) segmentation model returning `.logits` `(B, K, h, w)`.
        samples: All the pairs; this process takes its share under torchrun.
        processor: The model's image processor (its size is the window in `"slide"` mode).
        mode: `"whole"` (the processor's resize, one forward per image) or `"slide"` (aspect kept, short side to the
            processor's size, overlapping windows with a 2/3 stride).
        reduce_labels: Read masks with ADE20K's convention.
        aug: Test-time augmentation (`tta.as_augmentation`: None, a preset such as "ms-flip", a dict, an
            `Augmentation`): the probabilities averaged over its views (`tta.tta_probabilities`, scales relative to
            the image as `mode` sizes it) at each mask's size; the loss is then their cross-entropy.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        samples: Sequence[SegSample],
        processor: Any,
        *,
        mode: str = "whole",
        reduce_labels: bool = False,
        aug: Any = None,
        batch_size: int = 8,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        from .tta import as_augmentation

        self.model, self.mode, self.device = model, mode, torch.device(device)
        self.amp_dtype, self.ctx, self.progress, self.batch_size = amp_dtype, ctx or DistContext(), progress, batch_size
        self.num_labels = int(model.config.num_labels)
        self.num_classes = max(self.num_labels, 2)  # a one-label (BCE) model: background, or its label
        self.samples = list(samples)
        self.window = processor_image_size(processor)
        self.stride = (max(self.window[0] * 2 // 3, 1), max(self.window[1] * 2 // 3, 1))
        self.aug = as_augmentation(aug)
        transform = ProcessorTransform(processor) if mode == "whole" else SlideTransform(processor, self.window)
        mine = self.samples[self.ctx.rank :: self.ctx.world_size]
        self.dataset = EvalPairDataset(
            mine, lambda image: transform(image, 0, 0) if mode == "whole" else transform(image), reduce_labels
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size if mode == "whole" else 1,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=as_lists,
            generator=torch.Generator(),  # not the global RNG, which training's dropout draws from
        )

    def _logits(self, pixels: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image, its logits `(1, K, h, w)` (upsampled by the caller to `sizes[i]`, its mask's); with test-time
        augmentation, `tta.probability_scores` of the averaged probabilities, already at `sizes[i]`."""
        with autocast_context(self.device, self.amp_dtype):
            if self.aug.active:
                from .tta import probability_scores, tta_probabilities

                batch = torch.stack(pixels).to(self.device)  # one size: the processor's, or slide mode's one image
                found = tta_probabilities(
                    self.model, batch, sizes, self.aug, self.mode, self.window, self.stride, self.batch_size
                )
                return [probability_scores(p) for p in found]
            if self.mode == "whole":
                logits = self.model(pixel_values=torch.stack(pixels).to(self.device)).logits.float()
                return [logits[i : i + 1] for i in range(len(pixels))]
            from .tta import sliding_window_logits

            return [
                sliding_window_logits(self.model, p[None].to(self.device), self.window, self.stride, self.batch_size)
                for p in pixels
            ]

    @torch.no_grad()
    def run(self, desc: str = "eval") -> SegmentationEvalResult:
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        metric = SegmentationMetric(self.num_classes, device=device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, labelled pixels, images
        skipped: dict[str, str] = {}
        start = time.perf_counter()
        bar = progress_bar(len(self.samples), desc, self.progress and self.ctx.is_main)
        for pixels, masks, _, indices, reasons in self.loader:
            for i, reason in zip(indices, reasons):
                if reason:
                    skipped[" / ".join(self.dataset.samples[i])] = reason
            good = [k for k, reason in enumerate(reasons) if not reason]
            if good:
                logits = self._logits([pixels[k] for k in good], [tuple(masks[k].shape[-2:]) for k in good])
                for k, scores in zip(good, logits):
                    mask = masks[k].to(device)
                    target = torch.where(mask < self.num_classes, mask, IGNORE_INDEX)
                    loss, up = segmentation_loss(
                        scores,
                        target[None],
                        self.num_labels,
                        IGNORE_INDEX,
                        reduction="sum",
                        upsampled=True,
                        check=False,
                    )
                    metric.update(class_map(up, dim=1)[0], mask)
                    valid = (target != IGNORE_INDEX).sum()
                    sums += torch.stack(
                        (loss.double(), valid.double(), torch.ones((), dtype=torch.float64, device=device))
                    )
            bar.update(len(indices) * self.ctx.world_size)
        bar.close()
        self.ctx.all_reduce_sum(metric.confusion)
        self.ctx.all_reduce_sum(metric.boundary)
        self.ctx.all_reduce_sum(sums)
        for part in self.ctx.gather_objects(skipped):
            skipped.update(part)
        model.train(was_training)
        result = self._result(metric, sums.cpu().tolist(), skipped, time.perf_counter() - start)
        result.tta = self.aug.to_dict() if self.aug.active else None
        return result

    def _result(
        self, metric: SegmentationMetric, sums: list[float], skipped: dict[str, str], seconds: float
    ) -> SegmentationEvalResult:
        names = segmentation_labels(self.model.config)
        m = metric.compute()
        per_class = {}
        for i, name in enumerate(names):
            per_class[name] = {
                key: None if np.isnan(m[f"per_category_{key}"][i]) else float(m[f"per_category_{key}"][i])
                for key in ("iou", "accuracy", "dice", "precision", "recall", "fscore", "boundary_iou")
            }
            per_class[name]["pixels"] = int(m["label_area"][i])
            per_class[name]["predicted_pixels"] = int(m["predicted_area"][i])
        loss_sum, pixels, count = sums
        return SegmentationEvalResult(
            mean_iou=m["mean_iou"],
            mean_accuracy=m["mean_accuracy"],
            overall_accuracy=m["overall_accuracy"],
            loss=loss_sum / pixels if pixels else math.nan,
            num_images=int(count),
            per_class=per_class,
            class_names=names,
            confusion=metric.confusion.cpu().tolist(),
            mode=self.mode,
            skipped=skipped,
            seconds=seconds,
            mean_dice=m["mean_dice"],
            mean_precision=m["mean_precision"],
            mean_recall=m["mean_recall"],
            mean_fscore=m["mean_fscore"],
            mean_boundary_iou=m["mean_boundary_iou"],
            boundary_ratio=metric.boundary_ratio,
        )


def evaluate_segmentation(
    model: Any,
    data: str | Path,
    *,
    processor: Any = None,
    val_fraction: float | None = None,
    reduce_labels: bool | None = None,
    mode: str = "whole",
    scales: Sequence[float] | str | None = None,
    flip: bool = False,
    aligned_resize: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    confusion: str | Path | None = None,
    progress: bool = True,
    revision: str | None = None,
    local_files_only: bool = False,
) -> SegmentationEvalResult:
    """Evaluate a semantic segmentation model on a folder of images and masks: mIoU, per-class IoU, pixel
    accuracy, mean class accuracy, Dice, precision, recall, F-score, Boundary IoU, the pixel confusion matrix.

    Args:
        model: A segmentation model, or where to load one (Hub id, directory, weights file).
        data: A dataset in one of `data.folders.SEGMENTATION_LAYOUTS`; its validation split when it has one.
        processor: The image processor; by default the model's own.
        val_fraction: Evaluate the hold-out `pvtkit train --val-fraction` validated on.
        reduce_labels: Read the masks with ADE20K's convention (default: the processor's `do_reduce_labels`).
        mode: `"whole"` or `"slide"` (see `SegmentationEvaluator`).
        scales, flip, aligned_resize: Test-time augmentation (`tta.Augmentation`): resize ratios (e.g. `(0.5, 0.75,
            1, 1.25, 1.5, 1.75)`, mmsegmentation's, or the text "0.5,1,1.5"; default 1 alone), also the mirrored
            views, each view's sides rounded up to a multiple of 32; the softmax probabilities averaged over views.
        confusion: Also draw the confusion matrix (shares of each true class's pixels) into this PNG.

    Returns:
        A `SegmentationEvalResult` (the same on every process under torchrun).
    """
    from .auto import AutoModelForSemanticSegmentation
    from .dtypes import parse_dtype
    from .tta import Augmentation

    aug = Augmentation(
        (1.0,) if scales is None else scales, bool(flip), bool(aligned_resize)
    )  # bad values fail before loading
    model, processor, name, device, ctx = _prepare(
        model, AutoModelForSemanticSegmentation, processor, device, revision, local_files_only
    )
    if reduce_labels is None:
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    found, samples = load_eval_segmentation(data, val_fraction, reduce_labels, progress and ctx.is_main)
    predicts = max(model.config.num_labels, 2)  # a one-label (BCE) model: background or its label
    if len(found.classes) > predicts:
        raise DatasetError(
            f"{data}: the masks hold {len(found.classes)} classes, the model predicts "
            f"{predicts}; expected masks with values below {predicts} "
            f"(or {IGNORE_INDEX})" + ("" if reduce_labels else "; ADE20K-style masks need reduce_labels")
        )
    evaluator = SegmentationEvaluator(
        model,
        samples,
        processor,
        mode=mode,
        reduce_labels=reduce_labels,
        aug=aug,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        amp_dtype=parse_dtype(dtype),
        ctx=ctx,
        progress=progress,
    )
    result = evaluator.run()
    result.skipped = {**dict(found.unreadable), **result.skipped}
    result.held_out = "folder" if found.val_source == "folder" else "fraction" if val_fraction else None
    if confusion is not None and ctx.is_main:
        title = f"{name}: mIoU {result.mean_iou:.1%} on {result.num_images} images (share of each true class's pixels)"
        draw_confusion_matrix(result.confusion, result.class_names, result.class_names, confusion, title, show="share")
    logger.info("evaluated %s on %s: mIoU %.4f", name, data, result.mean_iou)
    return result


# ---- depth: the metrics, the evaluation loop -----------------------------------------------------------------

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")

# The standard KITTI evaluation crops, as (top, bottom, left, right) fractions of the map's height and width: Garg et
# al. 2016's and Eigen et al. 2014's (the BTS / AdaBins / GLPN evaluation code's numbers).
DEPTH_CROPS = {
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}


def depth_crop_mask(height: int, width: int, crop: str | None) -> torch.Tensor | None:
    """The `(height, width)` boolean mask of the pixels inside `crop` ("garg" or "eigen"; rows and columns from
    `int(fraction * size)`, end exclusive, as the evaluation code slices); None for no crop."""
    if crop is None:
        return None
    if crop not in DEPTH_CROPS:
        raise ValueError(f"unknown depth evaluation crop {crop!r}; expected one of {', '.join(DEPTH_CROPS)}")
    top, bottom, left, right = DEPTH_CROPS[crop]
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


def _median(values: torch.Tensor) -> torch.Tensor:
    """The median of a 1-D tensor, the two middle values averaged for an even count (NumPy's)."""
    ordered = values.sort().values
    n = ordered.numel()
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def depth_metrics(
    predicted: torch.Tensor,
    target: torch.Tensor,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    *,
    mask: torch.Tensor | None = None,
    median_scaling: bool = False,
) -> dict[str, float] | None:
    """The standard monocular-depth metrics of one image (Eigen et al. 2014, as the GLPN, BTS and AdaBins
    evaluations compute them) over the pixels with a valid ground truth (> 0) inside `mask` (an evaluation crop,
    `depth_crop_mask`); with `median_scaling`, the prediction scaled by median(t) / median(p) over those pixels
    (monocular self-supervised evaluation); then clipped to `[min_depth, max_depth]`. None when no pixel is valid.

    abs_rel = mean |p - t| / t, sq_rel = mean (p - t)^2 / t, rmse, rmse_log (natural log), log10 = mean |log10 p -
    log10 t|, delta_i = share of pixels with max(p / t, t / p) < 1.25^i, silog = 100 sqrt(var(log p - log t)) as
    the KITTI benchmark reports it."""
    valid = target > 0
    if mask is not None:
        valid &= mask.to(valid.device)
    if not valid.any():
        return None
    p = predicted[valid].double()
    t = target[valid].double()
    p = as_measured(p, t, p, min_depth, max_depth, median_scaling)
    ratio = torch.maximum(p / t, t / p)
    d = torch.log(p) - torch.log(t)
    values = torch.stack(
        (
            ((p - t).abs() / t).mean(),
            ((p - t) ** 2 / t).mean(),
            ((p - t) ** 2).mean().sqrt(),
            (d**2).mean().sqrt(),
            (torch.log10(p) - torch.log10(t)).abs().mean(),
            (ratio < 1.25).double().mean(),
            (ratio < 1.25**2).double().mean(),
            (ratio < 1.25**3).double().mean(),
            100 * ((d**2).mean() - d.mean() ** 2).clamp(min=0).sqrt(),
        )
    )
    return dict(zip(DEPTH_METRICS, values.tolist()))  # one transfer from the device, not one per metric


def as_measured(
    predicted: torch.Tensor,
    counted_target: torch.Tensor,
    counted_predicted: torch.Tensor,
    min_depth: float,
    max_depth: float | None,
    median_scaling: bool,
) -> torch.Tensor:
    """A prediction as the metrics see it: with `median_scaling`, scaled by median(target) / median(prediction) over
    the counted pixels, then clipped to `[min_depth, max_depth]`."""
    if median_scaling:
        predicted = predicted * (_median(counted_target) / _median(counted_predicted))
    return predicted.clamp(min=min_depth, max=max_depth)


@dataclass
class DepthEvalResult:
    """What `evaluate_depth` measured: each metric of `DEPTH_METRICS` averaged over the images (each image's metric
    over its valid pixels, then the mean over images, as the published evaluations do), and the mean
    scale-invariant log loss the model trains with."""

    metrics: dict[str, float]
    loss: float
    num_images: int
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    # per image, in the samples' order: {"path", each metric, "valid_pixels"} (`pvtkit eval --per-image`)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    # how it was measured: `flip`, `crop`, `median_scaling`
    options: dict[str, Any] = field(default_factory=dict)
    # the `worst` images by AbsRel, worst first (`DepthEvaluator(worst=N)`): {"path", "abs_rel", "delta1", "index",
    # "target", "prediction" (as the metrics saw it: scaled, clipped), "counted" (the pixels the metrics counted)}
    worst: list[dict[str, Any]] = field(default_factory=list)

    def __getattr__(self, name: str) -> float:
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(name)

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "depth-estimation",
            **self.metrics,
            **self.options,
            "loss": self.loss,
            "num_images": self.num_images,
            "num_skipped": len(self.skipped),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }


class DepthEvaluator:
    """Evaluates a depth model on fixed `(image, depth map)` pairs, again and again (training validates every
    epoch): each image at the processor's size (GLPN's: sides rounded down to a multiple of 32), the prediction
    resized (bilinear) to the map's own size, then compared on its valid pixels.

    Args:
        model: A pvtkit (or transformers) depth model returning `.predicted_depth` `(B, h, w)`.
        samples: All the pairs; this process takes its share under torchrun.
        processor: The model's image processor.
        read: Reads a depth map file into metres (0 = invalid): `data.depth.read_depth` with the run's settings.
        min_depth, max_depth: The prediction's clipping range for the metrics (max: the model's `max_depth`).
        flip: Average each prediction with the flipped image's, flipped back (`tasks.depth.predict_depth`).
        crop: Count only the pixels inside a KITTI evaluation crop, "garg" or "eigen" (`DEPTH_CROPS`).
        median_scaling: Scale each prediction by median(ground truth) / median(prediction) over its valid pixels.
        worst: Keep the maps of this many images with the highest AbsRel (`DepthEvalResult.worst`, for
            `draw_depth_worst`); each process keeps only its own worst that many while it runs.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        samples: Sequence[tuple[str, str]],
        processor: Any,
        read: Any,
        *,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        flip: bool = False,
        crop: str | None = None,
        median_scaling: bool = False,
        worst: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        from .data.depth import DepthEvalDataset

        if isinstance(worst, bool) or not isinstance(worst, int) or worst < 0:
            raise ValueError(f"worst must be a count of images (0 or more), got {worst!r}")
        self.worst = worst

        self.model, self.device, self.amp_dtype = model, torch.device(device), amp_dtype
        self.ctx, self.progress, self.samples = ctx or DistContext(), progress, list(samples)
        if crop is not None and crop not in DEPTH_CROPS:
            raise ValueError(f"unknown depth evaluation crop {crop!r}; expected one of {', '.join(DEPTH_CROPS)}")
        self.min_depth = min_depth
        self.max_depth = max_depth if max_depth is not None else getattr(model.config, "max_depth", None)
        self.flip, self.crop, self.median_scaling = flip, crop, median_scaling
        mine = self.samples[self.ctx.rank :: self.ctx.world_size]
        self.dataset = DepthEvalDataset(mine, processor, read)
        self.loader = DataLoader(
            self.dataset,
            batch_size=1,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=as_lists,
            generator=torch.Generator(),
        )

    @torch.no_grad()
    def run(self, desc: str = "eval") -> DepthEvalResult:
        from .losses import silog_loss
        from .tasks.depth import predict_depth

        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        sums = torch.zeros(len(DEPTH_METRICS) + 2, dtype=torch.float64, device=device)  # metrics, loss, images
        skipped: dict[str, str] = {}
        rows: dict[int, dict[str, Any]] = {}  # by the sample's index over every process
        kept: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of this process's `worst` worst so far
        start = time.perf_counter()
        bar = progress_bar(len(self.samples), desc, self.progress and self.ctx.is_main)
        for pixels, depths, _, indices, reasons in self.loader:
            for k, (index, reason) in enumerate(zip(indices, reasons)):
                image_path = self.dataset.samples[index][0]
                if reason:
                    skipped[" / ".join(self.dataset.samples[index])] = reason
                    continue
                with autocast_context(device, self.amp_dtype):
                    predicted = predict_depth(model, pixels[k][None].to(device), self.flip)
                target = depths[k].to(device)
                up = F.interpolate(predicted[:, None], size=target.shape, mode="bilinear", align_corners=False)[0, 0]
                mask = depth_crop_mask(*target.shape, self.crop)
                found = depth_metrics(
                    up, target, self.min_depth, self.max_depth, mask=mask, median_scaling=self.median_scaling
                )
                if found is None:
                    skipped[" / ".join(self.dataset.samples[index])] = "no valid depth"
                    continue
                loss = silog_loss(up.clamp(min=self.min_depth)[None], target[None])
                sums += torch.tensor(
                    [*(found[m] for m in DEPTH_METRICS), loss.item(), 1.0], dtype=torch.float64, device=device
                )
                counted = (target > 0) if mask is None else (target > 0) & mask.to(device)
                position = index * self.ctx.world_size + self.ctx.rank
                rows[position] = {"path": str(image_path), **found, "valid_pixels": int(counted.sum())}
                # Worse = higher AbsRel, then the earlier sample (the order of a stable sort of the rows).
                key = (found["abs_rel"], -position)
                if self.worst and (len(kept) < self.worst or key > kept[0][:2]):
                    entry = (*key, self._worst_entry(str(image_path), position, found, up, target, counted))
                    (heapq.heappush if len(kept) < self.worst else heapq.heapreplace)(kept, entry)
            bar.update(len(indices) * self.ctx.world_size)
        bar.close()
        self.ctx.all_reduce_sum(sums)
        for part in self.ctx.gather_objects(skipped):
            skipped.update(part)
        for part in self.ctx.gather_objects(rows):
            rows.update(part)
        worst = []
        if self.worst:
            every = [entry for part in self.ctx.gather_objects(kept) for entry in part]
            worst = [entry[2] for entry in sorted(every, key=lambda e: e[:2], reverse=True)[: self.worst]]
        model.train(was_training)
        *totals, loss, count = sums.cpu().tolist()
        metrics = {m: (v / count if count else math.nan) for m, v in zip(DEPTH_METRICS, totals)}
        return DepthEvalResult(
            metrics,
            loss / count if count else math.nan,
            int(count),
            skipped,
            time.perf_counter() - start,
            [rows[i] for i in sorted(rows)],
            {"flip": self.flip, "crop": self.crop, "median_scaling": self.median_scaling},
            worst,
        )

    def _worst_entry(
        self,
        path: str,
        position: int,
        found: dict[str, float],
        predicted: torch.Tensor,
        target: torch.Tensor,
        counted: torch.Tensor,
    ) -> dict[str, Any]:
        """What `draw_depth_worst` needs of one image, on the CPU: its maps, the prediction as the metrics saw it
        (median-scaled if asked, clipped), and which pixels they counted."""
        shown = predicted.double()
        shown = as_measured(
            shown, target[counted].double(), shown[counted], self.min_depth, self.max_depth, self.median_scaling
        )
        return {
            "path": path,
            "index": position,
            "abs_rel": found["abs_rel"],
            "delta1": found["delta1"],
            "target": target.float().cpu().numpy(),
            "prediction": shown.float().cpu().numpy(),
            "counted": counted.cpu().numpy(),
        }


def write_depth_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """`pvtkit eval --per-image`: one CSV row per evaluated image (path, each metric, valid pixels), atomically."""
    import csv

    columns = ["path", *DEPTH_METRICS, "valid_pixels"]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


WORST_PANEL_HEIGHT = 160  # pixels: each panel of `draw_depth_worst`, its width by the map's aspect
WORST_PAD, WORST_HEADER, WORST_CAPTION = 6, 22, 18  # the gaps, the column titles' line, each row's caption line
WORST_COLUMNS = ("image", "ground truth", "prediction", "|error|")


def _depth_colours(values: np.ndarray, low: float, high: float, shown: np.ndarray) -> np.ndarray:
    """uint8 RGB of `values` on the dark-to-bright scale from `low` to `high` (`visualize.colormap`, starting
    above its black so that black means nothing to show), black where `shown` is False."""
    from .visualize import colormap

    span = high - low if high > low else 1.0
    colours = colormap(0.12 + 0.88 * np.clip((values - low) / span, 0.0, 1.0))
    colours[~shown] = 0
    return colours


def worst_caption(entry: dict[str, Any]) -> str:
    """A row's caption in `draw_depth_worst`'s picture (and its PNG text): the image path, AbsRel and delta1."""
    return f"{entry['path']}  AbsRel {entry['abs_rel']:.4f}  delta1 {entry['delta1']:.4f}"


def draw_depth_worst(
    entries: Sequence[dict[str, Any]], path: str | Path, panel_height: int = WORST_PANEL_HEIGHT
) -> None:
    """`pvtkit eval --worst`: one row per image (`DepthEvalResult.worst`, worst first) of its photo, ground truth,
    prediction and absolute error, each `panel_height` pixels high, under a caption naming the image and its AbsRel
    and delta1. Ground truth and prediction share one colour scale per row (dark near, bright far; the range of the
    counted pixels' depths), error has its own (0 to its maximum); black is no ground truth (in the error map: a
    pixel the metrics did not count). The captions, in full, are also the PNG's text entries "row 1", "row 2", ...
    Written atomically."""
    from PIL import ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    from .processing import load_image

    font = ImageFont.load_default(size=12)
    sizes = [e["target"].shape for e in entries]
    column = max([round(panel_height * w / h) for h, w in sizes] or [panel_height])
    width = WORST_PAD + len(WORST_COLUMNS) * (column + WORST_PAD)
    block = WORST_CAPTION + panel_height + WORST_PAD
    canvas = PIL.Image.new("RGB", (width, WORST_HEADER + block * len(entries)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(WORST_COLUMNS):
        draw.text((WORST_PAD + c * (column + WORST_PAD), WORST_PAD), title, fill="black", font=font)
    info = PngInfo()
    for r, entry in enumerate(entries):
        target, predicted, counted = entry["target"], entry["prediction"], entry["counted"]
        h, w = target.shape
        valid = target > 0
        seen = np.concatenate([target[counted], predicted[counted]])
        low, high = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 1.0)
        error = np.abs(predicted - target)
        top_error = float(error[counted].max()) if counted.any() else 1.0
        photo = load_image(entry["path"])
        if photo.size != (w, h):
            photo = photo.resize((w, h), PIL.Image.Resampling.BILINEAR)
        panel_size = (round(panel_height * w / h), panel_height)
        panels = [
            photo.resize(panel_size, PIL.Image.Resampling.BILINEAR),
            *(
                PIL.Image.fromarray(colours).resize(panel_size, PIL.Image.Resampling.NEAREST)
                for colours in (
                    _depth_colours(target, low, high, valid),
                    _depth_colours(predicted, low, high, np.ones_like(valid)),
                    _depth_colours(error, 0.0, top_error, counted),
                )
            ),
        ]
        y = WORST_HEADER + r * block
        caption = f"{r + 1}. {worst_caption(entry)}"
        scale = f"  [depth {low:.2f}-{high:.2f} m, error 0-{top_error:.2f} m]"
        text = caption + scale
        while draw.textlength(text, font=font) > width - 2 * WORST_PAD and len(caption) > 8:
            caption = caption[:3] + "…" + caption[5:]  # shorten the path from its start, keep the numbers
            text = caption + scale
        draw.text((WORST_PAD, y + 2), text, fill="black", font=font)
        for c, panel in enumerate(panels):
            canvas.paste(panel, (WORST_PAD + c * (column + WORST_PAD), y + WORST_CAPTION))
        info.add_text(f"row {r + 1}", worst_caption(entry))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG", pnginfo=info))


def evaluate_depth(
    model: Any,
    data: str | Path,
    *,
    processor: Any = None,
    val_fraction: float | None = None,
    depth_scale: float = 1000.0,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    flip: bool = False,
    crop: str | None = None,
    median_scaling: bool = False,
    per_image: str | Path | None = None,
    worst: str | Path | None = None,
    worst_count: int = 6,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    confusion: str | Path | None = None,
    progress: bool = True,
    revision: str | None = None,
    local_files_only: bool = False,
) -> DepthEvalResult:
    """Evaluate a depth model on images and depth maps (`data.depth.DEPTH_LAYOUTS`): AbsRel, SqRel, RMSE, RMSE-log,
    log10, delta < 1.25^i, SILog.

    Args:
        model: A depth model, or where to load one (Hub id, directory, weights file).
        data: The dataset; its validation split when it has one, else the `val_fraction` hold-out, else every pair.
        depth_scale: What a 16-bit PNG's integers are divided by to give metres (NYU 1000, KITTI 256).
        min_depth, max_depth: Ground truth outside is invalid; predictions are clipped to it (max default: the
            model's `max_depth`).
        flip: Average each prediction with the horizontally flipped image's, flipped back (GLPN's evaluation).
        crop: "garg" or "eigen": only the pixels inside that KITTI evaluation crop count (`DEPTH_CROPS`).
        median_scaling: Scale each prediction by median(ground truth) / median(prediction) over its valid pixels
            before the metrics.
        per_image: Write one CSV row per image here (path, each metric, valid pixels; `result.per_image`).
        worst: Draw the `worst_count` images with the highest AbsRel into this PNG (`draw_depth_worst`: photo,
            ground truth, prediction, absolute error, and a caption with the path, AbsRel and delta1).
        worst_count: How many rows that picture has (fewer when fewer images were evaluated).
        confusion: Not for depth (a ValueError if given).

    Returns:
        A `DepthEvalResult` (the same on every process under torchrun).
    """
    from functools import partial

    from .auto import AutoModelForDepthEstimation
    from .data.depth import load_depth_data, read_depth
    from .dtypes import parse_dtype

    if confusion is not None:
        raise ValueError("a confusion matrix is for classes; depth models have none (drop --confusion)")
    if isinstance(worst_count, bool) or not isinstance(worst_count, int) or worst_count < 1:
        raise ValueError(f"worst_count must be a positive number of images, got {worst_count!r}")
    model, processor, name, device, ctx = _prepare(
        model, AutoModelForDepthEstimation, processor, device, revision, local_files_only
    )
    max_depth = max_depth if max_depth is not None else getattr(model.config, "max_depth", None)
    found = load_depth_data(data, val_fraction or 0.0, depth_scale, min_depth, max_depth)
    samples = found.val if found.val_source == "folder" or val_fraction else found.train
    read = partial(read_depth, depth_scale=depth_scale, min_depth=min_depth, max_depth=max_depth)
    evaluator = DepthEvaluator(
        model,
        samples,
        processor,
        read,
        min_depth=min_depth,
        max_depth=max_depth,
        flip=flip,
        crop=crop,
        median_scaling=median_scaling,
        worst=worst_count if worst is not None else 0,
        num_workers=num_workers,
        device=device,
        amp_dtype=parse_dtype(dtype),
        ctx=ctx,
        progress=progress,
    )
    result = evaluator.run()
    result.skipped = {**dict(found.unreadable), **result.skipped}
    if per_image is not None and ctx.is_main:
        write_depth_csv(per_image, result.per_image)
    if worst is not None and ctx.is_main:
        draw_depth_worst(result.worst, worst)
    logger.info("evaluated %s on %s: AbsRel %.4f, delta1 %.4f", name, data, result.abs_rel, result.delta1)
    return result
