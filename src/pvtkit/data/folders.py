"""Finding images on disk: the inputs of `pvtkit classify` / `features`, the class folders of a classification
dataset and the image/mask folders of a segmentation one."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("pvtkit")

# What PIL reads and people keep photos in; matched case-insensitively.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif", ".ico"}
)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and directories into image files, in a stable order.

    Files are kept as given (whatever their extension: the user named them); directories contribute their image
    files (by extension), recursively, sorted by path. Hidden files and folders are skipped.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a directory holds no image files.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = _images_in(path, recursive)
            if not images:
                raise ValueError(
                    f"{path}: no image files found ({'recursively, ' if recursive else ''}by extension: "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            found.extend(images)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def _images_in(directory: Path, recursive: bool) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith(".") and is_image_file(f))
    return sorted(out)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items rank `rank` of `world_size` handles: every world_size-th one, starting at `rank`."""
    return list(items[rank::world_size])


# ---- class folders (the datasets of `pvtkit train` / `pvtkit eval`) -------------------------------------------

SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation")}


def find_split_folders(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """The training and validation folders of a dataset directory.

    `root/train` with `root/val` or `root/validation` beside it gives both; `root/train` alone gives
    `(root/train, None)`; a directory of class folders gives `(root, None)`.

    Raises:
        FileNotFoundError: `root` is not a directory.
        ValueError: `root` holds both `val/` and `validation/`, or a validation folder without `train/`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a folder of class folders, or train/ and val/)")
    train = next((root / n for n in SPLIT_NAMES["train"] if (root / n).is_dir()), None)
    vals = [root / n for n in SPLIT_NAMES["val"] if (root / n).is_dir()]
    if len(vals) > 1:
        raise ValueError(f"{root}: holds both val/ and validation/; keep one")
    if train is None:
        if vals:
            raise ValueError(f"{root}: has {vals[0].name}/ but no train/ beside it")
        return root, None
    return train, (vals[0] if vals else None)


def scan_class_folders(directory: str | os.PathLike) -> dict[str, list[Path]]:
    """Class name -> its image files, for a directory with one subfolder per class (the torchvision
    `ImageFolder` layout). Classes are sorted by name; a class folder's images are found recursively and sorted.
    Hidden folders and files are skipped; files in `directory` itself are ignored. A class folder without image
    files maps to an empty list (the caller decides whether that is an error)."""
    directory = Path(directory)
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    return {name: _images_in(directory / name, recursive=True) for name in classes}


def stratified_split(
    by_class: dict[str, list[Path]], fraction: float, seed: int = 0
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Hold out `fraction` of every class, deterministically: (kept, held_out).

    Each class's files are shuffled by a generator seeded with `seed` and the class name (so adding a class does
    not change the others' split) and the first `round(n * fraction)` are held out; a class with at least two
    images keeps at least one on each side when `fraction` > 0.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    import zlib

    import numpy as np

    kept: dict[str, list[Path]] = {}
    held: dict[str, list[Path]] = {}
    for name, files in by_class.items():
        n = len(files)
        k = round(n * fraction)
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        order = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))]).permutation(n)
        held[name] = sorted(files[i] for i in order[:k])
        kept[name] = sorted(files[i] for i in order[k:])
    return kept, held


def unreadable_images(paths: Sequence[Path], workers: int = 8) -> list[tuple[Path, str]]:
    """The files whose header PIL cannot read, with the reason: a cheap check (no pixel decoding) that catches
    empty files, non-images and unknown formats before a run starts. Truncated pixel data shows only on decoding."""
    from concurrent.futures import ThreadPoolExecutor

    import PIL.Image

    def check(path: Path) -> tuple[Path, str] | None:
        try:
            with PIL.Image.open(path) as image:
                image.size  # noqa: B018 - parsing the header is the check
        except (OSError, SyntaxError, ValueError) as e:
            return path, str(e) or type(e).__name__
        return None

    if len(paths) < 64:
        results = [check(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, paths, chunksize=64))
    return [r for r in results if r is not None]


def threaded_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, desc: str, disable: bool | None
) -> list[Any]:
    """`[fn(item) for item in items]`, in order, in a pool of `workers` threads (PIL decodes without the GIL), under
    a tqdm bar `desc` on stderr (`disable`: tqdm's, None hiding it off a terminal)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(fn, items)
        bar = tqdm(jobs, total=len(items), desc=desc, unit="mask", leave=False, file=sys.stderr, disable=disable)
        return list(bar)


# ---- image + mask folders (the datasets of `pvtkit train --task semantic-segmentation`) -----------------------

MASK_FOLDER_NAMES = ("masks", "annotations", "labels")
SEGMENTATION_LAYOUTS = """\
  DIR/train/images/ + DIR/train/masks/, and DIR/val/ (or validation/) the same way;
  DIR/images/{training,validation}/ + DIR/annotations/{training,validation}/ (ADE20K's ADEChallengeData2016);
  DIR/images/ + DIR/masks/, of which a reproducible --val-fraction is held out.
  An image and its mask share their path without the extension (images/a/1.jpg <-> masks/a/1.png); masks are
  PNGs of class indices (modes L, P, I;16), 255 = ignored. "masks/" may also be called annotations/ or labels/."""


@dataclass
class SegmentationLayout:
    """Image/mask pairs found on disk, before any file is read.

    Attributes:
        name: `"split folders"`, `"ADE20K"` or `"flat"`.
        train: `(image, mask)` pairs to train on; `val` those to validate on (None: hold a fraction out).
        lone_images / lone_masks: Files that have no partner (an error for the caller to report).
        folders: The folders the pairs come from, for messages.
    """

    name: str
    train: list[tuple[Path, Path]]
    val: list[tuple[Path, Path]] | None
    lone_images: list[Path] = field(default_factory=list)
    lone_masks: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)


def _mask_folder(parent: Path) -> Path | None:
    return next((parent / n for n in MASK_FOLDER_NAMES if (parent / n).is_dir()), None)


def pair_images_and_masks(images: Path, masks: Path) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pair `images/**/x.*` with `masks/**/x.*` by their path without the extension: (pairs, lone images, lone
    masks), in path order. Two images (or two masks) with one name but different extensions cannot be paired.

    Raises:
        ValueError: Two files in one folder differ only by their extension.
    """

    def keyed(folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for path in _images_in(folder, recursive=True):
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in out:
                raise ValueError(
                    f"{out[key]} and {path}: two files with one name; an image and its mask are paired "
                    "by name, so each name may appear once per folder"
                )
            out[key] = path
        return out

    by_image, by_mask = keyed(images), keyed(masks)
    pairs = [(by_image[k], by_mask[k]) for k in sorted(by_image) if k in by_mask]
    lone_images = [by_image[k] for k in sorted(by_image) if k not in by_mask]
    lone_masks = [by_mask[k] for k in sorted(by_mask) if k not in by_image]
    return pairs, lone_images, lone_masks


# Depth datasets (`data.depth`): images and depth maps paired by file stem.
DEPTH_FOLDER_NAMES = ("depths", "depth")
DEPTH_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")
DEPTH_LAYOUTS = """\
  DIR/train/images/ + DIR/train/depths/ (and DIR/val/images/ + DIR/val/depths/), or DIR/images/ + DIR/depths/
  (depth/ works for depths/); a depth map has its image's file stem: 16-bit PNG / --depth-scale (NYU 1000, KITTI
  256), or .npy / 32-bit TIFF in metres; 0 = no measurement"""


def find_segmentation_layout(root: str | os.PathLike) -> SegmentationLayout:
    """Recognise one of the three layouts of `SEGMENTATION_LAYOUTS` in `root` and pair its files.

    Raises:
        FileNotFoundError: `root` is not a directory.
        ValueError: No layout is recognised (the message says what was expected), or a name is ambiguous.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected images and masks folders)")
    train_dir = next((root / n for n in SPLIT_NAMES["train"] if (root / n).is_dir()), None)
    val_dirs = [root / n for n in SPLIT_NAMES["val"] if (root / n).is_dir()]
    splits: list[tuple[str, Path | None, Path | None]] = []  # (split, images, masks)
    if train_dir is not None and (train_dir / "images").is_dir() and _mask_folder(train_dir) is not None:
        name = "split folders"
        if len(val_dirs) > 1:
            raise ValueError(f"{root}: holds both val/ and validation/; keep one")
        splits.append(("train", train_dir / "images", _mask_folder(train_dir)))
        if val_dirs:
            v = val_dirs[0]
            if not (v / "images").is_dir() or _mask_folder(v) is None:
                raise ValueError(f"{v}: expected images/ and masks/ folders in it, like {train_dir}'s")
            splits.append(("val", v / "images", _mask_folder(v)))
    elif (root / "images").is_dir() and _mask_folder(root) is not None:
        images, masks = root / "images", _mask_folder(root)
        assert masks is not None
        split_names = {"train": ("training", "train"), "val": ("validation", "val")}
        found = {s: next((n for n in names if (images / n).is_dir()), None) for s, names in split_names.items()}
        if found["train"] is not None:
            name = "ADE20K"
            for split, sub in found.items():
                if sub is None:
                    continue
                if not (masks / sub).is_dir():
                    raise ValueError(f"{images / sub} has no counterpart {masks / sub} for its masks")
                splits.append((split, images / sub, masks / sub))
        else:
            name = "flat"
            splits.append(("train", images, masks))
    else:
        raise ValueError(
            f"{root}: not a segmentation dataset layout pvtkit knows; expected one of:\n{SEGMENTATION_LAYOUTS}"
        )
    layout = SegmentationLayout(name, [], None)
    for split, images, masks in splits:
        assert images is not None and masks is not None
        pairs, lone_images, lone_masks = pair_images_and_masks(images, masks)
        layout.lone_images += lone_images
        layout.lone_masks += lone_masks
        layout.folders += [images, masks]
        if split == "train":
            layout.train = pairs
        else:
            layout.val = pairs
    return layout


