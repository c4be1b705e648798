"""Classification data: class folders (torchvision's `ImageFolder` layout) found, split and checked, and the dataset
that decodes them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from ..processing import ImageLoadError, load_image
from .folders import (
    MASK_FOLDER_NAMES,
    SPLIT_SEED,
    DatasetError,
    find_split_folders,
    scan_class_folders,
    stratified_split,
    unreadable_images,
    warn_unreadable,
)

logger = logging.getLogger("pvtkit")


Sample = tuple[str, int]  # (image path, class index)


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


# Folder names of the segmentation (and depth) layouts: "classes" named so are images beside their masks.
SEGMENTATION_FOLDER_NAMES = ("images", *MASK_FOLDER_NAMES, "depths", "depth")


def _refuse_segmentation_folders(directory: Path, by_class: dict[str, list[Path]]) -> None:
    """A classifier trained on `images/` against `masks/` would learn to tell photos from masks and report a
    perfect accuracy: refuse class folders that are an images folder beside a mask (or depth) folder."""
    names = set(by_class)
    if "images" in names and names & set(SEGMENTATION_FOLDER_NAMES[1:]):
        found = ", ".join(f"{n}/" for n in sorted(names & set(SEGMENTATION_FOLDER_NAMES)))
        raise DatasetError(
            f"{directory}: its class folders {found} look like segmentation data (images and their masks), not "
            "one folder of images per class; train a segmentation model with --task segmentation (depth maps: "
            "--task depth), or rename the folders if these really are the classes"
        )


def _drop_unreadable(
    parts: Sequence[dict[str, list[Path]]], check: bool
) -> tuple[list[dict[str, list[Path]]], list[tuple[str, str]]]:
    if not check:
        return list(parts), []
    bad = dict(unreadable_images([p for part in parts for files in part.values() for p in files]))
    kept = [{name: [p for p in files if p not in bad] for name, files in part.items()} for part in parts]
    return kept, [(str(p), reason) for p, reason in bad.items()]


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
    _refuse_segmentation_folders(train_dir, by_class)
    if len(by_class) < 2:
        raise DatasetError(
            f"{train_dir}: only one class folder ({next(iter(by_class))}); a classifier needs at least two"
        )
    empty = [name for name, files in by_class.items() if not files]
    if empty:
        more = f" ({len(empty)} such folders)" if len(empty) > 1 else ""
        raise DatasetError(
            f"{train_dir / empty[0]}: class folder holds no image files; every class needs images "
            f"(remove the folder or add images){more}"
        )
    if val_dir is not None:
        val_by_class = scan_class_folders(val_dir)
        extra = [name for name in val_by_class if name not in by_class]
        if extra:
            raise DatasetError(
                f"{val_dir / extra[0]}: a validation class that {train_dir} has no folder for; "
                f"validation classes must be training classes"
            )
        source: str | None = "folder"
    else:
        by_class, val_by_class = stratified_split(by_class, val_fraction, SPLIT_SEED)
        source = "fraction" if val_fraction > 0 else None
    (by_class, val_by_class), unreadable = _drop_unreadable((by_class, val_by_class), check_images)
    warn_unreadable(unreadable)
    gone = [name for name, files in by_class.items() if not files]
    if len(gone) == len(by_class):
        raise DatasetError(
            f"{train_dir}: none of the training images is readable (first: {unreadable[0][0]}: {unreadable[0][1]})"
        )
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
    warn_unreadable(unreadable)
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


class ImageDataset(Dataset):
    """Images and their labels, transformed on the fly; a file that cannot be decoded yields a zero image of
    weight 0 (and the reason), so a batch keeps its shape and the loss and counts leave it out.

    Items are addressed by index or by `(index, epoch)`; the transform gets `(image, index, epoch)` so random
    augmentation can be a pure function of them (the same for every worker, process count and resumption).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[PIL.Image.Image, int, int], np.ndarray],
        shape: tuple[int, int, int],
    ) -> None:
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
