"""ViT's image processors: `ViTImageProcessor` (PIL and NumPy, transformers' `ViTImageProcessorPil` bit for bit),
which the other families' PIL processors extend, its deprecated name `ViTFeatureExtractor`, and
`ViTImageProcessorFast` (batched torch tensors). No PyTorch at import (see `pvtkit.processing`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import PIL.Image

from ...processing import (
    ImageLoadError,
    _array_to_rgb_hwc,
    _BaseImageProcessor,
    _channel_axis,
    _check_array,
    _describe,
    _is_tensor,
    _pil_to_array,
    _TorchBackend,
    register_image_processors,
    torch,
)


class ViTImageProcessor(_BaseImageProcessor):
    """ViT preprocessing with PIL and NumPy, equal to transformers' `ViTImageProcessorPil`.

    Defaults: RGB, 224x224 bilinear resize, x/255, mean = std = 0.5.
    """

    image_processor_type = "ViTImageProcessor"

    def _process(
        self,
        images: list[Any],
        opts: dict[str, Any],
        fmt: str | None,
        exif: bool,
        device: str | torch.device | None = None,
    ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        out, sizes = [], []
        for index, raw in enumerate(images):
            name = _describe(raw, index)
            image = self._to_chw(self._load(raw, index, exif), opts, fmt, name)
            sizes.append(tuple(image.shape[1:]))
            try:
                if opts["do_resize"]:
                    image = self._resize(image, self._target_size(*image.shape[1:], opts, name), opts["resample"])
                if opts["do_rescale"]:
                    # Like transformers: compute in float64, store float32.
                    image = (image.astype(np.float64) * opts["rescale_factor"]).astype(np.float32)
                if opts["do_normalize"]:
                    image = self._normalize(image, opts["image_mean"], opts["image_std"])
            except ImageLoadError:
                raise
            except ValueError as e:
                raise ImageLoadError(f"{name}: {e}") from e
            out.append(image)
        return out, sizes

    @staticmethod
    def _to_chw(image: Any, opts: dict[str, Any], fmt: str | None, name: str) -> np.ndarray:
        """Channels-first array of one input, RGB-converted if asked."""
        if isinstance(image, PIL.Image.Image):
            array = _pil_to_array(image, opts["do_convert_rgb"], name)
            return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        if _is_tensor(image):
            image = image.detach().cpu()
            image = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
        _check_array(image, name)
        hwc = image[..., None] if image.ndim == 2 else np.moveaxis(image, _channel_axis(image.shape, fmt, name), -1)
        if opts["do_convert_rgb"]:
            if hwc.shape[-1] not in (1, 3, 4):
                raise ImageLoadError(f"{name}: has {hwc.shape[-1]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
            try:
                hwc = _array_to_rgb_hwc(hwc)
            except ValueError as e:
                raise ImageLoadError(f"{name}: {e}") from e
        if opts["do_rescale"] and np.issubdtype(hwc.dtype, np.floating) and hwc.max() <= 1.0:
            warnings.warn(
                f"{name}: float pixels already lie in [0, 1] and do_rescale=True scales them again; "
                "pass do_rescale=False if they are already rescaled",
                stacklevel=4,
            )
        return np.moveaxis(hwc, -1, 0)

    @staticmethod
    def _resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
        """Resize a C x H x W array with PIL, round-tripping through 8-bit exactly as transformers does."""
        hwc = np.moveaxis(image, 0, -1)
        hwc = hwc[..., 0] if hwc.shape[-1] == 1 else hwc
        was_fraction = False
        if hwc.dtype != np.uint8:
            # PIL stores 8-bit pixels: whole numbers in 0..255 are taken as they are, fractions in [0, 1] are
            # scaled by 255 and truncated (transformers' rule, kept for parity), anything else cannot be stored.
            if np.allclose(hwc, hwc.astype(int)) and hwc.min() >= 0 and hwc.max() <= 255:
                pass
            elif hwc.min() >= 0 and hwc.max() <= 1:
                was_fraction = True
                hwc = (hwc.astype(np.float64) * 255).astype(np.float32)
            else:
                raise ValueError(
                    f"pixel values in [{hwc.min()}, {hwc.max()}] cannot be resized with PIL; expected "
                    "whole numbers in 0..255 or fractions in [0, 1]"
                )
            hwc = hwc.astype(np.uint8)
        height, width = size
        resized = np.array(PIL.Image.fromarray(hwc).resize((width, height), resample=resample))
        chw = resized[None] if resized.ndim == 2 else np.moveaxis(resized, -1, 0)
        return (chw.astype(np.float64) * (1 / 255)).astype(np.float32) if was_fraction else chw

    @staticmethod
    def _normalize(image: np.ndarray, mean: float | tuple, std: float | tuple) -> np.ndarray:
        """(x - mean) / std per channel, in float32 unless the input is already floating point."""
        if not np.issubdtype(image.dtype, np.floating):
            image = image.astype(np.float32)
        channels = image.shape[0]
        mean_arr, std_arr = (
            np.array([v] * channels if isinstance(v, float) else v, dtype=image.dtype) for v in (mean, std)
        )
        if len(mean_arr) != channels or len(std_arr) != channels:
            raise ValueError(
                f"image has {channels} channels but image_mean/image_std have {len(mean_arr)}/"
                f"{len(std_arr)} values; expected one per channel (is do_convert_rgb off?)"
            )
        return (image - mean_arr[:, None, None]) / std_arr[:, None, None]

    @staticmethod
    def _resize_labels(label: np.ndarray, size: tuple[int, int], device: Any = None) -> np.ndarray:
        """Nearest-neighbour resize with PIL (32-bit integer mode, so indices above 255 survive): transformers'."""
        if label.min() < -(2**31) or label.max() >= 2**31:
            raise ValueError(f"label values in [{label.min()}, {label.max()}] do not fit 32 bits")
        resized = PIL.Image.fromarray(label.astype(np.int32)).resize(size[::-1], resample=PIL.Image.Resampling.NEAREST)
        return np.array(resized).astype(np.int64)


class ViTFeatureExtractor(ViTImageProcessor):
    """Deprecated name of `ViTImageProcessor`, kept so old code runs; it saves as `ViTImageProcessor`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("ViTFeatureExtractor is deprecated; use ViTImageProcessor", DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)


class ViTImageProcessorFast(_TorchBackend, ViTImageProcessor):
    """ViT preprocessing on batched torch tensors (CPU or GPU), following transformers' tensor back end."""

    image_processor_type = "ViTImageProcessorFast"


register_image_processors(
    {
        "ViTImageProcessor": ViTImageProcessor,
        "ViTImageProcessorPil": ViTImageProcessor,
        "ViTFeatureExtractor": ViTImageProcessor,
        "ViTImageProcessorFast": ViTImageProcessorFast,
    }
)

__all__ = ["ViTFeatureExtractor", "ViTImageProcessor", "ViTImageProcessorFast"]
