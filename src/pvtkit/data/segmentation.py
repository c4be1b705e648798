"""Segmentation data: image/mask pairs in one of `folders.SEGMENTATION_LAYOUTS`, every mask read and checked, and the
datasets that decode them for training and evaluation."""

from __future__ import annotations

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
    IGNORE_INDEX,
    LABEL_FILES,
    SPLIT_SEED,
    DatasetError,
    LayoutError,
    listed,
    read_class_names,
    stratified_split,
    warn_unreadable,
)

SegSample = tuple[str, str]  # (image path, mask path)


@dataclass
class SegmentationData:
    """A segmentation dataset found on disk and checked: every mask read once, its values and size compared with
    its image's.

    Attributes:
        classes: Class names, index i for mask value i (after `reduce_labels`).
        train / val: `(image, mask)` path pairs; `val` is empty when there is no validation set.
        val_source: `"folder"`, `"fraction"` or None, as for classification.
        layout: Which layout was recognised (`data.folders.SEGMENTATION_LAYOUTS`).
        reduce_labels: Whether mask value 0 is "other" (ignored) and k means class k - 1 (ADE20K's convention).
        unreadable: Pairs left out because the image or the mask cannot be decoded, with the reason.
        class_pixels: Labelled pixels of each class over the training masks (counted when they were checked; what
            `--class-weights auto` weighs by).
    """

    classes: list[str]
    train: list[SegSample]
    val: list[SegSample]
    val_source: str | None
    layout: str
    reduce_labels: bool = False
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    class_pixels: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, list[int]]:
        """The fingerprint a resumed run must match: the classes and the number of pairs of each split."""
        return {"classes": [len(self.classes)], "pairs": [len(self.train), len(self.val)]}


def read_mask(path: str | Path, reduce: bool = False) -> np.ndarray:
    """A mask file as `(H, W)` int64 class indices (mode L, P, I or I;16; 255 = ignored), ADE20K-reduced if asked.

    Raises:
        ImageLoadError: The file cannot be decoded or is not a one-band image of class indices.
    """
    from ..processing import label_array, reduce_labels

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
    stats: Any = None  # the label doctor's `PairStats` of the pair
    pixels: Any = None  # labelled pixels per class value (np.bincount)


def _check_pair(image: Path, mask: Path, reduce: bool, num_classes: int | None) -> _MaskCheck:
    from .doctor import pair_stats  # one read of the pair serves these checks and the label doctor's

    check = _MaskCheck()
    check.stats = stats = pair_stats(image, mask)
    if stats.error is not None:
        check.unreadable = stats.error
        return check
    if stats.mask_size != stats.image_size:
        (w, h), (image_w, image_h) = stats.mask_size, stats.image_size
        check.size_mismatch = f"mask {w}x{h}, image {image_w}x{image_h} (width x height)"
        return check
    values, pixels = stats.histogram(reduce)  # the mask's values as training sees them, and the pixels of each
    labelled = values != IGNORE_INDEX
    counts = np.bincount(values[labelled].clip(0), weights=pixels[labelled], minlength=1).astype(np.int64)
    check.pixels = counts
    if len(values) and values[0] < 0:
        check.out_of_range = int(values[0])
    present = np.flatnonzero(counts)
    if len(present):
        check.max_value = int(present[-1])
        check.dominant = int(counts.argmax())
        if num_classes is not None and check.max_value >= num_classes and check.out_of_range is None:
            check.out_of_range = int(present[present >= num_classes][0])
    return check


