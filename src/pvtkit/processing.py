"""The machinery of the image processors that read and write Hugging Face `preprocessor_config.json` files:
loading images, label maps, the options and config I/O every processor shares, the batched torch back end, and the
post-processing of segmentation and depth outputs. The processors themselves live with their families
(`pvtkit.models.<family>.processing`) and register here; `pvtkit.models.family.IMAGE_PROCESSOR_TYPES` is the
complete table.

Two back ends compute the same pipeline (convert to RGB, resize, rescale, normalize; label maps: check, reduce,
nearest-neighbour resize; depth maps: check, resize by nearest neighbour or a masked area mean, `resize_depth`):

* `ViTImageProcessor`, `PvtImageProcessor`, `SegformerImageProcessor`, `GLPNImageProcessor` work image by image
  with PIL and NumPy and reproduce transformers' PIL back end (`...ImageProcessorPil`) bit for bit.
* The `...ImageProcessorFast` classes work on batched torch tensors (CPU or GPU) and follow transformers'
  torchvision back end, implemented with `torch.nn.functional.interpolate` only (`_TorchBackend`).

Deliberate differences from transformers, each covered by a test:

* `do_convert_rgb` defaults to True (transformers leaves it unset, so a grayscale or RGBA input fails there with a
  channel-count error). It is written to the config, so transformers loading our file behaves like we do.
* Modes PIL cannot convert to RGB without losing data are scaled, not clipped: `I;16` maps 0..65535 onto 0..255;
  `I` and `F` are read as 8-bit when their values fit in 0..255, as 16-bit when they fit in 0..65535, and `F`
  values in [0, 1] that are not whole numbers as fractions of 255. PIL's own `convert("RGB")` clips these.
* Bad inputs raise `ImageLoadError` (a `ValueError`) naming the input, where transformers raises assorted errors;
  a label map must be one band of whole numbers at its image's size (transformers takes anything and misaligns).
* The Fast classes save as `ViTImageProcessorFast` / `PvtImageProcessorFast` (transformers 4's names, which
  transformers 5 still resolves to its ViT / PVT processors).
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from pvtkit._files import atomic_write_json


class _ImportedAtFirstUse:
    """A module imported when one of its attributes is first read. The PIL processors returning NumPy run without
    PyTorch (a TensorFlow or JAX process, `pvtkit.keras`); the tensor back ends, `return_tensors="pt"` and the
    post-processing of model outputs import it when they run."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:  # only for names not yet cached on the instance
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)  # the tensor back ends read torch.* per image: one lookup, then an attribute
        return value


torch: Any = _ImportedAtFirstUse("torch")
F: Any = _ImportedAtFirstUse("torch.nn.functional")


def _is_tensor(value: Any) -> bool:
    """A PyTorch tensor? (Only when torch is loaded: without it, nothing is one, and nothing imports it.)"""
    module = sys.modules.get("torch")
    return module is not None and isinstance(value, module.Tensor)


IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

ImageInput = Union[PIL.Image.Image, np.ndarray, "torch.Tensor", str, os.PathLike]

# PIL's resampling filter numbers, which is how transformers stores `resample` in its JSON files.
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}
# Keys transformers writes for bookkeeping; they carry no processing option.
# `backend` is AutoImageProcessor's choice of class (transformers 5), never a processor option: dropped, not written.
_SERVICE_KEYS = {"image_processor_type", "feature_extractor_type", "processor_class", "auto_map", "backend"}
# Options transformers knows but these processors do not implement: loading a file that switches one on would
# silently compute something else, so we refuse.
_UNSUPPORTED_IF_TRUE = ("do_center_crop", "do_pad", "do_reduce_labels")


def fixed_size(processor: Any) -> tuple[int, int] | None:
    """The (height, width) every image comes out of `processor` at, or None (no resize, or `shortest_edge`)."""
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size and getattr(processor, "do_resize", True):
        return int(size["height"]), int(size["width"])
    return None


class ImageLoadError(ValueError):
    """An input could not be turned into an image; the message names the input and what was expected."""


class BatchFeature(dict):
    """The processors' output: a dict (`pixel_values`) with attribute access and a tensor-moving `.to()`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move tensors to a device and/or cast them, like `torch.Tensor.to`; returns `self`.

        A dtype is applied to floating-point tensors only, so integer tensors keep their meaning.
        """
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        for arg in args:
            if type(arg).__name__ == "dtype" and type(arg).__module__ == "torch":
                dtype = arg
            else:
                device = arg
        for key, value in self.items():
            if _is_tensor(value):
                self[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else None, **kwargs)
        return self


# --------------------------------------------------------------------------------------------------- loading


def _describe(image: Any, index: int | None = None) -> str:
    """Name an input for error messages: its path when it has one, else its kind, shape and dtype."""
    where = f"image {index} " if index is not None else "image "
    if isinstance(image, (str, os.PathLike)):
        return f"{where}'{os.fspath(image)}'"
    if isinstance(image, PIL.Image.Image):
        path = getattr(image, "filename", "") or ""
        return f"{where}(PIL {image.mode} {image.size[0]}x{image.size[1]}{', ' + path if path else ''})"
    if isinstance(image, np.ndarray) or _is_tensor(image):
        kind = "numpy array" if isinstance(image, np.ndarray) else "torch tensor"
        return f"{where}({kind} of shape {tuple(image.shape)}, dtype {image.dtype})"
    return f"{where}({type(image).__name__})"


