"""Evaluating an image classifier on class folders: accuracy, top-5, per-class accuracy, a confusion matrix.

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


def _warn_unreadable(unreadable: list[tuple[str, str]]) -> None:
    if not unreadable:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in unreadable[:5])
    more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    logger.warning("skipping %d unreadable image(s): %s%s", len(unreadable), shown, more)


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
    from .distributed import auto_device
    from .dtypes import parse_dtype

    device = auto_device() if device == "auto" else torch.device(device)
    ctx = init_distributed(device)
    if isinstance(model, (str, Path)):
        name = str(model)
    else:
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    if isinstance(model, (str, Path)):
        from .auto import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(
            model, revision=revision, local_files_only=local_files_only
        )
        if processor is None:
            processor = image_processor_for(name, model, revision=revision, local_files_only=local_files_only)
    if processor is None:
        processor = default_image_processor(model)
    model.to(device)
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
    path: str | Path, title: str = "",
) -> None:  # fmt: skip
    """Draw a confusion matrix as a PNG with PIL: rows are true classes, columns predicted ones, each cell shaded
    by its share of the row (so classes of any size compare) and labelled with its count when there is room.
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
                draw.text((x + cell // 2, y + cell // 2), str(matrix[r, c]), fill=ink, font=font, anchor="mm")
    for c, name in enumerate(col_names):  # column names run upwards
        label = PIL.Image.new("RGB", (width(name) + 4, cell), "white")
        ImageDraw.Draw(label).text((2, cell // 2), name, fill="black", font=font, anchor="lm")
        label = label.rotate(90, expand=True)
        image.paste(label, (left + c * cell, top - 4 - label.height))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
