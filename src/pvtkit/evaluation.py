"""Evaluating an image classifier on class folders (accuracy, top-5, per-class accuracy, a confusion matrix) and a
semantic segmentation model on image/mask folders (mIoU, per-class IoU, pixel and mean class accuracy).

The data is torchvision's `ImageFolder` layout, one folder of images per class. Folders are matched to the model's
classes by name (`config.id2label`), so a model fine-tuned by `pvtkit train` evaluates on any folder of the same
classes, in any order, and a folder of a few of its classes works too. Images go through the model's own image
processor. Under `torchrun` the images are sharded across processes and the counts summed.

Unreadable images are skipped and reported, never fatal: a file PIL cannot even open is found before the run
starts; one whose pixel data turns out to be truncated is found when it is decoded and counted out then.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ._files import atomic_write
from .auto import default_image_processor, image_processor_for
from .distributed import DistContext, init_distributed
from .imagefolder import find_split_folders, scan_class_folders, stratified_split, unreadable_images
from .processing import ImageLoadError, fixed_size, load_image

logger = logging.getLogger("pvtkit")

# The hold-out split never depends on --seed: `pvtkit eval --val-fraction F` must find exactly the images that
# `pvtkit train --val-fraction F` held out, whatever seed the training used.
SPLIT_SEED = 0

Sample = tuple[str, int]  # (image path, class index)


class DatasetError(ValueError):
    """A dataset directory that cannot be used as it is; the message names the folder or file and what is wrong."""


# ---- finding the data ------------------------------------------------------------------------------------------


@dataclass
class ImageFolderData:
    """A classification dataset found on disk.

    Attributes:
        classes: Class names (the folder names), sorted.
        train: `(path, class index)` pairs to train on.
        val: `(path, class index)` pairs to validate on; empty when there is no validation set.
        val_source: Where `val` came from: `"folder"` (a `val/` or `validation/` folder), `"fraction"` (held out
            of the training folders), or None.
        unreadable: Files left out because PIL cannot read them, with the reason.
    """

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    val_source: str | None
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, list[int]]:
        """Class name -> [training images, validation images]: the fingerprint a resumed run must match."""
        out = {name: [0, 0] for name in self.classes}
        for column, samples in enumerate((self.train, self.val)):
            for _, label in samples:
                out[self.classes[label]][column] += 1
        return out


def _class_folders(directory: Path) -> dict[str, list[Path]]:
    by_class = scan_class_folders(directory)
    if not by_class:
        loose = any(p.is_file() for p in directory.iterdir())
        raise DatasetError(
            f"{directory}: no class folders; expected one subfolder of images per class "
            f"(e.g. {directory / 'cat' / '1.jpg'})" + (", not images directly in it" if loose else "")
        )
    return by_class


def _drop_unreadable(
    parts: Sequence[dict[str, list[Path]]], check: bool
) -> tuple[list[dict[str, list[Path]]], list[tuple[str, str]]]:
    if not check:
        return list(parts), []
    bad = dict(unreadable_images([p for part in parts for files in part.values() for p in files]))
    kept = [{name: [p for p in files if p not in bad] for name, files in part.items()} for part in parts]
    return kept, [(str(p), reason) for p, reason in bad.items()]


def _warn_unreadable(unreadable: list[tuple[str, str]], what: str = "image") -> None:
    if not unreadable:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in unreadable[:5])
    more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    logger.warning("skipping %d unreadable %s(s): %s%s", len(unreadable), what, shown, more)


def load_training_folders(root: str | Path, val_fraction: float = 0.1, check_images: bool = True) -> ImageFolderData:
    """The training and validation images of a dataset directory, for `pvtkit train`.

    `root` holds `train/` and `val/` (or `validation/`) folders of class folders, or just class folders, of which
    a deterministic, stratified `val_fraction` is held out for validation (0: no validation).

    Raises:
        FileNotFoundError: `root` does not exist.
        DatasetError: No class folders, a single class, a class folder without (readable) images, a validation
            class that training lacks, or no readable image at all.
    """
    train_dir, val_dir = find_split_folders(root)
    by_class = _class_folders(train_dir)
    if len(by_class) < 2:
        raise DatasetError(f"{train_dir}: only one class folder ({next(iter(by_class))}); a classifier needs at "
                           "least two")
    empty = [name for name, files in by_class.items() if not files]
    if empty:
        more = f" ({len(empty)} such folders)" if len(empty) > 1 else ""
        raise DatasetError(f"{train_dir / empty[0]}: class folder holds no image files; every class needs images "
                           f"(remove the folder or add images){more}")
    if val_dir is not None:
        val_by_class = scan_class_folders(val_dir)
        extra = [name for name in val_by_class if name not in by_class]
        if extra:
            raise DatasetError(f"{val_dir / extra[0]}: a validation class that {train_dir} has no folder for; "
                               f"validation classes must be training classes")
        source: str | None = "folder"
    else:
        by_class, val_by_class = stratified_split(by_class, val_fraction, SPLIT_SEED)
        source = "fraction" if val_fraction > 0 else None
    (by_class, val_by_class), unreadable = _drop_unreadable((by_class, val_by_class), check_images)
    _warn_unreadable(unreadable)
    gone = [name for name, files in by_class.items() if not files]
    if len(gone) == len(by_class):
        raise DatasetError(f"{train_dir}: none of the training images is readable (first: {unreadable[0][0]}: "
                           f"{unreadable[0][1]})")
    if gone:
        raise DatasetError(f"{train_dir / gone[0]}: no readable training image in this class folder")
    classes = list(by_class)
    index = {name: i for i, name in enumerate(classes)}
    train = [(str(p), index[name]) for name, files in by_class.items() for p in files]
    val = [(str(p), index[name]) for name, files in val_by_class.items() for p in files]
    if source == "fraction" and not val:
        source = None
    return ImageFolderData(classes, train, val, source, unreadable)


def load_eval_folders(
    root: str | Path, val_fraction: float | None = None, check_images: bool = True
) -> tuple[Path, dict[str, list[Path]], list[tuple[str, str]]]:
    """The images `pvtkit eval` evaluates: `(folder, class name -> files, unreadable)`.

    `root/val` (or `root/validation`) when there is one; otherwise `root`'s own class folders (or `root/train`'s),
    all of them, or with `val_fraction` the same stratified hold-out `pvtkit train --val-fraction` validated on.
    Class folders without images are left out with a warning.
    """
    train_dir, val_dir = find_split_folders(root)
    if val_dir is not None:
        directory, by_class = val_dir, _class_folders(val_dir)
    else:
        directory, by_class = train_dir, _class_folders(train_dir)
        if val_fraction:
            _, by_class = stratified_split(by_class, val_fraction, SPLIT_SEED)
    empty = [name for name, files in by_class.items() if not files]
    if empty:
        logger.warning("%s: %d class folder(s) hold no image to evaluate: %s", directory, len(empty), ", ".join(empty))
    by_class = {name: files for name, files in by_class.items() if files}
    if not by_class:
        raise DatasetError(f"{directory}: no image files in any class folder")
    (by_class,), unreadable = _drop_unreadable((by_class,), check_images)
    _warn_unreadable(unreadable)
    if not any(by_class.values()):
        first, reason = unreadable[0]
        raise DatasetError(f"{directory}: none of the images is readable (first: {first}: {reason})")
    return directory, {name: files for name, files in by_class.items() if files}, unreadable


def model_label_ids(class_names: Sequence[str], config: Any, where: str = "the data") -> list[int]:
    """The model's class index of each class folder, matched by name against `config.id2label`."""
    by_name = {name: int(i) for i, name in config.id2label.items()}
    missing = [name for name in class_names if name not in by_name]
    if missing:
        labels = list(config.id2label.values())
        shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
        raise DatasetError(
            f"class folder(s) {', '.join(repr(m) for m in missing[:5])} of {where} are not among the model's "
            f"{len(labels)} labels ({shown}); folders are matched to the model's id2label by name"
        )
    return [by_name[name] for name in class_names]


