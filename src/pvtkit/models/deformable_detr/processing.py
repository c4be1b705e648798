"""Deformable DETR's image processors (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object
Detection", https://arxiv.org/abs/2010.04159): `DeformableDetrImageProcessor` (PIL and NumPy, transformers'
`DeformableDetrImageProcessorPil`) and `DeformableDetrImageProcessorFast` (batched torch tensors, transformers'
torchvision back end), with COCO detection annotations and `post_process_object_detection`. No PyTorch at import
(see `pvtkit.processing`).

The pipeline, as transformers runs it: each image is resized keeping its aspect ratio (shortest edge 800, longest
at most 1333), rescaled and normalized, then the batch is padded at the bottom and right to its largest height and
width (or `pad_size`) with a `pixel_mask` (1 image, 0 padding). Each image's COCO objects become one `labels` dict:
crowd objects are dropped, boxes clipped to the image and those left with no area dropped, then boxes and areas
scaled with the image and the boxes turned into (center x, center y, width, height) fractions of the padded image.

The annotation arithmetic is done once, in NumPy float32 exactly as transformers' PIL back end does it, for both
back ends: the Fast processor's labels equal the PIL processor's, and transformers' torchvision back end's to
float32 rounding (it scales the boxes for padding in float32 where the PIL back end uses float64).

Deliberate differences from transformers, each covered by a test:

* A malformed annotation raises a `ValueError` naming the image, the object and the value (transformers raises
  assorted errors or, for a negative width or height, silently drops the box): a missing key, a `bbox` that is not
  four finite numbers, a negative width or height, a `category_id` or `image_id` that is not a whole number, a
  negative `area`, an `iscrowd` other than 0 or 1. Boxes of zero width or height, and boxes outside the image, are
  dropped as transformers drops them.
* Every `labels` dict has `size` (the image's size as the model sees it, padding included); transformers leaves it
  out when an image is neither resized nor padded.
* `do_convert_rgb` defaults to True (as in every pvtkit processor); `{"shortest_edge"}` alone or
  `{"longest_edge"}` alone, which transformers accepts at construction and fails on at the first image, are refused
  at construction.
* Panoptic annotations (`format="coco_panoptic"`), segmentation masks and keypoints are not supported: Deformable
  DETR detects boxes. Keypoints in the annotations are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    BatchFeature,
    ImageInput,
    ImageLoadError,
    _BaseImageProcessor,
    _flatten_images,
    _TorchBackend,
    register_image_processors,
    torch,
)
from ..vit.processing import ViTImageProcessor

DEFAULT_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
DEFAULT_LONGEST_EDGE = 1333  # what an int `size` is capped at without `max_size`, as transformers does
SIZE_FORMS = ({"shortest_edge", "longest_edge"}, {"height", "width"}, {"max_height", "max_width"})
ANNOTATION_FORMATS = ("coco_detection",)
_REQUIRED_OBJECT_KEYS = ("bbox", "category_id", "area")
_COCO_DETECTION = (
    "{'image_id': int, 'annotations': [{'bbox': [x, y, width, height], 'category_id': int, 'area': float, "
    "'iscrowd': 0}, ...]}"
)


# ------------------------------------------------------------------------------------------------ sizes


def detection_size(size: Any, max_size: int | None = None) -> dict[str, int]:
    """A detection processor's `size` as a dict of positive ints, in one of its three forms.

    Args:
        size: `{"shortest_edge", "longest_edge"}` (aspect kept, the short side to `shortest_edge` unless the long
            one would pass `longest_edge`), `{"height", "width"}` (exact), `{"max_height", "max_width"}` (aspect
            kept, as large as fits), an int (the shortest edge) or an `(height, width)` pair.
        max_size: The longest edge an int `size` gets (transformers' legacy `max_size`; default 1333).

    Raises:
        ValueError: Any other form, or a side that is not a positive int.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"shortest_edge": size, "longest_edge": DEFAULT_LONGEST_EDGE if max_size is None else max_size}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if isinstance(size, Mapping) and set(size) in SIZE_FORMS:
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size.values()):
            return {k: int(v) for k, v in size.items()}
    forms = ", ".join("{" + ", ".join(f"'{k}'" for k in sorted(form)) + "}" for form in SIZE_FORMS)
    raise ValueError(f"size must be one of {forms} with positive int values, an int or (height, width); got {size!r}")