def load_image(
    image: str | os.PathLike | bytes | PIL.Image.Image,
    exif_transpose: bool = True,
    convert_rgb: bool = True,
    name: str | None = None,
) -> PIL.Image.Image:
    """Open an image file or encoded bytes (or take a PIL image), fully decoded, upright and, by default, in RGB.

    Args:
        image: A path to an image file, the bytes of an encoded image (an upload), or an already opened PIL image.
        exif_transpose: Rotate/flip the image as its EXIF orientation tag says, as cameras and viewers do.
        convert_rgb: Convert to RGB with `convert_to_rgb` (alpha composited over white, 16-bit data scaled).
        name: What error messages call encoded bytes (default: "image bytes").

    Returns:
        The image, decoded into memory (the file is closed).

    Raises:
        FileNotFoundError: The path does not name a file.
        ImageLoadError: The file or bytes are not an image PIL can decode, are truncated or empty, or are so large
            that PIL's decompression-bomb guard (`PIL.Image.MAX_IMAGE_PIXELS`) refuses them.
    """
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(image, (str, os.PathLike)):
            source: Any = os.fspath(image)
            label = f"'{source}'"
            if not os.path.isfile(source):
                raise FileNotFoundError(f"image file not found: {label}")
        else:
            source, label = io.BytesIO(image), name or "image bytes"
            if not len(image):
                raise ImageLoadError(f"{label}: empty (0 bytes); expected an encoded image (JPEG, PNG, ...)")
        try:
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; we treat both levels as refusal.
            with warnings.catch_warnings():
                warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
                with PIL.Image.open(source) as opened:
                    opened.load()
                    img = opened
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
            raise ImageLoadError(
                f"{label}: refusing to decode an image this large ({e}); expected at most "
                f"{PIL.Image.MAX_IMAGE_PIXELS} pixels. Raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted."
            ) from e
        except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
            reason = "not a format PIL recognises" if isinstance(e, PIL.UnidentifiedImageError) else str(e)
            raise ImageLoadError(
                f"{label}: cannot decode as an image ({reason}); expected a complete image file PIL can read "
                "(JPEG, PNG, WebP, BMP, TIFF, GIF, ...)"
            ) from e
    elif isinstance(image, PIL.Image.Image):
        img = image
    else:
        raise TypeError(f"load_image expects a path, encoded bytes or a PIL image, got {type(image).__name__}")
    if exif_transpose:
        img = PIL.ImageOps.exif_transpose(img)
    return convert_to_rgb(img) if convert_rgb else img


# ------------------------------------------------------------------------------------------ RGB conversion


def _high_bit_to_uint8(img: PIL.Image.Image) -> np.ndarray:
    """Map a 16-bit, 32-bit integer or float single-band image onto 0..255 by scaling (see the module doc)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 / 255 == 257 exactly
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(f"{_describe(img)} contains NaN or infinite values; expected finite pixel values")
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    whole = bool(np.all(values == np.round(values)))
    if low >= 0 and high <= 255 and (whole or high > 1):
        return np.round(values).astype(np.uint8)
    if low >= 0 and high <= 1:
        return np.round(values * 255.0).astype(np.uint8)
    if low >= 0 and high <= 65535:
        return np.round(values / 257.0).astype(np.uint8)
    raise ImageLoadError(
        f"{_describe(img)} has values in [{low}, {high}]; expected 0..255, 0..65535 or [0, 1] for mode {img.mode}"
    )


def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any common PIL mode to RGB.

    Transparency (an alpha band, or a palette/`transparency` entry) is composited over white, as transformers
    does; high-bit-depth modes are scaled rather than clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return PIL.Image.fromarray(_high_bit_to_uint8(image), mode="L").convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _pil_to_array(image: PIL.Image.Image, do_convert_rgb: bool, name: str) -> np.ndarray:
    """Pixels of a PIL image (H x W or H x W x C), RGB-converted if asked; decoding errors name the input."""
    try:
        return np.array(convert_to_rgb(image) if do_convert_rgb else image)
    except (OSError, SyntaxError) as e:  # a lazily opened, truncated or corrupt file decodes only now
        raise ImageLoadError(f"{name}: cannot decode the image ({e}); expected a complete image") from e


def _array_to_rgb_hwc(image: np.ndarray) -> np.ndarray:
    """RGB conversion of a channels-last array, as transformers' NumPy path does it (alpha over white)."""
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 4:
        is_int = np.issubdtype(image.dtype, np.integer)
        if not is_int and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(
                f"a 4-channel float image must lie in [0, 1] to composite its alpha, got [{image.min()}, {image.max()}]"
            )
        white = 255 if is_int else 1.0
        alpha = image[..., 3:4] / white
        blended = alpha * image[..., :3] + (1 - alpha) * white
        return np.round(blended).astype(image.dtype) if is_int else blended.astype(image.dtype)
    return image


# --------------------------------------------------------------------------------------- shared helpers