# ---- reading images --------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """Images and their labels, transformed on the fly; a file that cannot be decoded yields a zero image of
    weight 0 (and the reason), so a batch keeps its shape and the loss and counts leave it out.

    Items are addressed by index or by `(index, epoch)`; the transform gets `(image, index, epoch)` so random
    augmentation can be a pure function of them (the same for every worker, process count and resumption).
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[PIL.Image.Image, int, int], np.ndarray],
        shape: tuple[int, int, int],
    ) -> None:  # fmt: skip
        self.samples = list(samples)
        self.transform = transform
        self.shape = shape

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, float, int, str]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        path, label = self.samples[index]
        try:
            pixels = torch.from_numpy(np.ascontiguousarray(self.transform(load_image(path), index, epoch)))
        except (ImageLoadError, OSError) as e:
            return torch.zeros(self.shape), label, 0.0, index, str(e) or type(e).__name__
        return pixels, label, 1.0, index, ""


class ProcessorTransform:
    """Evaluation preprocessing: the model's image processor, nothing random."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: PIL.Image.Image, index: int, epoch: int) -> np.ndarray:
        return self.processor(image, return_tensors="np")["pixel_values"][0]


def processor_image_size(processor: Any) -> tuple[int, int]:
    """The fixed (height, width) a processor resizes to; batching needs one."""
    size = fixed_size(processor)
    if size is None:
        raise ValueError(f"{type(processor).__name__} resizes to {getattr(processor, 'size', None)}; evaluation "
                         "batches need a fixed {'height', 'width'} size (set the processor's size)")  # fmt: skip
    return size


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

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy, "top5_accuracy": self.top5_accuracy, "loss": self.loss,
            "num_images": self.num_images, "num_skipped": len(self.skipped), "per_class": self.per_class,
            "confusion_matrix": {"true": self.class_names, "predicted": self.confusion_labels,
                                 "counts": self.confusion},
            "skipped": self.skipped, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
        }  # fmt: skip


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` for bf16/fp16 compute, or nothing for fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
        self, model: torch.nn.Module, samples: Sequence[Sample], rows: Sequence[int], processor: Any, *,
        batch_size: int = 64, num_workers: int = 0, device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None, ctx: DistContext | None = None, progress: bool = True,
    ) -> None:  # fmt: skip
        self.model, self.rows, self.device = model, list(rows), torch.device(device)
        self.amp_dtype, self.ctx, self.progress = amp_dtype, ctx or DistContext(), progress
        self.num_labels = int(model.config.num_labels)
        self.samples = list(samples)
        mine = self.samples[self.ctx.rank :: self.ctx.world_size]
        self.dataset = ImageDataset(mine, ProcessorTransform(processor), (3, *processor_image_size(processor)))
        self.loader = DataLoader(
            self.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
            persistent_workers=num_workers > 0, pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # not the global RNG, which training's dropout draws from
        )  # fmt: skip

    @torch.no_grad()
    def run(self, desc: str = "eval") -> EvalResult:
        from tqdm import tqdm

        model, device, n = self.model, self.device, self.num_labels
        was_training = model.training
        model.eval()
        k = min(5, n)
        confusion = torch.zeros(n, n, dtype=torch.int64, device=device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-k hits, images
        skipped: dict[str, str] = {}
        start = time.perf_counter()
        bar = tqdm(total=len(self.samples), desc=desc, unit="img", leave=False, file=sys.stderr,
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True)  # fmt: skip
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
            num_images=count, per_class=per_class, class_names=names, confusion=columns.tolist(),
            confusion_labels=labels, skipped=skipped, seconds=seconds,
        )  # fmt: skip


def _prepare(model: Any, auto_class: Any, processor: Any, device: str | torch.device, revision: str | None,
             local_files_only: bool) -> tuple[Any, Any, str, torch.device, DistContext]:  # fmt: skip
    """What both evaluations start with: (the model loaded with `auto_class` if a path or Hub id was given, on the
    device; its processor, by default its own; its name for messages; the device; the process group)."""
    from .devices import resolve_device

    device = resolve_device(device)
    ctx = init_distributed(device)
    name = str(model) if isinstance(model, (str, Path)) else (
        getattr(model.config, "_name_or_path", "") or type(model).__name__)  # fmt: skip
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

    model, processor, name, device, ctx = _prepare(model, AutoModelForImageClassification, processor, device,
                                                   revision, local_files_only)  # fmt: skip
    directory, by_class, unreadable = load_eval_folders(data, val_fraction)
    classes = list(by_class)
    ids = model_label_ids(classes, model.config, str(directory))
    samples = [(str(p), i) for i, files in zip(ids, by_class.values()) for p in files]
    amp = parse_dtype(dtype)
    evaluator = Evaluator(model, samples, ids, processor, batch_size=batch_size, num_workers=num_workers,
                          device=device, amp_dtype=amp, ctx=ctx, progress=progress)  # fmt: skip
    result = evaluator.run()
    result.skipped = {**dict(unreadable), **result.skipped}
    if confusion is not None and ctx.is_main:
        title = f"{name}: accuracy {result.accuracy:.1%} on {result.num_images} images"
        draw_confusion_matrix(result.confusion, result.class_names, result.confusion_labels, confusion, title)
    logger.info("evaluated %s on %s: accuracy %.4f", name, directory, result.accuracy)
    return result


# ---- the confusion matrix picture ------------------------------------------------------------------------------


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def draw_confusion_matrix(
    counts: Sequence[Sequence[int]], true_labels: Sequence[str], predicted_labels: Sequence[str],
    path: str | Path, title: str = "", show: str = "count",
) -> None:  # fmt: skip
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


# ---- semantic segmentation: the data, the metric, the evaluation loop ------------------------------------------

IGNORE_INDEX = 255  # mmsegmentation's and transformers' convention for "no label here"
LABEL_FILES = ("labels.json", "classes.txt")
SegSample = tuple[str, str]  # (image path, mask path)


class LayoutError(DatasetError):
    """A segmentation dataset folder in no layout pvtkit recognises (the CLI's exit status 2: a usage mistake)."""


@dataclass
class SegmentationData:
    """A segmentation dataset found on disk and checked: every mask read once, its values and size compared with
    its image's.

    Attributes:
        classes: Class names, index i for mask value i (after `reduce_labels`).
        train / val: `(image, mask)` path pairs; `val` is empty when there is no validation set.
        val_source: `"folder"`, `"fraction"` or None, as for classification.
        layout: Which layout was recognised (`imagefolder.SEGMENTATION_LAYOUTS`).
        reduce_labels: Whether mask value 0 is "other" (ignored) and k means class k - 1 (ADE20K's convention).
        unreadable: Pairs left out because the image or the mask cannot be decoded, with the reason.
    """

    classes: list[str]
    train: list[SegSample]
    val: list[SegSample]
    val_source: str | None
    layout: str
    reduce_labels: bool = False
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, list[int]]:
        """The fingerprint a resumed run must match: the classes and the number of pairs of each split."""
        return {"classes": [len(self.classes)], "pairs": [len(self.train), len(self.val)]}