def pad_size_dict(pad_size: Any) -> dict[str, int]:
    """`pad_size` as `{"height", "width"}` of positive ints (from that dict, an `(height, width)` pair or an int)."""
    if isinstance(pad_size, int) and not isinstance(pad_size, bool):
        pad_size = {"height": pad_size, "width": pad_size}
    elif isinstance(pad_size, (tuple, list)) and len(pad_size) == 2:
        pad_size = {"height": pad_size[0], "width": pad_size[1]}
    if isinstance(pad_size, Mapping) and set(pad_size) == {"height", "width"}:
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pad_size.values()):
            return {k: int(v) for k, v in pad_size.items()}
    raise ValueError(f"pad_size must be {{'height', 'width'}} with positive int values, got {pad_size!r}")


def resized_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) an image of this size is resized to under a `detection_size` dict, with transformers'
    rounding (the shortest edge, when the longest edge caps it, is rounded; the other side is truncated)."""
    if "height" in size:
        return size["height"], size["width"]
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    shortest, longest = size["shortest_edge"], size["longest_edge"]
    short, long = float(min(height, width)), float(max(height, width))
    exact_short: float | None = None  # the short side before rounding, when the long side caps it
    if long / short * shortest > longest:
        exact_short = longest * short / long
        shortest = int(round(exact_short))
    if min(height, width) == shortest:
        return height, width
    scaled = shortest if exact_short is None else exact_short
    if width < height:
        return int(scaled * height / width), shortest
    return shortest, int(scaled * width / height)


# ------------------------------------------------------------------------------------------ annotations


@dataclass
class _Objects:
    """One image's checked COCO annotation: its id and its non-crowd objects, in order."""

    image_id: int
    boxes: list[list[float]] = field(default_factory=list)  # x, y, width, height
    classes: list[int] = field(default_factory=list)
    areas: list[float] = field(default_factory=list)


def _scalar(value: Any, name: str, expected: str) -> float:
    """A finite real number from a Python, NumPy or 0-d torch scalar, else a ValueError naming it."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"{name} is {value!r}; expected {expected}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {value!r}; expected {expected}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is {value!r}; expected {expected}")
    return number


def _whole(value: Any, name: str, minimum: int | None = None) -> int:
    expected = "a whole number" + ("" if minimum is None else f" >= {minimum}")
    number = _scalar(value, name, expected)
    if number != int(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{name} is {value!r}; expected {expected}")
    return int(number)


def _check_object(obj: Any, name: str) -> tuple[list[float], int, float, bool]:
    """(bbox, category_id, area, is_crowd) of one COCO object, checked."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name} is a {type(obj).__name__}; expected a dict with 'bbox', 'category_id' and 'area'")
    missing = [key for key in _REQUIRED_OBJECT_KEYS if key not in obj]
    if missing:
        raise ValueError(f"{name} has no {', '.join(repr(k) for k in missing)}; expected {_COCO_DETECTION}")
    raw = obj["bbox"]
    shape = getattr(raw, "shape", None)
    values = raw.tolist() if shape is not None else raw
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 4:
        raise ValueError(f"{name}: bbox is {raw!r}; expected [x, y, width, height], four numbers")
    box = [_scalar(v, f"{name}: bbox {values!r}", "[x, y, width, height], four finite numbers") for v in values]
    for side, value in zip(("width", "height"), box[2:]):
        if value < 0:
            raise ValueError(
                f"{name}: bbox {values!r} has a negative {side} ({value:g}); expected [x, y, width, height] "
                "with width, height >= 0 (COCO's format, not corners)"
            )
    category = _whole(obj["category_id"], f"{name}: category_id", minimum=0)
    area = _scalar(obj["area"], f"{name}: area", "a finite number >= 0")
    if area < 0:
        raise ValueError(f"{name}: area is {obj['area']!r}; expected a finite number >= 0")
    crowd = obj.get("iscrowd", 0)
    if _whole(crowd, f"{name}: iscrowd") not in (0, 1):
        raise ValueError(f"{name}: iscrowd is {crowd!r}; expected 0 or 1")
    return box, category, area, bool(crowd)