# ---- what every dataset shares ----------------------------------------------------------------------------------

IGNORE_INDEX = 255  # mmsegmentation's and transformers' convention for "no label here"
SPLIT_SEED = 0


class DatasetError(ValueError):
    """A dataset directory that cannot be used as it is; the message names the folder or file and what is wrong."""


class LayoutError(DatasetError):
    """A segmentation dataset folder in no layout pvtkit recognises (the CLI's exit status 2: a usage mistake)."""


def warn_unreadable(unreadable: list[tuple[str, str]], what: str = "image") -> None:
    if not unreadable:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in unreadable[:5])
    more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    logger.warning("skipping %d unreadable %s(s): %s%s", len(unreadable), what, shown, more)


def listed(items: Sequence[str], limit: int = 10) -> str:
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "".join(f"\n  {item}" for item in items[:limit]) + more


LABEL_FILES = ("labels.json", "classes.txt")


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
            raise DatasetError(
                f'{path}: expected a JSON list of class names or an object {{"0": name, ...}} with ids 0..N-1 ({e})'
            ) from None
        return [str(n) for n in data]
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{path}: holds no class names (expected one per line)")
        return names
    return None


# `pvtkit train --help`'s description of the object-detection layouts (`data.detection` reads them)
DETECTION_LAYOUTS = """\
  DIR/annotations/instances_train*.json + instances_val*.json (COCO's: instances_train2017.json), the images in
  DIR/train2017/ + DIR/val2017/ (the name after "instances_"), DIR/train/ + DIR/val/, or DIR/images/ (a file_name
  may hold a subpath, relative to that folder);
  DIR/train/ + DIR/valid/ (or val/), each with one COCO .json (Roboflow's _annotations.coco.json) beside its images;
  one DIR/annotations/instances*.json, DIR/annotations.json or DIR/instances*.json (images in DIR/images/ or DIR/),
  of which a reproducible --val-fraction is held out.
  A file holds "images" (id, file_name, width, height), "annotations" (id, image_id, category_id, bbox [x, y,
  width, height] in pixels, iscrowd) and "categories" (id, name); classes are the categories ordered by id."""