def read_class_names(root: Path) -> list[str] | None:
    """Class names from `root/labels.json` (a list of names, or `{"0": "background", ...}` as in `id2label`) or
    `root/classes.txt` (one name per line), or None when neither exists.

    Raises:
        DatasetError: The file is there but is not such a list (the message names it).
    """
    path = root / "labels.json"
    if path.is_file():
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("id2label", data)
                ids = sorted(int(k) for k in data)
                if ids != list(range(len(ids))):
                    raise ValueError(f"ids {ids[:5]}... are not 0..{len(ids) - 1}")
                data = [data[str(i)] if str(i) in data else data[i] for i in ids]
            if not isinstance(data, list) or not all(isinstance(n, (str, int)) for n in data):
                raise ValueError("not a list of names")
        except (ValueError, KeyError) as e:
            raise DatasetError(f"{path}: expected a JSON list of class names or an object {{\"0\": name, ...}} with "
                               f"ids 0..N-1 ({e})") from None  # fmt: skip
        return [str(n) for n in data]
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{path}: holds no class names (expected one per line)")
        return names
    return None


def read_mask(path: str | Path, reduce: bool = False) -> np.ndarray:
    """A mask file as `(H, W)` int64 class indices (mode L, P, I or I;16; 255 = ignored), ADE20K-reduced if asked.

    Raises:
        ImageLoadError: The file cannot be decoded or is not a one-band image of class indices.
    """
    from .processing import label_array, reduce_labels

    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            array = label_array(opened, name=f"mask {path}")
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageLoadError):
            raise
        raise ImageLoadError(f"mask {path}: cannot be decoded ({e})") from e
    return reduce_labels(array) if reduce else array