def load_segmentation_data(
    root: str | Path,
    val_fraction: float = 0.1,
    reduce_labels: bool = False,
    progress: bool = False,
    workers: int = 8,
    label_checks: bool = False,
) -> SegmentationData:
    """The image/mask pairs of a segmentation dataset, every mask read and checked (`pvtkit train` / `eval`).

    With `label_checks` (`pvtkit train`'s default), the label doctor's errors (`data.doctor`: 0/255 binary masks,
    colour masks, ADE20K-style masks without `reduce_labels`, ...) refuse the data too, each with its fix, from the
    same read of the masks.

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
    from .folders import find_segmentation_layout, threaded_map

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
            parts.append(
                f"{len(layout.lone_images)} image(s) without a mask:{listed([str(p) for p in layout.lone_images])}"
            )
        if layout.lone_masks:
            parts.append(
                f"{len(layout.lone_masks)} mask(s) without an image:{listed([str(p) for p in layout.lone_masks])}"
            )
        raise DatasetError(
            f"{root} ({layout.name} layout): every image needs a mask of the same name and the "
            "reverse; " + "; ".join(parts)
        )
    if not layout.train:
        raise DatasetError(
            f"{root} ({layout.name} layout): the training split is empty (no image/mask pairs in "
            f"{layout.folders[0]} and {layout.folders[1]})"
        )
    if layout.val is not None and not layout.val:
        raise DatasetError(
            f"{root} ({layout.name} layout): the validation split is empty (no image/mask pairs in "
            f"{layout.folders[2]} and {layout.folders[3]}); add pairs or remove the folders"
        )
    names = read_class_names(root)
    pairs = layout.train + (layout.val or [])
    classes = len(names) if names else None
    checks = threaded_map(
        lambda p: _check_pair(p[0], p[1], reduce_labels, classes),
        pairs,
        workers,
        "checking masks",
        not progress or len(pairs) < 200,
    )
    mismatched = [f"{m}: {c.size_mismatch}" for (_, m), c in zip(pairs, checks) if c.size_mismatch]
    if mismatched:
        raise DatasetError(
            f"{root}: {len(mismatched)} mask(s) differ in size from their image (a mask labels each "
            f"pixel of its image):{listed(mismatched)}"
        )
    if label_checks:
        from .doctor import refusal, training_blockers

        source = next((f for f in LABEL_FILES if (root / f).is_file()), "the masks") if names else "the masks"
        blockers = training_blockers([c.stats for c in checks], names, source, reduce_labels)
        if blockers:
            raise refusal(root, blockers)
    unreadable = [(f"{i} / {m}", c.unreadable) for (i, m), c in zip(pairs, checks) if c.unreadable]
    top = max((c.max_value for c in checks), default=-1)
    count = len(names) if names else top + 1
    expected = (
        f"class indices 0..{count - 1} ({'from ' + next(str(root / f) for f in LABEL_FILES if (root / f).is_file()) if names else 'found in the masks'})"
        f" or {IGNORE_INDEX} (ignored)"
    )
    bad = [f"{m}: value {c.out_of_range}" for (_, m), c in zip(pairs, checks) if c.out_of_range is not None]
    if bad:
        hint = " (ADE20K-style masks where 0 means 'other' need --reduce-labels)" if names and not reduce_labels else ""
        raise DatasetError(
            f"{root}: {len(bad)} mask(s) hold values that are no class; expected {expected}{hint}:{listed(bad)}"
        )
    if count < 2:
        found = "only class 0" if count == 1 else "no labelled pixel at all"
        raise DatasetError(
            f"{root}: the masks hold {found}; segmentation needs at least two classes (e.g. background "
            "and the object); list them in labels.json or classes.txt if the data lacks one"
        )
    ok = {pair: c for pair, c in zip(pairs, checks) if not c.unreadable}
    warn_unreadable(unreadable, "pair")
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
        raise DatasetError(
            f"{root}: none of the training pairs is readable (first: {unreadable[0][0]}: {unreadable[0][1]})"
        )
    classes = names or [str(i) for i in range(count)]
    class_pixels = np.zeros(len(classes), dtype=np.int64)
    for pair in train:
        found = ok[pair].pixels[: len(classes)]
        class_pixels[: len(found)] += found
    return SegmentationData(
        classes,
        [(str(i), str(m)) for i, m in train],
        [(str(i), str(m)) for i, m in val],
        source,
        layout.name,
        reduce_labels,
        unreadable,
        class_pixels.tolist(),
    )


def load_eval_segmentation(
    root: str | Path, val_fraction: float | None = None, reduce_labels: bool = False, progress: bool = False
) -> tuple[SegmentationData, list[SegSample]]:
    """The pairs `pvtkit eval` evaluates: the validation split when there is one, else the hold-out of
    `val_fraction` (the one training validated on), else every pair."""
    data = load_segmentation_data(root, val_fraction or 0.0, reduce_labels, progress)
    if data.val_source == "folder" or val_fraction:
        return data, data.val
    return data, data.train


class EvalPairDataset(Dataset):
    """Validation pairs: the image as the model takes it (`transform`) and the mask at the image's own size; a pair
    that cannot be decoded yields `(None, None, 0.0, index, reason)`."""

    def __init__(
        self, samples: Sequence[SegSample], transform: Callable[[PIL.Image.Image], np.ndarray], reduce: bool
    ) -> None:
        self.samples, self.transform, self.reduce = list(samples), transform, reduce

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any, float, int, str]:
        image_path, mask_path = self.samples[index]
        try:
            mask = read_mask(mask_path, self.reduce)
            pixels = self.transform(load_image(image_path))
        except (ImageLoadError, OSError) as e:
            return None, None, 0.0, index, str(e) or type(e).__name__
        return torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(mask), 1.0, index, ""


def as_lists(batch: Sequence[tuple]) -> tuple[list, ...]:
    return tuple(list(column) for column in zip(*batch))


class PairDataset(torch.utils.data.Dataset):
    """Training pairs, transformed together by `(image, mask, index, epoch)`; a pair that cannot be decoded yields a
    zero image and an all-ignored mask of weight 0 (and the reason), so a batch keeps its shape and the loss and
    counts leave it out."""

    def __init__(
        self, samples: list[tuple[str, str]], transform: Callable[..., tuple[np.ndarray, np.ndarray]], reduce: bool
    ) -> None:
        self.samples, self.transform, self.reduce = samples, transform, reduce

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float, int, str]:
        index, epoch = key
        image_path, mask_path = self.samples[index]
        S = self.transform.size
        try:
            pixels, target = self.transform(load_image(image_path), read_mask(mask_path, self.reduce), index, epoch)
        except (ImageLoadError, OSError) as e:
            return (
                torch.zeros(3, S, S),
                torch.full((S, S), IGNORE_INDEX, dtype=torch.int64),
                0.0,
                index,
                str(e) or type(e).__name__,
            )
        return torch.from_numpy(pixels), torch.from_numpy(np.ascontiguousarray(target)), 1.0, index, ""
