"""Detection data: COCO-format annotation files (one of `DETECTION_LAYOUTS`) read and checked, every image's header
read once, the training dataset with Deformable DETR's augmentation (Zhu et al. 2021, https://arxiv.org/abs/2010.04159,
after DETR's, https://arxiv.org/abs/2005.12872), its batching (padding + pixel mask), and the ground truth an
evaluator hands to pycocotools.

Coordinates: COCO files hold `bbox = [x, y, width, height]` in pixels of the image *as stored* (COCO's convention,
which pycocotools and DETR's loaders follow). A sample keeps `(x0, y0, x1, y1)` pixels, clipped to its image; the
training targets are `(cx, cy, w, h)` relative to the augmented image without its padding (see `detection_collate`).
Classes are the categories ordered by category id: class k is `categories[k]`, whatever the ids are (COCO's 80 run
1..90 with gaps); evaluation speaks the file's category ids again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from ..processing import ImageLoadError, load_image, pad_batch
from .folders import DETECTION_LAYOUTS, SPLIT_SEED, DatasetError, LayoutError, _images_in, listed

logger = logging.getLogger("pvtkit")

# The paper's recipe at its 800-pixel scale: `DetectionTrainTransform` scales every number by `size / 800`.
PAPER_SIZE = 800
PAPER_SCALES = tuple(range(480, 801, 32))  # the shortest side's sizes of the multi-scale resize
PAPER_MAX_SIZE = 1333  # the longest side's limit
PAPER_CROP_RESIZE = (400, 500, 600)  # the shortest side before the random crop
PAPER_CROP_RANGE = (384, 600)  # the crop's width and height

# The kinds of `DetectionData.issues`, each a list of entries naming the file, the image, the annotation and the value.
ISSUES = (
    "boxes clipped to their image",
    "annotations skipped",  # zero or negative size, wholly outside, unknown category or image, not 4 numbers
    "listed images missing on disk (skipped)",
    "images of another size than listed (skipped)",
    "image files no annotation file lists",
)

_SPLIT_TOKEN = re.compile(r"(?:^|[_\-.])(train|validation|valid|val|test)", re.IGNORECASE)
_JSON_NAMES = re.compile(r"^(instances.*|annotations|_annotations\.coco)\.json$", re.IGNORECASE)
_VAL_NAMES = ("val", "valid", "validation")


class DetectionSample(NamedTuple):
    """One annotated image, its objects as the checks left them (picklable for DataLoader workers; `[0]` is the path,
    as for the other tasks' samples).

    Attributes:
        path: The image file.
        image_id: Its id in the annotation file (unique within that file; evaluation reports it).
        width / height: Its size as annotated (that of the decoded image, after EXIF rotation when `upright`).
        boxes: `(n, 4)` float32 `(x0, y0, x1, y1)` pixels, clipped to the image.
        labels: `(n,)` int64 class indices 0..K-1.
        crowd: `(n,)` bool, `iscrowd=1`: evaluated (as regions a detection may match without counting), never
            trained on.
        areas: `(n,)` float32 COCO areas (the small / medium / large split of the evaluation).
        annotation_ids: `(n,)` int64 annotation ids.
        upright: Decode with the EXIF orientation applied (only when the annotated size is the rotated one).
        file_name: The image's `file_name` in the annotation file.
    """

    path: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    areas: np.ndarray
    annotation_ids: np.ndarray
    upright: bool
    file_name: str

    @property
    def num_objects(self) -> int:
        """The objects it trains on (crowd regions left out)."""
        return int((~self.crowd).sum())


@dataclass
class DetectionData:
    """A detection dataset found on disk and checked: every annotation file parsed, every box checked against its
    image, every listed image's header read.

    Attributes:
        classes: Class names, class k = `categories[k]` (categories ordered by id).
        categories: The COCO categories (`{"id", "name", ...}`), ordered by id.
        train / val: The images; `val` is empty when there is no validation set.
        val_source: `"folder"` (a validation annotation file), `"fraction"` (held out) or None.
        layout: Which of `DETECTION_LAYOUTS` was recognised; `files` the annotation files read.
        issues: What was clipped, skipped or found unlisted, by kind (`ISSUES`, every kind present); each entry
            names the annotation file, the image, the annotation id and the value.
        unreadable: Images left out because their header cannot be read, with the reason.
    """

    classes: list[str]
    categories: list[dict[str, Any]]
    train: list[DetectionSample]
    val: list[DetectionSample]
    val_source: str | None
    layout: str
    files: list[str] = field(default_factory=list)
    issues: dict[str, list[str]] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def category_ids(self) -> list[int]:
        """Class index -> COCO category id."""
        return [int(c["id"]) for c in self.categories]

    @property
    def class_of(self) -> dict[int, int]:
        """COCO category id -> class index."""
        return {int(c["id"]): k for k, c in enumerate(self.categories)}

    def counts(self) -> dict[str, list[int]]:
        """The fingerprint a resumed run must match: the classes, and the images and trained objects per split."""
        return {
            "classes": [len(self.classes)],
            "images": [len(self.train), len(self.val)],
            "objects": [sum(s.num_objects for s in self.train), sum(s.num_objects for s in self.val)],
        }

    def report(self, limit: int = 10) -> str:
        """What was found and what was done about bad entries, for the trainer (or `pvtkit eval`) to print."""
        lines = [f"{self.layout} layout: {', '.join(self.files)}"]
        for name, samples in (("train", self.train), ("val", self.val)):
            if not samples and name == "val":
                continue
            objects = sum(s.num_objects for s in samples)
            empty = sum(1 for s in samples if s.num_objects == 0)
            crowd = sum(int(s.crowd.sum()) for s in samples)
            lines.append(
                f"{name}: {len(samples)} images, {objects} objects, {empty} images without objects"
                + (f", {crowd} crowd regions (evaluated, not trained on)" if crowd else "")
                + (" (held out)" if name == "val" and self.val_source == "fraction" else "")
            )
        lines.append(
            f"classes ({len(self.classes)}): {', '.join(self.classes[:20])}{' ...' if len(self.classes) > 20 else ''}"
        )
        for kind, entries in self.issues.items():
            if entries:
                lines.append(f"{len(entries)} {kind}:{listed(entries, limit)}")
        if self.unreadable:
            lines.append(
                f"{len(self.unreadable)} unreadable image(s), left out:"
                f"{listed([f'{p}: {r}' for p, r in self.unreadable], limit)}"
            )
        return "\n".join(lines)

    def ground_truth(self, samples: Sequence[DetectionSample] | None = None) -> dict[str, Any]:
        """The COCO ground truth of `samples` (default: the validation images), for `coco_metrics.coco_evaluate`."""
        return coco_ground_truth(self.val if samples is None else samples, self.categories)

    def evaluation_set(self, split: str = "val") -> tuple[list[DetectionSample], dict[str, Any]]:
        """`(samples, their COCO ground truth)` of a split: what an evaluator runs the model on and scores against."""
        samples = {"train": self.train, "val": self.val}[split]
        return list(samples), coco_ground_truth(samples, self.categories)


# ---- finding the annotation files --------------------------------------------------------------------------------


@dataclass
class _SplitFile:
    split: str  # "train", "val" or "all" (held out by fraction)
    path: Path
    image_dirs: list[Path]  # where its file_names may be relative to, most likely first


def _split_of(path: Path) -> tuple[str | None, str]:
    """(train / val / test / None, the tag after the split word's start: "train2017")."""
    match = _SPLIT_TOKEN.search(path.stem)
    if match is None:
        return None, ""
    word = match.group(1).lower()
    tag = re.split(r"[_\-.]", path.stem[match.start(1) :])[0]
    return ("val" if word in _VAL_NAMES else word), tag


def _existing(paths: Sequence[Path]) -> list[Path]:
    return list(dict.fromkeys(p for p in paths if p.is_dir()))


def find_detection_layout(root: str | os.PathLike) -> tuple[str, list[_SplitFile]]:
    """Recognise one of `DETECTION_LAYOUTS` in `root`: (its name, the annotation files with their image folders).

    Raises:
        FileNotFoundError: `root` is not a directory.
        LayoutError: No layout is recognised, or which file is which is ambiguous (the message lists them).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a COCO-format detection dataset)")
    # Roboflow's export: one JSON beside the images of each split folder
    folders = {
        split: next((root / n for n in names if (root / n).is_dir()), None)
        for split, names in (("train", ("train",)), ("val", _VAL_NAMES))
    }
    if folders["train"] is not None:
        jsons = {s: sorted(d.glob("*.json")) if d else [] for s, d in folders.items()}
        if len(jsons["train"]) == 1:
            found = [_SplitFile("train", jsons["train"][0], [folders["train"]])]
            if folders["val"] is not None:
                if len(jsons["val"]) != 1:
                    raise LayoutError(
                        f"{folders['val']}: expected one COCO .json beside its images, like {jsons['train'][0]}; "
                        f"found {len(jsons['val'])}"
                    )
                found.append(_SplitFile("val", jsons["val"][0], [folders["val"]]))
            else:
                found[0].split = "all"
            return "split folders", found
    candidates = [
        p
        for folder in (root / "annotations", root)
        if folder.is_dir()
        for p in sorted(folder.glob("*.json"))
        if _JSON_NAMES.match(p.name)
    ]
    by_split: dict[str | None, list[tuple[Path, str]]] = {}
    for path in candidates:
        split, tag = _split_of(path)
        by_split.setdefault(split, []).append((path, tag))
    for split in ("train", "val") if by_split.get("train") else ("train", "val", None):
        if len(by_split.get(split, [])) > 1:
            names = [str(p) for p, _ in by_split[split]]
            raise LayoutError(
                f"{root}: {len(names)} {split or 'unsplit'} annotation files; which to use is ambiguous (move all "
                f"but one elsewhere):{listed(names)}"
            )

    def dirs(split: str, tag: str, path: Path) -> list[Path]:
        names = [tag, split, *(_VAL_NAMES if split == "val" else ())] if tag else []
        return _existing(
            [root / n for n in names] + [root / "images" / n for n in names] + [root / "images", root, path.parent]
        )

    if by_split.get("train"):
        (train, tag), *_ = by_split["train"]
        if by_split.get("val"):
            (val, vtag), *_ = by_split["val"]
            return "COCO", [
                _SplitFile("train", train, dirs("train", tag, train)),
                _SplitFile("val", val, dirs("val", vtag, val)),
            ]
        return "COCO (no validation file)", [_SplitFile("all", train, dirs("train", tag, train))]
    if by_split.get("val"):
        raise LayoutError(f"{root}: {by_split['val'][0][0]} is a validation file with no training file beside it")
    if by_split.get(None):
        (single, _), *_ = by_split[None]
        return "single file", [_SplitFile("all", single, dirs("all", "", single))]
    raise LayoutError(f"{root}: not a detection dataset layout pvtkit knows; expected one of:\n{DETECTION_LAYOUTS}")


# ---- reading and checking one file -------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a COCO JSON file"
        ) from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: the top level is a JSON {type(data).__name__}; expected an object with "
            '"images", "annotations" and "categories"'
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(
                f'{path}: no "{key}" key; a COCO detection file has "images", "annotations" and "categories"'
            )
        if not isinstance(data[key], list):
            raise DatasetError(f'{path}: "{key}" is a JSON {type(data[key]).__name__}; expected a list')
    if not data["images"]:
        raise DatasetError(f'{path}: "images" is empty; the file lists no image')
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(path: Path, key: str, i: int, entry: Any, name: str, check: Callable[[Any], bool], expected: str) -> Any:
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {key}[{i}] is a JSON {type(entry).__name__}; expected an object")
    if name not in entry:
        raise DatasetError(f'{path}: {key}[{i}] has no "{name}" key')
    value = entry[name]
    if not check(value):
        raise DatasetError(f'{path}: {key}[{i}]["{name}"] is {value!r}; expected {expected}')
    return value


def _read_categories(path: Path, data: dict[str, Any], merged: dict[int, dict[str, Any]]) -> None:
    if not data["categories"]:
        raise DatasetError(f'{path}: "categories" is empty; a detection file needs at least one category')
    seen: set[int] = set()
    for i, entry in enumerate(data["categories"]):
        cid = _field(path, "categories", i, entry, "id", _is_int, "an integer id")
        name = _field(path, "categories", i, entry, "name", lambda v: isinstance(v, str) and v != "", "a name")
        if cid in seen:
            raise DatasetError(f"{path}: category id {cid} is listed twice")
        seen.add(cid)
        if cid in merged and merged[cid]["name"] != name:
            raise DatasetError(
                f"{path}: category {cid} is named {name!r}, but {merged[cid]['name']!r} in another annotation file"
            )
        merged.setdefault(cid, {k: v for k, v in entry.items() if k in ("id", "name", "supercategory")})


def _resolve_images(path: Path, names: list[str], dirs: list[Path]) -> Path:
    """The folder the `file_name`s are relative to: the candidate holding most of the first 50."""
    names = names[:50]
    hits = [sum((d / n).is_file() for n in names) for d in dirs]
    if not any(hits):
        raise DatasetError(
            f"{path}: none of its first {len(names)} images ({names[0]}, ...) is in "
            f"{' or '.join(str(d) for d in dirs)}; expected one of:\n{DETECTION_LAYOUTS}"
        )
    return dirs[int(np.argmax(hits))]


@dataclass
class _Image:
    id: int
    file_name: str
    path: Path
    width: int | None
    height: int | None
    annotations: list[tuple[int, np.ndarray, int, bool, float]] = field(default_factory=list)
    # (annotation id, x0 y0 x1 y1, class, crowd, area) after clipping


def _read_file(
    split_file: _SplitFile, class_of: dict[int, int], issues: dict[str, list[str]], data: dict[str, Any]
) -> tuple[list[_Image], Path]:
    path = split_file.path
    images: dict[int, _Image] = {}
    by_name: dict[str, int] = {}
    for i, entry in enumerate(data["images"]):
        iid = _field(path, "images", i, entry, "id", _is_int, "an integer id")
        name = _field(path, "images", i, entry, "file_name", lambda v: isinstance(v, str) and v != "", "a file name")
        if iid in images:
            raise DatasetError(f"{path}: image id {iid} is listed twice ({images[iid].file_name} and {name})")
        if name in by_name:
            raise DatasetError(f"{path}: {name} is listed twice (image ids {by_name[name]} and {iid})")
        by_name[name] = iid
        size = []
        for key in ("width", "height"):
            value = entry.get(key)
            if value is not None and not (_is_int(value) and value > 0):
                raise DatasetError(
                    f'{path}: images[{i}]["{key}"] (image {name}) is {value!r}; expected a positive integer'
                )
            size.append(value)
        images[iid] = _Image(iid, name, Path(name), *size)
    folder = _resolve_images(path, list(by_name), split_file.image_dirs)
    for image in images.values():
        image.path = folder / image.file_name
    seen: dict[int, int] = {}
    skipped = issues["annotations skipped"]
    for i, entry in enumerate(data["annotations"]):
        aid = _field(path, "annotations", i, entry, "id", _is_int, "an integer id")
        if aid in seen:
            raise DatasetError(f"{path}: annotation id {aid} is used twice (annotations[{seen[aid]}] and [{i}])")
        seen[aid] = i
        image_id = entry.get("image_id")
        image = images.get(image_id) if _is_int(image_id) else None
        if image is None:
            skipped.append(f"{path}: annotation {aid}: image_id {image_id!r} is not in its images")
            continue
        where = f"{path}: annotation {aid} (image {image.file_name})"
        category = entry.get("category_id")
        if not _is_int(category) or category not in class_of:
            skipped.append(f"{where}: category_id {category!r} is no category of the file")
            continue
        bbox = entry.get("bbox")
        if not (
            isinstance(bbox, (list, tuple))
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            skipped.append(f"{where}: bbox {bbox!r} is not 4 finite numbers [x, y, width, height]")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            skipped.append(f"{where}: bbox {bbox} has zero or negative size")
            continue
        crowd = entry.get("iscrowd", 0) in (1, True)
        area = entry.get("area")
        area = float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) and area > 0 else w * h
        image.annotations.append((aid, np.array([x, y, x + w, y + h], np.float64), class_of[category], crowd, area))
    return list(images.values()), folder


def _probe(path: Path) -> tuple[int, int, int] | str | None:
    """(width, height, EXIF orientation) from the header, why it cannot be read, or None: no such file."""
    try:
        with PIL.Image.open(path) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112, 1)
    except FileNotFoundError:
        return None
    except (OSError, SyntaxError, ValueError) as e:
        return str(e) or type(e).__name__
    return width, height, orientation if isinstance(orientation, int) else 1


def _samples(
    path: Path,
    images: list[_Image],
    probes: list[tuple[int, int, int] | str | None],
    issues: dict[str, list[str]],
    unreadable: list[tuple[str, str]],
) -> list[DetectionSample]:
    out = []
    for image, probe in zip(images, probes):
        if probe is None:
            issues["listed images missing on disk (skipped)"].append(f"{path}: image {image.id}: {image.path}")
            continue
        if isinstance(probe, str):
            unreadable.append((str(image.path), probe))
            continue
        width, height, orientation = probe
        # COCO boxes refer to the pixels as stored; only a listed size that is the EXIF-rotated one says otherwise
        upright = orientation in (5, 6, 7, 8) and (image.width, image.height) == (height, width) != (width, height)
        if upright:
            width, height = height, width
        if (image.width is not None and image.width != width) or (image.height is not None and image.height != height):
            issues["images of another size than listed (skipped)"].append(
                f"{path}: image {image.id} ({image.path}): listed {image.width}x{image.height}, the file is "
                f"{width}x{height} (width x height)"
            )
            continue
        rows = []
        for aid, box, label, crowd, area in image.annotations:
            inside = box.copy()
            inside[0::2] = inside[0::2].clip(0, width)
            inside[1::2] = inside[1::2].clip(0, height)
            value = f"[{box[0]:g}, {box[1]:g}, {box[2] - box[0]:g}, {box[3] - box[1]:g}]"
            where = f"{path}: annotation {aid} (image {image.file_name}, {width}x{height})"
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                issues["annotations skipped"].append(f"{where}: bbox {value} lies outside the image")
                continue
            if not np.array_equal(inside, box):
                issues["boxes clipped to their image"].append(f"{where}: bbox {value}")
            rows.append((aid, inside, label, crowd, area))
        out.append(
            DetectionSample(
                path=str(image.path),
                image_id=image.id,
                width=width,
                height=height,
                boxes=np.array([r[1] for r in rows], np.float32).reshape(-1, 4),
                labels=np.array([r[2] for r in rows], np.int64),
                crowd=np.array([r[3] for r in rows], bool),
                areas=np.array([r[4] for r in rows], np.float32),
                annotation_ids=np.array([r[0] for r in rows], np.int64),
                upright=upright,
                file_name=image.file_name,
            )
        )
    return out


def _hold_out(samples: list[DetectionSample], fraction: float, seed: int) -> tuple[list, list]:
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    n = len(samples)
    k = round(n * fraction)
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def load_detection_data(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = SPLIT_SEED,
    progress: bool = False,
    workers: int = 8,
) -> DetectionData:
    """The images and boxes of a COCO-format detection dataset, checked (`pvtkit train` / `eval`).

    Bad entries are dealt with one by one and reported (`DetectionData.issues`, a warning per kind): a box partly
    outside its image is clipped; an annotation with a box of zero or negative size, wholly outside its image, an
    unknown category or image id is skipped; a listed image missing on disk, or whose size is not the listed one, is
    skipped; image files in the image folders that no file lists are reported. Images without objects are kept (they
    train the "no object" class). Without a validation file, `val_fraction` of the images is held out, the same
    every time for a given `seed` (keep the default so that `pvtkit eval --val-fraction` finds the same hold-out).

    Raises:
        FileNotFoundError: `root` does not exist.
        LayoutError: No known layout (the message lists them), or an ambiguous one.
        DatasetError: An annotation file that is no JSON (the message gives the line and column), lacks a key or
            holds a value of the wrong type (the message names the entry and the key), lists no image, repeats an
            image, annotation or category id, or names one category id two ways; no usable training image or
            object is left.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    root = Path(root)
    layout, split_files = find_detection_layout(root)
    contents = [_read_json(f.path) for f in split_files]
    merged: dict[int, dict[str, Any]] = {}
    for split_file, data in zip(split_files, contents):
        _read_categories(split_file.path, data, merged)
    categories = [merged[c] for c in sorted(merged)]
    names = [c["name"] for c in categories]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{root}: categories {twice} have one name under several ids; a class is known by its name")
    class_of = {int(c["id"]): k for k, c in enumerate(categories)}
    issues: dict[str, list[str]] = {kind: [] for kind in ISSUES}
    unreadable: list[tuple[str, str]] = []
    splits: dict[str, list[DetectionSample]] = {}
    listed_paths: set[str] = set()
    folders: list[Path] = []
    for split_file, data in zip(split_files, contents):
        images, folder = _read_file(split_file, class_of, issues, data)
        folders.append(folder)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            probes = list(
                tqdm(
                    pool.map(_probe, [im.path for im in images]),
                    total=len(images),
                    desc=f"reading {split_file.path.name}'s image headers",
                    unit="image",
                    leave=False,
                    file=sys.stderr,
                    disable=not progress or len(images) < 200,
                )
            )
        listed_paths.update(os.path.normpath(im.path) for im in images)
        samples = _samples(split_file.path, images, probes, issues, unreadable)
        splits[split_file.split] = sorted(samples, key=lambda s: s.path)
    for folder in dict.fromkeys(folders):
        lone = [str(p) for p in _images_in(folder, recursive=True) if os.path.normpath(p) not in listed_paths]
        issues["image files no annotation file lists"] += lone
    for kind, entries in issues.items():
        if entries:
            more = f"; and {len(entries) - 3} more" if len(entries) > 3 else ""
            logger.warning("%s: %d %s: %s%s", root, len(entries), kind, "; ".join(entries[:3]), more)
    if unreadable:
        from .folders import warn_unreadable

        warn_unreadable(unreadable)
    if "all" in splits:
        train, val = _hold_out(splits["all"], val_fraction, seed)
        source = "fraction" if val else None
    else:
        train, val = splits["train"], splits.get("val", [])
        source = "folder" if "val" in splits else None
    files = [str(f.path) for f in split_files]
    if not train:
        raise DatasetError(
            f"{root}: no usable training image is left of the {len(contents[0]['images'])} {files[0]} lists "
            "(see the warnings above)"
        )
    if not any(s.num_objects for s in train):
        raise DatasetError(f"{root}: the training images hold no object to learn ({files[0]}: no usable annotation)")
    if "val" in splits and not val:
        raise DatasetError(
            f"{root}: no usable validation image is left of those {files[1]} lists (see the warnings above)"
        )
    return DetectionData(names, categories, train, val, source, layout, files, issues, unreadable)


def coco_ground_truth(samples: Sequence[DetectionSample], categories: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The COCO ground-truth dict (`images`, `annotations`, `categories`) of `samples`: their checked (clipped) boxes
    under the files' own image, annotation and category ids, crowd regions included, images without objects too.

    Raises:
        ValueError: Two samples share an image id (images of two annotation files evaluated together).
    """
    images, annotations, seen = [], [], {}
    for s in samples:
        if s.image_id in seen:
            raise ValueError(f"image id {s.image_id} is both {seen[s.image_id]} and {s.path}; evaluate them apart")
        seen[s.image_id] = s.path
        images.append({"id": s.image_id, "file_name": s.file_name, "width": s.width, "height": s.height})
        for box, label, crowd, area, aid in zip(s.boxes, s.labels, s.crowd, s.areas, s.annotation_ids):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": int(aid),
                    "image_id": s.image_id,
                    "category_id": int(categories[int(label)]["id"]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(area),
                    "iscrowd": int(crowd),
                }
            )
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in categories]}


# ---- training: Deformable DETR's augmentation --------------------------------------------------------------------


def resized_size(width: int, height: int, short: int, max_size: int | None = None) -> tuple[int, int]:
    """(width, height) with the shortest side at `short` and the aspect ratio kept, the shortest side lowered so that
    the longest stays within `max_size` (DETR's rule: the long side is truncated, `int(short * long / short_side)`)."""
    low, high = min(width, height), max(width, height)
    if max_size is not None and high / low * short > max_size:
        short = int(round(max_size * low / high))
    if low == short:
        return width, height
    if width < height:
        return short, max(1, int(short * height / width))
    return max(1, int(short * width / height)), short


def _scaled(values: Sequence[int], ratio: float) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(v * ratio)) for v in values}))