@dataclass
class _MaskCheck:
    size_mismatch: str | None = None
    unreadable: str | None = None
    max_value: int = -1
    out_of_range: int | None = None  # the first value >= the number of classes (when known) that is not 255
    dominant: int = -1  # the most frequent labelled class (for the stratified hold-out)


def _check_pair(image: Path, mask: Path, reduce: bool, num_classes: int | None) -> _MaskCheck:
    check = _MaskCheck()
    try:
        with PIL.Image.open(image) as opened:
            size = opened.size
        labels = read_mask(mask, reduce)
    except (OSError, SyntaxError, ValueError) as e:
        check.unreadable = str(e) or type(e).__name__
        return check
    if (labels.shape[1], labels.shape[0]) != size:
        check.size_mismatch = f"mask {labels.shape[1]}x{labels.shape[0]}, image {size[0]}x{size[1]} (width x height)"
        return check
    counts = np.bincount(labels[labels != IGNORE_INDEX].ravel().clip(0), minlength=1)
    if (labels < 0).any():
        check.out_of_range = int(labels.min())
    present = np.flatnonzero(counts)
    if len(present):
        check.max_value = int(present[-1])
        check.dominant = int(counts.argmax())
        if num_classes is not None and check.max_value >= num_classes and check.out_of_range is None:
            check.out_of_range = int(present[present >= num_classes][0])
    return check