def coco_objects(annotations: Any, count: int) -> list[_Objects]:
    """Check COCO detection annotations (one dict per image, or a dict for a single image) against the number of
    images; per image its id and its non-crowd objects (crowd objects are dropped, as transformers drops them).

    Raises:
        ValueError: A count that does not match, or a malformed annotation (the message names the image, the
            object and the value).
    """
    targets = [annotations] if isinstance(annotations, Mapping) else annotations
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence):
        raise ValueError(
            f"annotations must be a dict (one image) or a list of dicts, one per image, got {type(annotations).__name__}"
        )
    if len(targets) != count:
        raise ValueError(f"got {len(targets)} annotations for {count} images; expected one per image")
    checked = []
    for index, target in enumerate(targets):
        where = f"annotation of image {index}"
        if not isinstance(target, Mapping):
            raise ValueError(f"{where} is a {type(target).__name__}; expected {_COCO_DETECTION}")
        missing = [key for key in ("image_id", "annotations") if key not in target]
        if missing:
            raise ValueError(f"{where} has no {', '.join(repr(k) for k in missing)}; expected {_COCO_DETECTION}")
        objects = _Objects(_whole(target["image_id"], f"{where}: image_id"))
        found = target["annotations"]
        if isinstance(found, (str, bytes, Mapping)) or not isinstance(found, Sequence):
            raise ValueError(f"{where}: 'annotations' is a {type(found).__name__}; expected a list of objects")
        for number, obj in enumerate(found):
            box, category, area, crowd = _check_object(obj, f"image {index}, object {number}")
            if not crowd:
                objects.boxes.append(box)
                objects.classes.append(category)
                objects.areas.append(area)
        checked.append(objects)
    return checked


def detection_target(objects: _Objects, height: int, width: int) -> dict[str, np.ndarray]:
    """An image's objects as DETR's target at the image's own size: boxes as corners, clipped to the image; the
    boxes left with no width or height dropped (with their class and area)."""
    boxes = np.asarray(objects.boxes, dtype=np.float32).reshape(-1, 4)  # (N, 4) x, y, w, h
    boxes[:, 2:] += boxes[:, :2]  # (N, 4) x0, y0, x1, y1
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    classes = np.asarray(objects.classes, dtype=np.int64)
    return {
        "image_id": np.asarray([objects.image_id], dtype=np.int64),
        "class_labels": classes[keep],
        "boxes": boxes[keep],
        "area": np.asarray(objects.areas, dtype=np.float32)[keep],
        "iscrowd": np.zeros(int(keep.sum()), dtype=np.int64),
        "orig_size": np.asarray([height, width], dtype=np.int64),
        "size": np.asarray([height, width], dtype=np.int64),
    }