def _channel_axis(shape: Sequence[int], input_data_format: str | None, name: str) -> int:
    """Which axis of a 3-d image holds the channels (0 or 2).

    Without `input_data_format` we follow transformers: an axis of size 1, 3 or 4 is the channel axis, the first
    one when both ends qualify. That ambiguous case (e.g. a 3x3 RGB image, or a 4-pixel-high RGBA strip) is
    reported with a warning rather than guessed silently.
    """
    if input_data_format is not None:
        fmt = str(getattr(input_data_format, "value", input_data_format))
        if fmt not in ("channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
        return 0 if fmt == "channels_first" else 2
    first, last = shape[0] in (1, 3, 4), shape[2] in (1, 3, 4)
    if first and last:
        warnings.warn(
            f"{name}: channel axis is ambiguous, assuming channels first as transformers does; pass "
            "input_data_format='channels_first' or 'channels_last' to say which",
            stacklevel=4,
        )
    if first:
        return 0
    if last:
        return 2
    raise ImageLoadError(
        f"{name}: cannot find a channel axis; expected 1, 3 or 4 channels in the first or last "
        "dimension (H x W x C or C x H x W)"
    )


def _check_array(image: np.ndarray | torch.Tensor, name: str) -> None:
    """Reject empty, wrongly shaped, non-numeric and NaN-carrying arrays with a message naming the input."""
    if image.ndim not in (2, 3):
        raise ImageLoadError(f"{name}: expected a 2-d (H, W) or 3-d (H, W, C) / (C, H, W) image, got {image.ndim}-d")
    if any(s == 0 for s in image.shape):
        raise ImageLoadError(f"{name}: the image is empty; expected at least one pixel")
    if isinstance(image, np.ndarray):
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise ImageLoadError(f"{name}: expected integer or float pixels, got dtype {image.dtype}")
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise ImageLoadError(f"{name}: contains NaN or infinite values; expected finite pixel values")
    else:
        if image.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ImageLoadError(f"{name}: expected integer or float pixels, got dtype {image.dtype}")
        if image.is_floating_point() and not torch.isfinite(image).all():
            raise ImageLoadError(f"{name}: contains NaN or infinite values; expected finite pixel values")


def image_size(image: Any, input_data_format: str | None = None) -> tuple[int, int]:
    """(height, width) of one image as the processors read it: a PIL image, or an (H, W), (H, W, C) or (C, H, W)
    array or tensor (the channel axis found as `_channel_axis` finds it)."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if image.ndim == 2:
        return int(image.shape[0]), int(image.shape[1])
    axis = _channel_axis(image.shape, input_data_format, _describe(image))
    height, width = (int(s) for i, s in enumerate(image.shape) if i != axis)
    return height, width


def _flatten_images(images: Any) -> list[Any]:
    """One list of single images from a single image, a list of images, or a 4-d batch array/tensor."""
    if (isinstance(images, np.ndarray) or _is_tensor(images)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            flat.extend(list(item) if (isinstance(item, np.ndarray) or _is_tensor(item)) and item.ndim == 4 else [item])
        if not flat:
            raise ImageLoadError("no images were given; expected at least one image")
        return flat
    return [images]


def _resize_target(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """Output (height, width) for a size dict, with transformers' rounding for `shortest_edge`."""
    if "shortest_edge" in size:
        short_side = size["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(short_side * long / short)  # truncation, as transformers (and torchvision) do
        return (new_long, short_side) if width <= height else (short_side, new_long)
    return size["height"], size["width"]


def _normalize_size(size: Any) -> dict[str, int]:
    """Accept an int (square), an (h, w) pair, or a {"height", "width"} / {"shortest_edge"} dict."""
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    if isinstance(size, dict) and set(size) in ({"height", "width"}, {"shortest_edge"}):
        if all(isinstance(v, int) and v > 0 for v in size.values()):
            return {k: int(v) for k, v in size.items()}
    raise ValueError(
        f"size must be an int, (height, width), {{'height', 'width'}} or {{'shortest_edge'}} with "
        f"positive ints, got {size!r}"
    )


# ------------------------------------------------------------------------------------------- label maps

_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


def _flatten_label_maps(maps: Any, count: int) -> list[Any]:
    """One list of single maps from a map, a list of maps or a 3-d (batch, H, W) array/tensor. With one image, a
    3-d array is that image's map (`(1, H, W)`, `(H, W, 1)`, or a multi-channel map `label_array` refuses)."""
    if (isinstance(maps, np.ndarray) or _is_tensor(maps)) and maps.ndim == 3 and count > 1:
        return list(maps)
    if isinstance(maps, (list, tuple)):
        return list(maps)
    return [maps]


def label_array(label: Any, name: str = "segmentation map") -> np.ndarray:
    """A segmentation map as an `(H, W)` int64 array of class indices.

    Takes a PIL image of one band (modes L, P, I, I;16: palette images give their indices, not colours) or an array
    or tensor of shape `(H, W)`, `(1, H, W)` or `(H, W, 1)` holding whole numbers. A colour (multi-channel) map or
    fractional values raise `ImageLoadError`: they would have to be turned into classes first.
    """
    if isinstance(label, PIL.Image.Image):
        if label.mode not in _LABEL_MODES:
            raise ImageLoadError(
                f"{name} is a {label.mode} image; expected one class index per pixel (a PIL image "
                "of mode L, P, I or I;16, or an integer array), not a colour or multi-band image"
            )
        array = np.array(label)
    elif _is_tensor(label):
        array = label.detach().cpu().numpy()
    elif isinstance(label, np.ndarray):
        array = label
    else:
        raise TypeError(f"{name}: expected a PIL image, numpy array, torch tensor or path, got {type(label).__name__}")
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2:
        raise ImageLoadError(
            f"{name} has shape {tuple(array.shape)}; expected (height, width) class indices, one "
            "channel (a colour-coded mask must be mapped to class indices first)"
        )
    if array.size == 0:
        raise ImageLoadError(f"{name} is empty; expected at least one pixel")
    if array.dtype == bool:
        return array.astype(np.int64)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageLoadError(f"{name}: expected integer class indices, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            value = array[bad].flat[0]
            raise ImageLoadError(f"{name} holds non-integer values (e.g. {value}); expected integer class indices")
    return array.astype(np.int64)


def reduce_labels(label: np.ndarray) -> np.ndarray:
    """transformers' `do_reduce_labels`: 0 (background, e.g. ADE20k's "other") becomes 255, the ignore index, and
    every other class k becomes k - 1; 255 stays 255."""
    out = label - 1
    out[(label == 0) | (label == 255)] = 255
    return out


# ------------------------------------------------------------------------------------------- depth maps

_DEPTH_MODES = ("F", "I", "I;16", "I;16L", "I;16B", "I;16N")
DEPTH_RESAMPLES = ("nearest", "area")


def _flatten_depth_maps(maps: Any) -> list[Any]:
    """One list of single depth maps from a map, a list of maps or a 3-d `(batch, H, W)` array/tensor."""
    if (isinstance(maps, np.ndarray) or _is_tensor(maps)) and maps.ndim == 3:
        return list(maps)
    if isinstance(maps, (list, tuple)):
        return list(maps)
    return [maps]


def depth_array(depth: Any, depth_scale: float = 1.0, name: str = "depth map") -> np.ndarray:
    """A depth map as an `(H, W)` float64 array of metres, 0 where there is no measurement.

    Takes a 2-d array or tensor (metres as given) or a PIL image of mode F, I or I;16 (its values divided by
    `depth_scale`: 1000 for NYU's millimetre PNGs, 256 for KITTI's). Non-finite values become 0 (no measurement);
    a map that is not 2-d, empty, not numeric or holds a negative depth raises `ImageLoadError` (a `ValueError`).
    """
    if isinstance(depth, PIL.Image.Image):
        if depth.mode not in _DEPTH_MODES:
            raise ImageLoadError(
                f"{name} is a {depth.mode} image; expected one depth per pixel (a PIL image of mode F, I or I;16, "
                "or a float array of metres)"
            )
        array = np.array(depth).astype(np.float64) / depth_scale
    elif _is_tensor(depth):
        tensor = depth.detach().cpu()
        array = (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()
    elif isinstance(depth, np.ndarray):
        array = depth
    else:
        raise TypeError(f"{name}: expected a PIL image, numpy array, torch tensor or path, got {type(depth).__name__}")
    if array.ndim != 2:
        raise ImageLoadError(f"{name} has shape {tuple(array.shape)}; expected a 2-d (height, width) map of depths")
    if array.size == 0:
        raise ImageLoadError(f"{name} is empty; expected at least one pixel")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageLoadError(f"{name}: expected integer or float depths, got dtype {array.dtype}")
    array = array.astype(np.float64)
    array[~np.isfinite(array)] = 0.0
    negative = np.argwhere(array < 0)
    if len(negative):
        row, col = (int(v) for v in negative[0])
        raise ImageLoadError(
            f"{name} holds a negative depth {array[row, col]} at row {row}, column {col}; expected depths >= 0 "
            "(0 = no measurement)"
        )
    return array


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """The source index of each of `n_out` output pixels under a nearest-neighbour resize from `n_in`:
    floor((i + 0.5) * n_in / n_out), in exact integer arithmetic (PIL's NEAREST and torch's "nearest-exact")."""
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """`(n_out, n_in)` float64: how much of source pixel j output pixel i covers (in units of 1 / (n_in n_out) of a
    pixel, exact integers), for an area resize from `n_in` pixels to `n_out`."""
    i = np.arange(n_out, dtype=np.int64)[:, None]
    j = np.arange(n_in, dtype=np.int64)[None, :]
    overlap = np.minimum((i + 1) * n_in, (j + 1) * n_out) - np.maximum(i * n_in, j * n_out)
    return np.clip(overlap, 0, None).astype(np.float64)


def resize_depth(depth: np.ndarray, size: tuple[int, int], resample: str = "nearest") -> np.ndarray:
    """Resize an `(H, W)` depth map (0 = no measurement) to `size` without mixing invalid pixels into valid ones:
    "nearest" takes each output pixel from one source pixel (`nearest_indices`); "area" averages the valid source
    pixels under each output pixel, weighted by how much of them it covers (an output pixel over no valid pixel
    stays 0). float32 out."""
    height, width = size
    if resample == "nearest":
        rows, cols = nearest_indices(depth.shape[0], height), nearest_indices(depth.shape[1], width)
        return depth[np.ix_(rows, cols)].astype(np.float32)
    if resample != "area":
        raise ValueError(f"depth_resample must be one of {', '.join(DEPTH_RESAMPLES)}, got {resample!r}")
    wh, ww = area_weights(depth.shape[0], height), area_weights(depth.shape[1], width)
    valid = (depth > 0).astype(np.float64)
    total = wh @ (depth * valid) @ ww.T
    weight = wh @ valid @ ww.T
    return np.divide(total, weight, out=np.zeros_like(total), where=weight > 0).astype(np.float32)


def resize_depth_torch(depth: np.ndarray, size: tuple[int, int], resample: str = "nearest", device: Any = None) -> Any:
    """`resize_depth` computed with torch on `device` (the same numbers: float64 sums, float32 out)."""
    height, width = size
    t = torch.from_numpy(depth).to(device)
    if resample == "nearest":
        rows = torch.from_numpy(nearest_indices(depth.shape[0], height)).to(t.device)
        cols = torch.from_numpy(nearest_indices(depth.shape[1], width)).to(t.device)
        return t[rows][:, cols].float()
    if resample != "area":
        raise ValueError(f"depth_resample must be one of {', '.join(DEPTH_RESAMPLES)}, got {resample!r}")
    wh = torch.from_numpy(area_weights(depth.shape[0], height)).to(t.device)
    ww = torch.from_numpy(area_weights(depth.shape[1], width)).to(t.device)
    valid = (t > 0).double()
    total = wh @ (t * valid) @ ww.T
    weight = wh @ valid @ ww.T
    return torch.where(weight > 0, total / weight.clamp(min=1e-300), torch.zeros_like(total)).float()


# ------------------------------------------------------------------------------------------- processors


class _BaseImageProcessor:
    """Options, per-call overrides and `preprocessor_config.json` I/O shared by every processor."""

    image_processor_type = ""
    _defaults: dict[str, Any] = {
        "do_resize": True,
        "size": {"height": 224, "width": 224},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_STANDARD_MEAN,
        "image_std": IMAGENET_STANDARD_STD,
        "do_convert_rgb": True,
    }
    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool | None = None,
        size: int | Sequence[int] | dict[str, int] | None = None,
        resample: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
        exif_transpose: bool = True,
        **kwargs: Any,
    ) -> None:
        """Create a processor; every option left as None takes the class default.

        Args:
            do_resize: Resize to `size`.
            size: `{"height": h, "width": w}` (an int means a square) or `{"shortest_edge": s}` (aspect kept).
            resample: PIL filter number: 0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING.
            do_rescale: Multiply pixel values by `rescale_factor`.
            rescale_factor: Usually 1/255, mapping 8-bit values onto [0, 1].
            do_normalize: Subtract `image_mean` and divide by `image_std`, per channel.
            image_mean: Per-channel (or single) mean.
            image_std: Per-channel (or single) standard deviation.
            do_convert_rgb: Convert every input to 3-channel RGB first.
            exif_transpose: Apply EXIF orientation to images read from files (not stored in the config file).
            **kwargs: Other keys of a transformers config: bookkeeping keys are ignored, unknown ones are kept
                (and written back) with a warning, and options we do not implement raise if switched on.
        """
        values = dict(
            do_resize=do_resize,
            size=size,
            resample=resample,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=do_convert_rgb,
        )
        values.update({k: kwargs.pop(k) for k in list(kwargs) if k in self._defaults})  # a subclass's own options
        for key, value in self._resolve(values).items():
            setattr(self, key, value)
        self.exif_transpose = exif_transpose
        self._extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in _SERVICE_KEYS:
                continue
            if key in _UNSUPPORTED_IF_TRUE and value:
                raise ValueError(f"{type(self).__name__} does not implement {key}=True")
            if key not in _UNSUPPORTED_IF_TRUE:
                warnings.warn(f"{type(self).__name__}: ignoring unknown option {key}={value!r}", stacklevel=2)
            self._extra[key] = value

    def _resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Merge per-call overrides (None = keep) into this processor's options and validate the result."""
        base = {k: getattr(self, k, v) for k, v in self._defaults.items()}
        opts = {k: (base[k] if overrides.get(k) is None else overrides[k]) for k in base}
        if opts["size"] is not None or self._defaults["size"] is not None:  # GLPN sizes by `size_divisor`
            opts["size"] = _normalize_size(opts["size"])
        resample = int(opts["resample"])  # also accepts PIL.Image.Resampling members
        if resample not in RESAMPLE_NAMES:
            raise ValueError(f"resample must be a PIL filter number in 0..5, got {opts['resample']!r}")
        opts["resample"] = resample
        for key in ("image_mean", "image_std"):
            value = opts[key]
            if value is None and opts["do_normalize"]:
                raise ValueError(f"do_normalize=True needs {key}")
            if value is not None:
                opts[key] = float(value) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
        if opts["do_normalize"] and any(s == 0 for s in np.atleast_1d(opts["image_std"])):
            raise ValueError("image_std must not contain zeros")
        opts["rescale_factor"] = float(opts["rescale_factor"])
        return opts

    def __call__(self, images: ImageInput | Sequence[ImageInput], *args: Any, **kwargs: Any) -> BatchFeature:
        """Same as `preprocess`."""
        return self.preprocess(images, *args, **kwargs)

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput],
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        exif_transpose: bool | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Turn one image or a list of images into model input.

        Args:
            images: PIL images, NumPy arrays or torch tensors (H x W, H x W x C or C x H x W, uint8 or float),
                4-d batches of those, or paths to image files.
            return_tensors: "pt" for one stacked torch tensor, "np" for one stacked array, None for a list.
            input_data_format: "channels_first" or "channels_last" for array/tensor inputs; inferred if None
                (see `_channel_axis`).
            exif_transpose: Override the processor's EXIF handling for files in this call.
            device: Where the tensor back end computes (inputs are moved there); the PIL back end ignores it.
            **overrides: Any constructor option (do_resize, size, resample, ...) for this call only.

        Returns:
            A `BatchFeature` with `pixel_values`.
        """
        return self._preprocess(images, None, return_tensors, input_data_format, exif_transpose, device, overrides)

    def _preprocess(
        self,
        images: Any,
        label_maps: Any,
        return_tensors: str | None,
        fmt: str | None,
        exif_transpose: bool | None,
        device: Any,
        overrides: dict[str, Any],
        map_options: Mapping[str, Any] | None = None,
    ) -> BatchFeature:
        """`preprocess`, with the label (or depth) maps of the processors that take them (`labels` in the output;
        `map_options` go to `_label_maps`)."""
        unknown = set(overrides) - set(self._defaults)
        if unknown:
            raise TypeError(f"unknown preprocess option(s): {sorted(unknown)}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        opts = self._resolve(overrides)
        exif = self.exif_transpose if exif_transpose is None else exif_transpose
        pixel_values, sizes = self._process(_flatten_images(images), opts, fmt, exif, device)
        out = BatchFeature(pixel_values=self._collate(pixel_values, return_tensors))
        if label_maps is not None:
            labels = self._label_maps(label_maps, sizes, opts, exif, device, **(map_options or {}))
            out["labels"] = self._collate(labels, return_tensors)
        return out

    def _label_maps(
        self, maps: Any, sizes: list[tuple[int, int]], opts: dict[str, Any], exif: bool, device: Any
    ) -> list[Any]:
        """Label maps checked against their images' sizes, reduced if asked, resized by nearest neighbour (never
        interpolated, so every output value is one of the input's) to their images' output sizes."""
        flat = _flatten_label_maps(maps, len(sizes))
        if len(flat) != len(sizes):
            raise ValueError(f"got {len(flat)} segmentation maps for {len(sizes)} images; expected one per image")
        out = []
        for index, (raw, size) in enumerate(zip(flat, sizes)):
            name = "segmentation map" + _describe(raw, index).removeprefix("image")
            label = label_array(self._load(raw, index, exif), name)
            if label.shape != size:
                raise ValueError(
                    f"{name} is {label.shape[0]}x{label.shape[1]} but image {index} is "
                    f"{size[0]}x{size[1]} (height x width); a label map must have its image's size"
                )
            if opts.get("do_reduce_labels"):
                label = reduce_labels(label)
            target = self._target_size(*size, opts, name) if opts["do_resize"] else size
            out.append(self._resize_labels(label, target, device))
        return out

    def _resize_labels(self, label: np.ndarray, size: tuple[int, int], device: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def _load(image: Any, index: int, exif: bool) -> Any:
        """Open paths; other inputs pass through. Raises TypeError for unsupported input types."""
        if isinstance(image, (str, os.PathLike)):
            return load_image(image, exif_transpose=exif, convert_rgb=False)
        if not (isinstance(image, (PIL.Image.Image, np.ndarray)) or _is_tensor(image)):
            raise TypeError(f"{_describe(image, index)}: expected a PIL image, numpy array, torch tensor or path")
        return image

    def _process(
        self, images: list[Any], opts: dict[str, Any], fmt: str | None, exif: bool, device: str | torch.device | None
    ) -> tuple[list[Any], list[tuple[int, int]]]:
        """The processed images, and each one's (height, width) before resizing."""
        raise NotImplementedError

    def _target_size(self, height: int, width: int, opts: dict[str, Any], name: str) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        return _resize_target(height, width, opts["size"])

    @staticmethod
    def _collate(images: list[Any], return_tensors: str | None) -> Any:
        """A list (None), or one stacked torch tensor ("pt") or NumPy array ("np")."""
        if return_tensors is None:
            return images
        shapes = sorted({tuple(im.shape) for im in images})
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack images of different shapes {shapes} into one tensor; use a fixed "
                "{'height', 'width'} size or return_tensors=None"
            )
        if _is_tensor(images[0]):
            stacked = torch.stack(images)
            return stacked if return_tensors == "pt" else stacked.cpu().numpy()
        stacked = np.stack(images)
        return torch.from_numpy(stacked) if return_tensors == "pt" else stacked

    # ---------------------------------------------------------------------------------------- config I/O

    def to_dict(self) -> dict[str, Any]:
        """The options as transformers writes them in `preprocessor_config.json`."""
        out = copy.deepcopy(self._extra)
        for key in self._defaults:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        out["image_processor_type"] = self.image_processor_type
        return out

    def to_json_string(self) -> str:
        """`to_dict` as indented, key-sorted JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config: dict[str, Any], **kwargs: Any) -> _BaseImageProcessor:
        """Build a processor from a config dict; `kwargs` override its entries."""
        return cls(**{**config, **kwargs})

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write `to_json_string()` to `json_file_path` (atomically)."""
        atomic_write_json(json_file_path, self.to_dict())

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> _BaseImageProcessor:
        """A processor of this class from a JSON file of options (a `preprocessor_config.json` or `to_json_file`'s
        output), as transformers' `from_json_file`."""
        return cls.from_dict(_read_processor_json(Path(json_file)))

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Write `preprocessor_config.json` into `save_directory` atomically; returns the written paths."""
        path = Path(save_directory)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"cannot save into '{path}': it exists and is not a directory")
        target = path / PREPROCESSOR_CONFIG_NAME
        atomic_write_json(target, self.to_dict())
        return [str(target)]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> _BaseImageProcessor:
        """Load from a local directory holding `preprocessor_config.json`, or from the JSON file itself."""
        path = Path(path)
        file = path / PREPROCESSOR_CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME} at '{path}'")
        config = _read_processor_json(file)
        kind = config.get("image_processor_type") or config.get("feature_extractor_type")
        if kind and kind not in IMAGE_PROCESSOR_TYPES:
            warnings.warn(f"'{file}' was written for {kind}; loading it as {cls.__name__}", stacklevel=2)
        return cls.from_dict(config, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def _read_processor_json(file: Path) -> dict[str, Any]:
    """The JSON object in a processor config file, or a ValueError naming the file."""
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"'{file}' is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"'{file}' must hold a JSON object, got {type(config).__name__}")
    return config


# ------------------------------------------------------------------------------------------ torch back end

_TORCH_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}


class _TorchBackend(_BaseImageProcessor):
    """Batched torch pipeline following transformers' torchvision back end (no torchvision needed).

    Images of equal shape are stacked and resized together with antialiased `F.interpolate`; uint8 images stay
    uint8 through the resize (native uint8 kernels on CPU, which equal PIL's bilinear; a rounded float32 detour on
    GPU), then rescale and normalize are fused into one `(x - mean/f) / (std/f)` in float32.
    """

    def _to_tensor(self, image: Any, opts: dict[str, Any], fmt: str | None, name: str) -> torch.Tensor:
        """Channels-first tensor of one input, RGB-converted if asked (on the input's own device)."""
        if isinstance(image, PIL.Image.Image):
            array = _pil_to_array(image, opts["do_convert_rgb"], name)
            tensor = torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)
        else:
            _check_array(image, name)
            if isinstance(image, np.ndarray):
                # torch cannot wrap read-only arrays (e.g. np.asarray of a PIL image) without warning; copy those.
                image = torch.from_numpy(np.array(image) if not image.flags.writeable else np.ascontiguousarray(image))
            tensor = image.detach()
            tensor = tensor[None] if tensor.ndim == 2 else tensor.movedim(_channel_axis(tensor.shape, fmt, name), 0)
            if opts["do_convert_rgb"]:
                tensor = self._tensor_to_rgb(tensor, name)
        return tensor.contiguous()

    @staticmethod
    def _tensor_to_rgb(tensor: torch.Tensor, name: str) -> torch.Tensor:
        """Gray -> RGB by repetition; RGBA composited over white in float32 and brought back like torchvision."""
        channels = tensor.shape[0]
        if channels == 1:
            return tensor.expand(3, -1, -1)
        if channels == 4:
            is_int = not tensor.is_floating_point()
            if not is_int and (tensor.min() < 0 or tensor.max() > 1):
                raise ImageLoadError(f"{name}: a 4-channel float image must lie in [0, 1] to composite its alpha")
            scale = float(torch.iinfo(tensor.dtype).max) if is_int else 1.0
            x = tensor.float() / scale
            rgb = x[:3] * x[3:] + (1 - x[3:])
            # torchvision's float -> int conversion: multiply by (max + 1 - 1e-3) and truncate.
            return rgb.mul(scale + 1.0 - 1e-3).to(tensor.dtype) if is_int else rgb.to(tensor.dtype)
        if channels != 3:
            raise ImageLoadError(f"{name}: has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
        return tensor

    @staticmethod
    def _resize_batch(batch: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
        """Antialiased resize of an N x C x H x W batch; integer input gives integer output."""
        if resample == 1:
            warnings.warn(
                "LANCZOS has no torch kernel; using BICUBIC as transformers' tensor back end does", stacklevel=5
            )
            resample = 3
        if resample not in _TORCH_MODES:
            raise ValueError(
                f"resample={resample} ({RESAMPLE_NAMES[resample]}) has no torch kernel; use "
                "NEAREST, BILINEAR or BICUBIC, or the PIL processor"
            )
        mode = _TORCH_MODES[resample]
        extra = {} if mode == "nearest-exact" else {"antialias": True, "align_corners": False}
        dtype = batch.dtype
        native = mode == "nearest-exact" or (dtype == torch.uint8 and batch.device.type == "cpu")
        if native or batch.is_floating_point():
            try:
                return F.interpolate(batch, size=size, mode=mode, **extra)
            except (RuntimeError, NotImplementedError):
                if batch.is_floating_point():
                    raise  # a float batch has no other route; integer ones fall through to float32
        out = F.interpolate(batch.float(), size=size, mode=mode, **extra)
        if dtype == torch.uint8:
            out = out.clamp_(0, 255)
        return out.round_().to(dtype)

    def _process(
        self,
        images: list[Any],
        opts: dict[str, Any],
        fmt: str | None,
        exif: bool,
        device: str | torch.device | None = None,
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        tensors, names = [], []
        for index, raw in enumerate(images):
            names.append(_describe(raw, index))
            tensor = self._to_tensor(self._load(raw, index, exif), opts, fmt, names[-1])
            tensors.append(tensor if device is None else tensor.to(device))
        if opts["do_rescale"] and any(t.is_floating_point() and t.max() <= 1 for t in tensors):
            warnings.warn(
                "float pixels already lie in [0, 1] and do_rescale=True scales them again; pass "
                "do_rescale=False if they are already rescaled",
                stacklevel=4,
            )
        if opts["do_normalize"]:
            for name, t in zip(names, tensors):
                for key in ("image_mean", "image_std"):
                    n = 1 if isinstance(opts[key], float) else len(opts[key])
                    if n not in (1, t.shape[0]):
                        raise ImageLoadError(
                            f"{name}: has {t.shape[0]} channels but {key} has {n} values; "
                            "expected one per channel (is do_convert_rgb off?)"
                        )
        # Group equal shapes (and dtypes/devices) so each group is one batched kernel call.
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(tensors)
        for (shape, _, _), indices in groups.items():
            batch = torch.stack([tensors[i] for i in indices])
            if opts["do_resize"]:
                size = self._target_size(shape[1], shape[2], opts, names[indices[0]])
                batch = self._resize_batch(batch, size, opts["resample"])
            batch = self._rescale_normalize(batch, opts)
            for j, i in enumerate(indices):
                out[i] = batch[j]
        return out, [tuple(t.shape[1:]) for t in tensors]  # type: ignore[return-value]

    @staticmethod
    def _resize_labels(label: np.ndarray, size: tuple[int, int], device: Any = None) -> torch.Tensor:
        """Nearest-exact resize with `F.interpolate`, as transformers' tensor back end (via torchvision) does: on
        uint8 maps directly, on others through floats wide enough to hold every index exactly."""
        small = label.min() >= 0 and label.max() <= 255
        wide = torch.float32 if np.abs(label).max() < 2**24 else torch.float64
        t = torch.from_numpy(label.astype(np.uint8) if small else label).to(device)
        out = F.interpolate(t[None, None] if small else t[None, None].to(wide), size=size, mode="nearest-exact")
        return out[0, 0].long()

    @staticmethod
    def _rescale_normalize(batch: torch.Tensor, opts: dict[str, Any]) -> torch.Tensor:
        """Fused rescale + normalize as transformers' tensor back end: mean and std divided by the factor."""
        if opts["do_normalize"]:
            factor = 1.0 / opts["rescale_factor"] if opts["do_rescale"] else 1.0
            mean, std = (
                torch.tensor(opts[k], dtype=torch.float32, device=batch.device).reshape(-1, 1, 1) * factor
                for k in ("image_mean", "image_std")
            )
            return (batch.to(torch.float32) - mean) / std
        if opts["do_rescale"]:
            return batch * opts["rescale_factor"]
        return batch


# ------------------------------------------------------------------------- dense prediction: SegFormer, GLPN


def class_map(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The class of each pixel of segmentation scores, classes along `dim`: the argmax, or for one channel (a binary
    model trained with BCE) 1 where the logit is > 0, else 0 (background)."""
    if scores.shape[dim] == 1:
        return (scores.squeeze(dim) > 0).long()
    return scores.argmax(dim=dim)


def segmentation_labels(config: Any) -> list[str]:
    """The names of a segmentation model's classes, index i for class i of its class maps (`class_map`): its
    `id2label` (`LABEL_i` where missing), and for one label (binary, BCE) "background" then that label."""
    names = config.id2label or {}
    own = [str(names.get(i, names.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]
    return ["background", *own] if config.num_labels == 1 else own


def semantic_segmentation(
    logits: torch.Tensor,
    target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
    return_segmentation_scores: bool = False,
) -> list[Any]:
    """Per image, the `(H, W)` class map (`class_map`) of logits `(B, num_labels, h, w)`, the logits first resized
    (bilinear) to `target_sizes[i]` when given; with `return_segmentation_scores`, `{"segmentation",
    "segmentation_scores"}` records (the resized logits as scores), as transformers' post-processing returns."""
    if target_sizes is not None and len(target_sizes) != len(logits):
        raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {len(logits)}; expected one per image")
    results = []
    for i, scores in enumerate(logits):
        if target_sizes is not None:
            size = tuple(int(v) for v in target_sizes[i])
            scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
        classes = class_map(scores, dim=0)
        results.append(
            BatchFeature(segmentation=classes, segmentation_scores=scores) if return_segmentation_scores else classes
        )
    return results


def depth_maps(
    predicted_depth: torch.Tensor, target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None
) -> list[dict[str, torch.Tensor]]:
    """Per image `{"predicted_depth": (H, W)}`, resized (bicubic) to `target_sizes[i]` when given: transformers'
    `post_process_depth_estimation`."""
    if target_sizes is not None and len(target_sizes) != len(predicted_depth):
        raise ValueError(
            f"got {len(target_sizes)} target sizes for a batch of {len(predicted_depth)}; expected one per image"
        )
    results = []
    for i, depth in enumerate(predicted_depth):
        if target_sizes is not None:
            size = tuple(int(v) for v in target_sizes[i])
            depth = F.interpolate(depth[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
        results.append({"predicted_depth": depth})
    return results


# ------------------------------------------------------------------------- detection: batches of mixed sizes


def pad_batch(
    images: Sequence[torch.Tensor | np.ndarray], size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(pixel_values (N, C, H, W), pixel_mask (N, H, W) int64)` of channel-first images of different sizes: each at
    the top left, zeros to the right and below up to the largest height and width (or `size`), the mask 1 on the
    image and 0 on the padding, as DETR's processors pad."""
    tensors = [torch.as_tensor(image) for image in images]
    if not tensors:
        raise ValueError("pad_batch got no images")
    for i, t in enumerate(tensors):
        if t.ndim != 3:
            raise ValueError(f"image {i} has shape {tuple(t.shape)}; expected (channels, height, width)")
    height = max(t.shape[1] for t in tensors) if size is None else size[0]
    width = max(t.shape[2] for t in tensors) if size is None else size[1]
    first = tensors[0]
    pixels = first.new_zeros((len(tensors), first.shape[0], height, width))
    mask = torch.zeros((len(tensors), height, width), dtype=torch.int64, device=first.device)
    for i, t in enumerate(tensors):
        h, w = t.shape[1:]
        if h > height or w > width:
            raise ValueError(f"image {i} is {h}x{w}, larger than the padded size {height}x{width}")
        pixels[i, :, :h, :w] = t
        mask[i, :h, :w] = 1
    return pixels, mask


# `image_processor_type` values (ours and transformers') -> the class that loads them, for Auto dispatch. Each
# family's processing module registers its own when it is imported; `pvtkit.models.family.IMAGE_PROCESSOR_TYPES`
# imports them all (this module imports no family).
IMAGE_PROCESSOR_TYPES: dict[str, type[_BaseImageProcessor]] = {}


def register_image_processors(types: Mapping[str, type[_BaseImageProcessor]]) -> None:
    """Add `image_processor_type` names -> processor classes to `IMAGE_PROCESSOR_TYPES`."""
    IMAGE_PROCESSOR_TYPES.update(types)


__all__ = [
    "BatchFeature",
    "IMAGE_PROCESSOR_TYPES",
    "ImageLoadError",
    "convert_to_rgb",
    "depth_array",
    "depth_maps",
    "image_size",
    "label_array",
    "load_image",
    "pad_batch",
    "register_image_processors",
    "resize_depth",
    "semantic_segmentation",
]