def _listed(items: Sequence[str], limit: int = 10) -> str:
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "".join(f"\n  {item}" for item in items[:limit]) + more


def load_segmentation_data(
    root: str | Path, val_fraction: float = 0.1, reduce_labels: bool = False, progress: bool = False,
    workers: int = 8,
) -> SegmentationData:  # fmt: skip
    """The image/mask pairs of a segmentation dataset, every mask read and checked (`pvtkit train` / `eval`).

    Class names come from `root/labels.json` or `root/classes.txt`, else they are the indices 0..max found. Without
    a validation folder, `val_fraction` of the pairs is held out, stratified by each mask's most frequent class
    and the same every time.

    Raises:
        FileNotFoundError: `root` does not exist.
        LayoutError: No known layout.
        DatasetError: Images without masks or masks without images, masks of another size than their image,
            values that are no class (>= the number of classes, not 255), fewer than two classes, an empty split,
            or nothing readable; each listed by file name.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from .imagefolder import find_segmentation_layout

    root = Path(root)
    try:
        layout = find_segmentation_layout(root)
    except FileNotFoundError:
        raise
    except ValueError as e:
        raise LayoutError(str(e)) from None
    if layout.lone_images or layout.lone_masks:
        parts = []
        if layout.lone_images:
            parts.append(f"{len(layout.lone_images)} image(s) without a mask:{_listed([str(p) for p in layout.lone_images])}")
        if layout.lone_masks:
            parts.append(f"{len(layout.lone_masks)} mask(s) without an image:{_listed([str(p) for p in layout.lone_masks])}")
        raise DatasetError(f"{root} ({layout.name} layout): every image needs a mask of the same name and the "
                           "reverse; " + "; ".join(parts))  # fmt: skip
    if not layout.train:
        raise DatasetError(f"{root} ({layout.name} layout): the training split is empty (no image/mask pairs in "
                           f"{layout.folders[0]} and {layout.folders[1]})")  # fmt: skip
    if layout.val is not None and not layout.val:
        raise DatasetError(f"{root} ({layout.name} layout): the validation split is empty (no image/mask pairs in "
                           f"{layout.folders[2]} and {layout.folders[3]}); add pairs or remove the folders")  # fmt: skip
    names = read_class_names(root)
    pairs = layout.train + (layout.val or [])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda p: _check_pair(p[0], p[1], reduce_labels, len(names) if names else None), pairs)
        checks = list(tqdm(jobs, total=len(pairs), desc="checking masks", unit="mask", leave=False, file=sys.stderr,
                           disable=not progress or len(pairs) < 200))  # fmt: skip
    mismatched = [f"{m}: {c.size_mismatch}" for (_, m), c in zip(pairs, checks) if c.size_mismatch]
    if mismatched:
        raise DatasetError(f"{root}: {len(mismatched)} mask(s) differ in size from their image (a mask labels each "
                           f"pixel of its image):{_listed(mismatched)}")  # fmt: skip
    unreadable = [(f"{i} / {m}", c.unreadable) for (i, m), c in zip(pairs, checks) if c.unreadable]
    top = max((c.max_value for c in checks), default=-1)
    count = len(names) if names else top + 1
    expected = (f"class indices 0..{count - 1} ({'from ' + next(str(root / f) for f in LABEL_FILES if (root / f).is_file()) if names else 'found in the masks'})"
                f" or {IGNORE_INDEX} (ignored)")  # fmt: skip
    bad = [f"{m}: value {c.out_of_range}" for (_, m), c in zip(pairs, checks) if c.out_of_range is not None]
    if bad:
        hint = " (ADE20K-style masks where 0 means 'other' need --reduce-labels)" if names and not reduce_labels else ""
        raise DatasetError(f"{root}: {len(bad)} mask(s) hold values that are no class; expected {expected}{hint}:"
                           f"{_listed(bad)}")  # fmt: skip
    if count < 2:
        found = "only class 0" if count == 1 else "no labelled pixel at all"
        raise DatasetError(f"{root}: the masks hold {found}; segmentation needs at least two classes (e.g. background "
                           "and the object); list them in labels.json or classes.txt if the data lacks one")  # fmt: skip
    ok = {pair: c for pair, c in zip(pairs, checks) if not c.unreadable}
    _warn_unreadable(unreadable, "pair")
    train = [p for p in layout.train if p in ok]
    if layout.val is not None:
        val, source = [p for p in layout.val if p in ok], "folder"
    else:
        by_class: dict[str, list[Path]] = {}
        partner = dict(train)
        for image, _ in train:
            by_class.setdefault(str(ok[(image, partner[image])].dominant), []).append(image)
        kept, held = stratified_split(by_class, val_fraction, SPLIT_SEED)
        held_set = {p for files in held.values() for p in files}
        val = [(i, m) for i, m in train if i in held_set]
        train = [(i, m) for i, m in train if i not in held_set]
        source = "fraction" if val else None
    if not train:
        raise DatasetError(f"{root}: none of the training pairs is readable (first: {unreadable[0][0]}: "
                           f"{unreadable[0][1]})")  # fmt: skip
    classes = names or [str(i) for i in range(count)]
    return SegmentationData(classes, [(str(i), str(m)) for i, m in train], [(str(i), str(m)) for i, m in val],
                            source, layout.name, reduce_labels, unreadable)  # fmt: skip


def load_eval_segmentation(
    root: str | Path, val_fraction: float | None = None, reduce_labels: bool = False, progress: bool = False
) -> tuple[SegmentationData, list[SegSample]]:
    """The pairs `pvtkit eval` evaluates: the validation split when there is one, else the hold-out of
    `val_fraction` (the one training validated on), else every pair."""
    data = load_segmentation_data(root, val_fraction or 0.0, reduce_labels, progress)
    if data.val_source == "folder" or val_fraction:
        return data, data.val
    return data, data.train


class SegmentationMetric:
    """Intersection and union per class, accumulated over a whole data set the way mmsegmentation and the
    `evaluate` library's `mean_iou` count them (never averaged per batch): a `num_classes`² confusion matrix of
    pixels (rows true, columns predicted) over the pixels whose label is not `ignore_index`."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: Any = "cpu") -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Add `predicted` class indices against `labels` (same shape)."""
        if predicted.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predicted.shape)} and labels {tuple(labels.shape)} differ in shape")
        k = self.num_classes
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < k)
        index = labels[valid].long() * k + predicted[valid].long()
        self.confusion += torch.bincount(index, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Any]:
        """`mean_iou`, `mean_accuracy`, `overall_accuracy` and per class `iou`, `accuracy` (NaN for a class that
        neither the labels nor the predictions hold; left out of the means)."""
        return iou_from_confusion(self.confusion.cpu().numpy())