def _resize_target(target: dict[str, np.ndarray], new_size: tuple[int, int]) -> None:
    """Scale a target's corner boxes and areas from its `size` to `new_size` (in place)."""
    ratio_h, ratio_w = (new / old for new, old in zip(new_size, target["size"].tolist()))
    target["boxes"] = target["boxes"] * np.asarray([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = np.asarray(new_size, dtype=np.int64)


def _normalize_target(target: dict[str, np.ndarray]) -> None:
    """Corner boxes in pixels -> (center x, center y, width, height) as fractions of the target's `size`."""
    x0, y0, x1, y1 = target["boxes"].T
    center = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)  # (N, 4)
    height, width = target["size"].tolist()
    target["boxes"] = center / np.asarray([width, height, width, height], dtype=np.float32)


def _pad_target(target: dict[str, np.ndarray], padded: tuple[int, int], rescale_boxes: bool) -> None:
    """A target for its image padded at the bottom and right to `padded`: normalized boxes become fractions of the
    padded size (computed in float64, as transformers' PIL back end does)."""
    height, width = target["size"].tolist()
    if rescale_boxes:
        ratios = np.asarray([width / padded[1], height / padded[0], width / padded[1], height / padded[0]])
        target["boxes"] = (target["boxes"] * ratios).astype(np.float32)
    target["size"] = np.asarray(padded, dtype=np.int64)


# --------------------------------------------------------------------------------------------- post-processing


def object_detections(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    threshold: float = 0.5,
    target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
    top_k: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Per image `{"scores", "labels", "boxes"}` from Deformable DETR's outputs, as transformers' post-processing.

    Each class of each query is scored on its own (sigmoid, not softmax: there is no "no object" class); the
    `top_k` best (query, class) pairs of an image are kept, then those scoring above `threshold`, best first.

    Args:
        logits: `(B, queries, classes)` class logits.
        pred_boxes: `(B, queries, 4)` boxes as (center x, center y, width, height) fractions of the input.
        threshold: Keep scores strictly above this.
        target_sizes: `(B, 2)` tensor or per image `(height, width)`: boxes come back in those pixels; None keeps
            them as fractions.
        top_k: How many (query, class) pairs to consider per image.

    Returns:
        Per image `scores` `(n,)`, `labels` `(n,)` int64 and `boxes` `(n, 4)` as corners (x0, y0, x1, y1).
    """
    if logits.ndim != 3 or pred_boxes.ndim != 3 or pred_boxes.shape[:2] != logits.shape[:2] or pred_boxes.shape[2] != 4:
        raise ValueError(
            f"expected logits (batch, queries, classes) and pred_boxes (batch, queries, 4), got "
            f"{tuple(logits.shape)} and {tuple(pred_boxes.shape)}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    batch, _, classes = logits.shape
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {batch}; expected one per image")
    scores = logits.sigmoid().reshape(batch, -1)  # (B, queries * classes)
    top_scores, top_index = torch.topk(scores, min(top_k, scores.shape[1]), dim=1)  # (B, k)
    query = torch.div(top_index, classes, rounding_mode="floor")
    labels = top_index % classes
    cx, cy, w, h = pred_boxes.unbind(-1)
    corners = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)  # (B, queries, 4)
    boxes = torch.gather(corners, 1, query.unsqueeze(-1).repeat(1, 1, 4))  # (B, k, 4)
    if target_sizes is not None:
        if isinstance(target_sizes, torch.Tensor):
            heights, widths = target_sizes.unbind(1)
        else:
            heights = torch.tensor([float(s[0]) for s in target_sizes])
            widths = torch.tensor([float(s[1]) for s in target_sizes])
        scale = torch.stack([widths, heights, widths, heights], dim=1).to(boxes.device)  # (B, 4)
        boxes = boxes * scale[:, None, :]
    results = []
    for s, label, box in zip(top_scores, labels, boxes):
        kept = s > threshold
        results.append({"scores": s[kept], "labels": label[kept], "boxes": box[kept]})
    return results


# ------------------------------------------------------------------------------------------------ processors


_SIZE_CHECKED_HERE = {"height": 1, "width": 1}  # stands in for `size` in the shared checks, which know other forms


class DeformableDetrImageProcessor(ViTImageProcessor):
    """Deformable DETR preprocessing with PIL and NumPy, equal to transformers' `DeformableDetrImageProcessorPil`,
    COCO detection annotations included.

    Defaults: RGB, bilinear resize to shortest edge 800 / longest edge at most 1333, x/255, ImageNet mean/std,
    padding to the batch's largest image with a `pixel_mask`, annotations converted to normalized
    (center x, center y, width, height) boxes.

    Args:
        max_size: transformers' legacy longest edge for an int `size` (`"size": 800, "max_size": 1333` in old
            configs); not stored.
        pad_and_return_pixel_mask: transformers' legacy name of `do_pad`.
        **kwargs: The options of `pvtkit.processing._BaseImageProcessor` (`size` in `detection_size`'s forms) and:
            `do_pad` (pad the batch and return `pixel_mask`), `pad_size` (`{"height", "width"}` to pad every image
            to instead of the batch's largest), `format` ("coco_detection"), `do_convert_annotations` (boxes to
            normalized center form; default: `do_normalize`).
    """

    image_processor_type = "DeformableDetrImageProcessor"
    model_input_names = ["pixel_values", "pixel_mask"]
    _defaults = {
        **_BaseImageProcessor._defaults,
        "size": DEFAULT_SIZE,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "do_pad": True,
        "pad_size": None,
        "format": "coco_detection",
        "do_convert_annotations": None,
    }

    def __init__(
        self, *, max_size: int | None = None, pad_and_return_pixel_mask: bool | None = None, **kwargs: Any
    ) -> None:
        if pad_and_return_pixel_mask is not None:
            kwargs.setdefault("do_pad", pad_and_return_pixel_mask)
        if kwargs.get("size") is not None and max_size is not None:
            kwargs["size"] = detection_size(kwargs["size"], max_size)
        super().__init__(**kwargs)

    def _resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        size = overrides.get("size")
        opts = super()._resolve({**overrides, "size": _SIZE_CHECKED_HERE})
        opts["size"] = detection_size(getattr(self, "size", self._defaults["size"]) if size is None else size)
        if opts["pad_size"] is not None:
            opts["pad_size"] = pad_size_dict(opts["pad_size"])
        fmt = str(getattr(opts["format"], "value", opts["format"]))
        if fmt not in ANNOTATION_FORMATS:
            raise ValueError(f"format {fmt!r} is not supported; pvtkit's detection processors read coco_detection")
        opts["format"] = fmt
        if opts["do_convert_annotations"] is None:  # transformers: it follows do_normalize unless set
            opts["do_convert_annotations"] = opts["do_normalize"]
        for key in ("do_pad", "do_convert_annotations"):
            opts[key] = bool(opts[key])
        return opts

    def _target_size(self, height: int, width: int, opts: dict[str, Any], name: str) -> tuple[int, int]:
        new_height, new_width = resized_size(height, width, opts["size"])
        if new_height < 1 or new_width < 1:
            raise ImageLoadError(
                f"{name}: {height}x{width} (height x width) would be resized to {new_height}x{new_width} under "
                f"size {opts['size']}; expected an image whose sides both stay at least one pixel"
            )
        return new_height, new_width

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        exif_transpose: bool | None = None,
        device: str | torch.device | None = None,
        return_segmentation_masks: bool | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Images and, optionally, their COCO detection annotations into Deformable DETR's input.

        Args:
            images: As `ViTImageProcessor.preprocess` takes them.
            annotations: Per image `{"image_id": int, "annotations": [{"bbox": [x, y, w, h], "category_id": int,
                "area": float, "iscrowd": 0 or 1}, ...]}` in the image's pixels as loaded (EXIF orientation applied to
                files), a dict for a single image. Other keys (`segmentation`, `keypoints`, ...) are ignored.
            return_tensors: "pt" or "np" for stacked `pixel_values` / `pixel_mask` and tensors or arrays in
                `labels`; None for lists (and the back end's own arrays or tensors in `labels`).
            input_data_format, exif_transpose, device: As in `ViTImageProcessor.preprocess`.
            return_segmentation_masks: Only False/None: masks are not supported.
            **overrides: Any constructor option (size, do_pad, pad_size, do_convert_annotations, ...) for this call.

        Returns:
            A `BatchFeature` with `pixel_values`, `pixel_mask` (with `do_pad`) and, given annotations, `labels`: per
            image `image_id`, `class_labels` (int64), `boxes` (float32 `(n, 4)`: normalized (center x, center y,
            width, height) of the padded image with `do_convert_annotations`, else corners in the resized image's
            pixels), `area` (float32, scaled with the image), `iscrowd` (zeros), `orig_size` and `size` (the
            model's input size, padding included), both (height, width).

        Raises:
            ValueError: A malformed annotation (naming the image, the object and the value), annotations that do
                not match the images in number, an image larger than `pad_size`, or an unknown option value.
        """
        if return_segmentation_masks:
            raise ValueError("return_segmentation_masks=True is not supported: pvtkit's DETR processors do boxes")
        unknown = set(overrides) - set(self._defaults)
        if unknown:
            raise TypeError(f"unknown preprocess option(s): {sorted(unknown)}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        opts = self._resolve(overrides)
        flat = _flatten_images(images)
        objects = None if annotations is None else coco_objects(annotations, len(flat))
        exif = self.exif_transpose if exif_transpose is None else exif_transpose
        pixel_values, sizes = self._process(flat, opts, input_data_format, exif, device)
        out_sizes = [tuple(int(s) for s in image.shape[-2:]) for image in pixel_values]
        targets = None
        if objects is not None:
            targets = [detection_target(o, *size) for o, size in zip(objects, sizes)]
            for target, out_size in zip(targets, out_sizes):
                if opts["do_resize"]:
                    _resize_target(target, out_size)
                if opts["do_convert_annotations"]:
                    _normalize_target(target)
        out = BatchFeature()
        if opts["do_pad"]:
            padded = self._padded_size(out_sizes, opts["pad_size"])
            masks = []
            for index, (image, out_size) in enumerate(zip(pixel_values, out_sizes)):
                if out_size != padded:
                    pixel_values[index] = self._pad(image, padded)
                    if targets is not None:
                        _pad_target(targets[index], padded, opts["do_convert_annotations"])
                masks.append(self._pixel_mask(out_size, padded, image))
            out["pixel_mask"] = self._collate(masks, return_tensors)
        out["pixel_values"] = self._collate(pixel_values, return_tensors)
        if targets is not None:
            where = device if device is not None else getattr(pixel_values[0], "device", None)
            out["labels"] = [BatchFeature(self._label_arrays(t, return_tensors, where)) for t in targets]
        return out

    @staticmethod
    def _padded_size(sizes: list[tuple[int, int]], pad_size: dict[str, int] | None) -> tuple[int, int]:
        """The batch's largest (height, width), or `pad_size`, which every image must fit."""
        if pad_size is None:
            return max(h for h, _ in sizes), max(w for _, w in sizes)
        padded = (pad_size["height"], pad_size["width"])
        for index, (height, width) in enumerate(sizes):
            if height > padded[0] or width > padded[1]:
                raise ValueError(
                    f"image {index} is {height}x{width} (height x width) after resizing, larger than pad_size "
                    f"{padded[0]}x{padded[1]}; expected a pad_size at least as large as every resized image"
                )
        return padded

    @staticmethod
    def _pad(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A C x H x W image with zeros below and to the right up to `size`."""
        padded = np.zeros((image.shape[0], *size), dtype=image.dtype)
        padded[:, : image.shape[1], : image.shape[2]] = image
        return padded

    @staticmethod
    def _pixel_mask(image_size: tuple[int, int], size: tuple[int, int], image: Any) -> np.ndarray:
        """int64 `size` mask: 1 on the image (top left, `image_size`), 0 on the padding."""
        mask = np.zeros(size, dtype=np.int64)
        mask[: image_size[0], : image_size[1]] = 1
        return mask

    @staticmethod
    def _label_arrays(target: dict[str, np.ndarray], return_tensors: str | None, device: Any) -> dict[str, Any]:
        """A target's arrays as `return_tensors` asks: torch tensors for "pt", else NumPy arrays."""
        if return_tensors == "pt":
            return {key: torch.from_numpy(value) for key, value in target.items()}
        return target

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        top_k: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """Scored, labelled corner boxes from a detection model's output (anything with `logits` and
        `pred_boxes`), in the pixels of `target_sizes` (see `object_detections`)."""
        return object_detections(outputs.logits, outputs.pred_boxes, threshold, target_sizes, top_k)


class DeformableDetrImageProcessorFast(_TorchBackend, DeformableDetrImageProcessor):
    """Deformable DETR preprocessing (annotations included) on batched torch tensors, as transformers' torchvision
    back end; `labels` are torch tensors on the images' device unless `return_tensors="np"`."""

    image_processor_type = "DeformableDetrImageProcessorFast"

    @staticmethod
    def _pad(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.nn.functional.pad(image, (0, size[1] - image.shape[2], 0, size[0] - image.shape[1]))

    @staticmethod
    def _pixel_mask(image_size: tuple[int, int], size: tuple[int, int], image: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(size, dtype=torch.int64, device=image.device)
        mask[: image_size[0], : image_size[1]] = 1
        return mask

    @staticmethod
    def _label_arrays(target: dict[str, np.ndarray], return_tensors: str | None, device: Any) -> dict[str, Any]:
        if return_tensors == "np":
            return target
        return {key: torch.from_numpy(value).to(device) for key, value in target.items()}


register_image_processors(
    {
        "DeformableDetrImageProcessor": DeformableDetrImageProcessor,
        "DeformableDetrImageProcessorPil": DeformableDetrImageProcessor,
        "DeformableDetrFeatureExtractor": DeformableDetrImageProcessor,
        "DeformableDetrImageProcessorFast": DeformableDetrImageProcessorFast,
    }
)

__all__ = [
    "DeformableDetrImageProcessor",
    "DeformableDetrImageProcessorFast",
    "detection_size",
    "object_detections",
    "resized_size",
]