class DetectionTrainTransform:
    """Deformable DETR's COCO training augmentation, with every size scaled by `size / 800` (the paper trains at
    800): a horizontal flip (p 0.5), then with p 0.5 a resize of the shortest side to one of `scales` (the longest
    at most `max_size`), else a resize of the shortest side to one of `crop_resize`, a random crop of width and
    height in `crop_range` (each at most the image's), and the multi-scale resize; then the processor's rescaling and
    normalisation. Boxes move with the image; a crop clips them and drops those it leaves empty. Randomness is a
    function of (seed, epoch, index) only; every draw is made whatever the options, so turning one off changes no
    other.

    Args:
        processor: Gives `resample` and the rescaling / normalisation (`transforms.Normalize`).
        size: The largest shortest-side size (the paper's 800); the others follow from it.
        max_size: The longest side's limit (default `1333 * size / 800`).
        hflip: Flip half the images.
        random_crop: Use the resize + crop branch for half the images (else always the multi-scale resize).
        seed: The run's seed.
        multi_scale: Resize the shortest side to one of the scales (else always to `size`).
    """

    def __init__(
        self,
        processor: Any,
        size: int = PAPER_SIZE,
        max_size: int | None = None,
        hflip: bool = True,
        random_crop: bool = True,
        seed: int = 0,
        multi_scale: bool = True,
    ) -> None:
        from .transforms import Normalize

        ratio = size / PAPER_SIZE
        self.size, self.hflip, self.random_crop, self.seed = size, hflip, random_crop, seed
        self.scales = _scaled(PAPER_SCALES, ratio) if multi_scale else (size,)
        self.max_size = int(max_size) if max_size else max(1, round(PAPER_MAX_SIZE * ratio))
        self.crop_resize = _scaled(PAPER_CROP_RESIZE, ratio)
        self.crop_range = _scaled(PAPER_CROP_RANGE, ratio)
        self.resample = int(getattr(processor, "resample", PIL.Image.Resampling.BILINEAR))
        self.normalize = Normalize(processor)

    def _resize(
        self, image: PIL.Image.Image, boxes: np.ndarray, short: int, max_size: int | None
    ) -> tuple[PIL.Image.Image, np.ndarray]:
        width, height = resized_size(image.width, image.height, short, max_size)
        if (width, height) == image.size:
            return image, boxes
        scale = np.array([width / image.width, height / image.height] * 2, np.float32)
        return image.resize((width, height), resample=self.resample), boxes * scale

    def __call__(
        self, image: PIL.Image.Image, boxes: np.ndarray, labels: np.ndarray, index: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(pixels (3, H, W) float32, boxes (n, 4) float32 cx cy w h relative to H x W, labels (n,))` of an image
        and its `(x0, y0, x1, y1)` pixel boxes."""
        rng = np.random.default_rng([self.seed, epoch, index])
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(labels, np.int64)
        if rng.random() < 0.5 and self.hflip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = np.stack([image.width - boxes[:, 2], boxes[:, 1], image.width - boxes[:, 0], boxes[:, 3]], 1)
        crop_branch = rng.random() >= 0.5
        pre, short = int(rng.choice(self.crop_resize)), int(rng.choice(self.scales))
        if crop_branch and self.random_crop:
            image, boxes = self._resize(image, boxes, pre, None)
            low, high = self.crop_range
            w = int(rng.integers(min(low, image.width), min(image.width, high) + 1))
            h = int(rng.integers(min(low, image.height), min(image.height, high) + 1))
            top, left = int(rng.integers(0, image.height - h + 1)), int(rng.integers(0, image.width - w + 1))
            image = image.crop((left, top, left + w, top + h))
            boxes = boxes - np.array([left, top, left, top], np.float32)
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        image, boxes = self._resize(image, boxes, short, self.max_size)
        pixels = self.normalize(np.asarray(image, dtype=np.float32))
        W, H = image.size
        centred = np.stack(
            [
                (boxes[:, 0] + boxes[:, 2]) / 2,
                (boxes[:, 1] + boxes[:, 3]) / 2,
                boxes[:, 2] - boxes[:, 0],
                boxes[:, 3] - boxes[:, 1],
            ],
            1,
        ) / np.array([W, H, W, H], np.float32)
        return np.ascontiguousarray(pixels), centred.astype(np.float32).reshape(-1, 4), labels


def _empty_target() -> dict[str, torch.Tensor]:
    return {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}


class DetectionTrainDataset(Dataset):
    """Training images with their boxes, augmented by `DetectionTrainTransform`, indexed by `(index, epoch)` keys
    (the trainer's batch sampler's). An item is `(pixels (3, H, W) float32, {"class_labels": (n,) int64, "boxes":
    (n, 4) float32 cx cy w h relative to H x W}, weight, index, reason)`; crowd regions are left out. An image that
    cannot be decoded (or no longer has its listed size) yields a zero image of the smallest scale, no objects,
    weight 0 and the reason. Batch with `detection_collate`.

    Args:
        samples: `DetectionData.train`.
        processor: The model's image processor (rescaling, normalisation, `resample`).
        settings: The run settings: `image_size` (the paper's 800), `seed`, and optionally `max_size`, `hflip`,
            `random_crop`, `multi_scale` (`DetectionTrainTransform`'s arguments).
    """

    def __init__(self, samples: Sequence[DetectionSample], processor: Any, settings: Mapping[str, Any]) -> None:
        self.samples = list(samples)
        self.transform = DetectionTrainTransform(
            processor,
            int(settings["image_size"]),
            settings.get("max_size"),
            bool(settings.get("hflip", True)),
            bool(settings.get("random_crop", True)),
            int(settings["seed"]),
            bool(settings.get("multi_scale", True)),
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor], float, int, str]:
        index, epoch = key
        sample = self.samples[index]
        try:
            image = load_image(sample.path, exif_transpose=sample.upright)
            if image.size != (sample.width, sample.height):
                raise ImageLoadError(
                    f"{sample.path}: decoded {image.width}x{image.height}, annotated {sample.width}x{sample.height}"
                )
        except (ImageLoadError, OSError) as e:
            low = self.transform.scales[0]
            return torch.zeros(3, low, low), _empty_target(), 0.0, index, str(e) or type(e).__name__
        keep = ~sample.crowd
        pixels, boxes, labels = self.transform(image, sample.boxes[keep], sample.labels[keep], index, epoch)
        target = {"class_labels": torch.from_numpy(labels), "boxes": torch.from_numpy(boxes)}
        return torch.from_numpy(pixels), target, 1.0, index, ""


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor], float, int, str]],
    boxes_relative_to: str = "image",
    drop_failed: bool = False,
) -> tuple[tuple[torch.Tensor, torch.Tensor], list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor, list[str]]:
    """A batch of detection items as `((pixel_values (N, 3, H, W), pixel_mask (N, H, W) int64), targets, weights (N,)
    float32, indices (N,) int64, reasons)`: images at the top left, zeros to the right and below up to the batch's
    largest height and width, the mask 1 on the image (`processing.pad_batch`); `targets` one dict per image.

    Boxes stay relative to each image *without* its padding (`boxes_relative_to="image"`), as DETR and Deformable
    DETR train: the model predicts in that frame (its sine position encoding counts only unmasked pixels, its
    decoder's reference points are scaled by the valid ratios the pixel mask gives, two-stage proposals are
    normalised by the unmasked size), and post-processing scales predictions by each image's own size. transformers'
    DETR processors (since v4.37, its PR #28363; 5.25's `pad` with `do_convert_annotations`) instead re-normalise the
    boxes to the padded size; `boxes_relative_to="padded"` reproduces that, for comparisons with transformers'
    training only, since those targets then move with the batch's other images while the model's frame does not.

    `drop_failed` (training): images that could not be decoded (weight 0) are left out of the pixels and targets, so
    that no placeholder trains the no-object class; `weights`, `indices` and `reasons` keep every item (the trainer
    counts and reports them). A batch of nothing but failures keeps them (their loss counts 0 images).
    """
    if boxes_relative_to not in ("image", "padded"):
        raise ValueError(f"boxes_relative_to is 'image' or 'padded', got {boxes_relative_to!r}")
    images = [item for item in batch if item[2] > 0] if drop_failed else list(batch)
    images = images or list(batch)
    values, mask = pad_batch([item[0] for item in images])
    targets = []
    for item in images:
        target = dict(item[1])
        if boxes_relative_to == "padded" and len(target.get("boxes", ())):
            h, w = item[0].shape[1:]
            scale = torch.tensor([w / values.shape[3], h / values.shape[2]] * 2, dtype=target["boxes"].dtype)
            target["boxes"] = target["boxes"] * scale
        targets.append(target)
    weights = torch.tensor([float(item[2]) for item in batch], dtype=torch.float32)
    indices = torch.tensor([int(item[3]) for item in batch], dtype=torch.int64)
    return (values, mask), targets, weights, indices, [item[4] for item in batch]


class DetectionEvalDataset(Dataset):
    """Validation images as the processor prepares them (resized, normalised, not padded), for an evaluator: an item
    is `(pixels (3, h, w), {"image_id": int, "orig_size": (height, width)}, weight, index, reason)`, batched by
    `detection_collate`; predicted boxes scale back by `orig_size`. An image that cannot be decoded yields a 1 x 1
    zero image, weight 0 and the reason."""

    def __init__(self, samples: Sequence[DetectionSample], processor: Any) -> None:
        self.samples, self.processor = list(samples), processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any], float, int, str]:
        sample = self.samples[index]
        target = {"image_id": sample.image_id, "orig_size": (sample.height, sample.width)}
        try:
            out = self.processor(load_image(sample.path, exif_transpose=sample.upright), return_tensors="np")
        except (ImageLoadError, OSError) as e:
            return torch.zeros(3, 1, 1), target, 0.0, index, str(e) or type(e).__name__
        pixels = out["pixel_values"][0]
        if "pixel_mask" in out:  # a processor that pads to a fixed size: keep the image, the batch pads again
            mask = np.asarray(out["pixel_mask"][0])
            pixels = pixels[:, : int(mask.any(1).sum()), : int(mask.any(0).sum())]
        return torch.from_numpy(np.ascontiguousarray(pixels)), target, 1.0, index, ""