def iou_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
    """The segmentation metrics of a pixel confusion matrix (rows true, columns predicted)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    label_area, predicted_area = confusion.sum(1), confusion.sum(0)
    union = label_area + predicted_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(label_area > 0, intersection / label_area, np.nan)
    total = label_area.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan,
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else math.nan,
        "overall_accuracy": float(intersection.sum() / total) if total else math.nan,
        "per_category_iou": iou, "per_category_accuracy": accuracy,
        "label_area": label_area.astype(np.int64), "predicted_area": predicted_area.astype(np.int64),
    }  # fmt: skip


class _PairDataset(Dataset):
    """Validation pairs: the image as the model takes it (`transform`) and the mask at the image's own size; a pair
    that cannot be decoded yields `(None, None, index, reason)`."""

    def __init__(self, samples: Sequence[SegSample], transform: Callable[[PIL.Image.Image], np.ndarray],
                 reduce: bool) -> None:  # fmt: skip
        self.samples, self.transform, self.reduce = list(samples), transform, reduce

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any, int, str]:
        image_path, mask_path = self.samples[index]
        try:
            mask = read_mask(mask_path, self.reduce)
            pixels = self.transform(load_image(image_path))
        except (ImageLoadError, OSError) as e:
            return None, None, index, str(e) or type(e).__name__
        return torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(mask), index, ""


def _as_lists(batch: Sequence[tuple]) -> tuple[list, ...]:
    return tuple(list(column) for column in zip(*batch))


class SlideTransform:
    """Sliding-window preprocessing: the image resized (aspect kept) so its short side is the window's, then
    rescaled and normalised by the processor."""

    def __init__(self, processor: Any, window: tuple[int, int]) -> None:
        self.processor, self.window = processor, window

    def __call__(self, image: PIL.Image.Image) -> np.ndarray:
        scale = min(self.window) / min(image.size)
        size = (max(self.window[1], round(image.width * scale)), max(self.window[0], round(image.height * scale)))
        image = image.resize(size, resample=int(self.processor.resample))
        return self.processor(image, do_resize=False, return_tensors="np")["pixel_values"][0]


@dataclass
class SegmentationEvalResult:
    """What `evaluate_segmentation` measured (`mean_iou` etc. as `iou_from_confusion`, over `num_images`).

    Attributes:
        per_class: Class name -> `{"iou", "accuracy", "pixels", "predicted_pixels"}` (IoU/accuracy None where the
            class is in neither the labels nor the predictions / not in the labels).
        confusion: Pixel counts, rows true class, columns predicted, in `class_names` order.
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

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v is None or math.isnan(v) else v

        return {
            "task": "semantic-segmentation", "mode": self.mode, "mean_iou": clean(self.mean_iou),
            "mean_accuracy": clean(self.mean_accuracy), "overall_accuracy": clean(self.overall_accuracy),
            "loss": clean(self.loss), "num_images": self.num_images, "num_skipped": len(self.skipped),
            "per_class": self.per_class,
            "confusion_matrix": {"true": self.class_names, "predicted": self.class_names, "counts": self.confusion},
            "skipped": self.skipped, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }  # fmt: skip


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
    """

    def __init__(
        self, model: torch.nn.Module, samples: Sequence[SegSample], processor: Any, *, mode: str = "whole",
        reduce_labels: bool = False, batch_size: int = 8, num_workers: int = 0, device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None, ctx: DistContext | None = None, progress: bool = True,
    ) -> None:  # fmt: skip
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        self.model, self.mode, self.device = model, mode, torch.device(device)
        self.amp_dtype, self.ctx, self.progress, self.batch_size = amp_dtype, ctx or DistContext(), progress, batch_size
        self.num_labels = int(model.config.num_labels)
        self.samples = list(samples)
        self.window = processor_image_size(processor)
        transform = ProcessorTransform(processor) if mode == "whole" else SlideTransform(processor, self.window)
        mine = self.samples[self.ctx.rank :: self.ctx.world_size]
        self.dataset = _PairDataset(mine, lambda image: transform(image, 0, 0) if mode == "whole" else transform(image),
                                    reduce_labels)  # fmt: skip
        self.loader = DataLoader(
            self.dataset, batch_size=batch_size if mode == "whole" else 1, shuffle=False, num_workers=num_workers,
            persistent_workers=num_workers > 0, collate_fn=_as_lists,
            generator=torch.Generator(),  # not the global RNG, which training's dropout draws from
        )  # fmt: skip

    def _logits(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        with autocast_context(self.device, self.amp_dtype):
            if self.mode == "whole":
                logits = self.model(pixel_values=torch.stack(pixels).to(self.device)).logits.float()
                return [logits[i : i + 1] for i in range(len(pixels))]
            from .pipeline import sliding_window_logits

            stride = (max(self.window[0] * 2 // 3, 1), max(self.window[1] * 2 // 3, 1))
            return [sliding_window_logits(self.model, p[None].to(self.device), self.window, stride, self.batch_size)
                    for p in pixels]  # fmt: skip

    @torch.no_grad()
    def run(self, desc: str = "eval") -> SegmentationEvalResult:
        from tqdm import tqdm

        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        metric = SegmentationMetric(self.num_labels, device=device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, labelled pixels, images
        skipped: dict[str, str] = {}
        start = time.perf_counter()
        bar = tqdm(total=len(self.samples), desc=desc, unit="img", leave=False, file=sys.stderr,
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True)  # fmt: skip
        for pixels, masks, indices, reasons in self.loader:
            for i, reason in zip(indices, reasons):
                if reason:
                    skipped[" / ".join(self.dataset.samples[i])] = reason
            good = [k for k, reason in enumerate(reasons) if not reason]
            if good:
                logits = self._logits([pixels[k] for k in good])
                for k, scores in zip(good, logits):
                    mask = masks[k].to(device)
                    up = F.interpolate(scores, size=mask.shape, mode="bilinear", align_corners=False)
                    metric.update(up.argmax(1)[0], mask)
                    target = torch.where(mask < self.num_labels, mask, IGNORE_INDEX)
                    loss = F.cross_entropy(up, target[None], ignore_index=IGNORE_INDEX, reduction="sum")
                    valid = (target != IGNORE_INDEX).sum()
                    sums += torch.stack((loss.double(), valid.double(), torch.ones((), dtype=torch.float64,
                                                                                    device=device)))  # fmt: skip
            bar.update(len(indices) * self.ctx.world_size)
        bar.close()
        self.ctx.all_reduce_sum(metric.confusion)
        self.ctx.all_reduce_sum(sums)
        for part in self.ctx.gather_objects(skipped):
            skipped.update(part)
        model.train(was_training)
        return self._result(metric, sums.cpu().tolist(), skipped, time.perf_counter() - start)

    def _result(self, metric: SegmentationMetric, sums: list[float], skipped: dict[str, str],
                seconds: float) -> SegmentationEvalResult:  # fmt: skip
        id2label = self.model.config.id2label
        names = [str(id2label.get(i, i)) for i in range(self.num_labels)]
        m = metric.compute()
        per_class = {}
        for i, name in enumerate(names):
            iou, accuracy = m["per_category_iou"][i], m["per_category_accuracy"][i]
            per_class[name] = {"iou": None if np.isnan(iou) else float(iou),
                               "accuracy": None if np.isnan(accuracy) else float(accuracy),
                               "pixels": int(m["label_area"][i]), "predicted_pixels": int(m["predicted_area"][i])}  # fmt: skip
        loss_sum, pixels, count = sums
        return SegmentationEvalResult(
            mean_iou=m["mean_iou"], mean_accuracy=m["mean_accuracy"], overall_accuracy=m["overall_accuracy"],
            loss=loss_sum / pixels if pixels else math.nan, num_images=int(count), per_class=per_class,
            class_names=names, confusion=metric.confusion.cpu().tolist(), mode=self.mode, skipped=skipped,
            seconds=seconds,
        )  # fmt: skip


def evaluate_segmentation(
    model: Any,
    data: str | Path,
    *,
    processor: Any = None,
    val_fraction: float | None = None,
    reduce_labels: bool | None = None,
    mode: str = "whole",
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
    accuracy, mean class accuracy, the pixel confusion matrix.

    Args:
        model: A segmentation model, or where to load one (Hub id, directory, weights file).
        data: A dataset in one of `imagefolder.SEGMENTATION_LAYOUTS`; its validation split when it has one.
        processor: The image processor; by default the model's own.
        val_fraction: Evaluate the hold-out `pvtkit train --val-fraction` validated on.
        reduce_labels: Read the masks with ADE20K's convention (default: the processor's `do_reduce_labels`).
        mode: `"whole"` or `"slide"` (see `SegmentationEvaluator`).
        confusion: Also draw the confusion matrix (shares of each true class's pixels) into this PNG.

    Returns:
        A `SegmentationEvalResult` (the same on every process under torchrun).
    """
    from .auto import AutoModelForSemanticSegmentation
    from .dtypes import parse_dtype

    model, processor, name, device, ctx = _prepare(model, AutoModelForSemanticSegmentation, processor, device,
                                                   revision, local_files_only)  # fmt: skip
    if reduce_labels is None:
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    found, samples = load_eval_segmentation(data, val_fraction, reduce_labels, progress and ctx.is_main)
    if len(found.classes) > model.config.num_labels:
        raise DatasetError(f"{data}: the masks hold {len(found.classes)} classes, the model predicts "
                           f"{model.config.num_labels}; expected masks with values below {model.config.num_labels} "
                           f"(or {IGNORE_INDEX})" + ("" if reduce_labels else "; ADE20K-style masks need reduce_labels"))  # fmt: skip
    evaluator = SegmentationEvaluator(model, samples, processor, mode=mode, reduce_labels=reduce_labels,
                                      batch_size=batch_size, num_workers=num_workers, device=device,
                                      amp_dtype=parse_dtype(dtype), ctx=ctx, progress=progress)  # fmt: skip
    result = evaluator.run()
    result.skipped = {**dict(found.unreadable), **result.skipped}
    if confusion is not None and ctx.is_main:
        title = f"{name}: mIoU {result.mean_iou:.1%} on {result.num_images} images (share of each true class's pixels)"
        draw_confusion_matrix(result.confusion, result.class_names, result.class_names, confusion, title,
                              show="share")  # fmt: skip
    logger.info("evaluated %s on %s: mIoU %.4f", name, data, result.mean_iou)
    return result
