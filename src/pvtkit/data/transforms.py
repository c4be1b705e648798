"""What turns a decoded image (and its mask) into model input: the training augmentations, written with PIL and
NumPy (no torchvision), and the evaluation preprocessing. Randomness is a function of (seed, epoch, index) only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import PIL.Image

from ..processing import fixed_size, nearest_indices
from .folders import IGNORE_INDEX


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[float, float, float, float]:
    """A random crop (left, top, right, bottom) covering `scale` of the area with an aspect ratio in `ratio`
    (log-uniform), as Inception-style training uses; after 10 misses, the largest central crop of an allowed ratio.
    Boxes keep their sub-pixel edges (PIL resamples fractional boxes), which matters for tiny images."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, width / aspect) if width / height <= aspect else (height * aspect, height)
    return (width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2


class Normalize:
    """The processor's rescaling and normalisation of an `(H, W, 3)` float array, returned as `(3, H, W)`: what the
    training transforms do after their own (random) resizing."""

    def __init__(self, processor: Any) -> None:
        self.rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean, std = (processor.image_mean, processor.image_std) if processor.do_normalize else (0.0, 1.0)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x * self.rescale - self.mean) / self.std).transpose(2, 0, 1)


class TrainTransform:
    """Random resized crop and horizontal flip, then the processor's rescaling and normalisation.

    The randomness is a function of (seed, epoch, image index) only: every process, worker and resumed run draws
    the same crop for the same image in the same epoch.
    """

    def __init__(self, processor: Any, size: int, crop_scale: float, hflip: bool, seed: int) -> None:
        self.size, self.scale, self.hflip, self.seed = size, (crop_scale, 1.0), hflip, seed
        self.resample, self.normalize = int(processor.resample), Normalize(processor)

    def __call__(self, image: PIL.Image.Image, index: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, index])
        box = random_resized_crop_box(image.width, image.height, rng, self.scale)
        image = image.resize((self.size, self.size), resample=self.resample, box=box)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return self.normalize(np.asarray(image, dtype=np.float32))  # (3, H, W)


def nearest_resize(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a label (or depth) map by nearest neighbour (pixel centres, as PIL's NEAREST): never a value between
    classes, never an invalid depth mixed into valid ones."""
    h, w = labels.shape
    return labels[np.ix_(nearest_indices(h, height), nearest_indices(w, width))]


def photometric_distortion(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmsegmentation's PhotoMetricDistortion on an `(H, W, 3)` float RGB array in [0, 255]: each with
    probability 1/2, brightness +-32, contrast x[0.5, 1.5] (before or after the colour changes), saturation
    x[0.5, 1.5] and hue +-18 degrees of OpenCV's 180, in HSV. The mask is never touched."""
    if rng.random() < 0.5:
        x = x + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        x = x * contrast
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = int(rng.integers(-18, 19)) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(PIL.Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).convert("HSV"), dtype=np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue * 256 / 180) % 256
        x = np.asarray(PIL.Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB"), dtype=np.float32)
    if contrast is not None and not contrast_first:
        x = x * contrast
    return np.clip(x, 0, 255)


class SegmentationTrainTransform:
    """SegFormer's training pipeline (mmsegmentation's), written with PIL and NumPy, on an image and its mask
    together: random resize (short side to `size` x a ratio in `scale_range`), a random `size` x `size` crop that
    retries (up to 10 times) while one class fills more than `cat_max_ratio` of its labelled pixels, a horizontal
    flip, photometric distortion of the image alone, then the processor's rescaling and normalisation; the image
    is padded with 0 and the mask with 255 (ignored) when the resized image is smaller than the crop. Masks are
    resized by nearest neighbour. Randomness is a function of (seed, epoch, index) only, as for classification.
    """

    def __init__(
        self,
        processor: Any,
        size: int,
        scale_range: tuple[float, float],
        cat_max_ratio: float,
        hflip: bool,
        jitter: bool,
        seed: int,
    ) -> None:
        self.size, self.scale_range, self.cat_max_ratio = size, tuple(scale_range), cat_max_ratio
        self.hflip, self.jitter, self.seed = hflip, jitter, seed
        self.resample, self.normalize = int(processor.resample), Normalize(processor)

    def _crop(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        S, (H, W) = self.size, labels.shape
        for _ in range(10):
            top, left = int(rng.integers(0, max(H - S, 0) + 1)), int(rng.integers(0, max(W - S, 0) + 1))
            if self.cat_max_ratio >= 1:
                break
            window = labels[top : top + S, left : left + S]
            counts = np.bincount(window[window != IGNORE_INDEX].ravel())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left

    def __call__(
        self, image: PIL.Image.Image, labels: np.ndarray, index: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, index])
        S = self.size
        scale = rng.uniform(*self.scale_range) * S / min(image.size)
        width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        image = image.resize((width, height), resample=self.resample)
        labels = nearest_resize(labels, width, height)
        top, left = self._crop(labels, rng)
        box = (left, top, min(left + S, width), min(top + S, height))
        x = np.asarray(image.crop(box), dtype=np.float32)  # (h, w, 3), h, w <= S
        labels = labels[box[1] : box[3], box[0] : box[2]]
        if self.hflip and rng.random() < 0.5:
            x, labels = x[:, ::-1], labels[:, ::-1]
        if self.jitter:
            x = photometric_distortion(x, rng)
        x = self.normalize(x)
        pixels = np.zeros((3, S, S), dtype=np.float32)
        target = np.full((S, S), IGNORE_INDEX, dtype=np.int64)
        pixels[:, : x.shape[1], : x.shape[2]] = x
        target[: labels.shape[0], : labels.shape[1]] = labels
        return pixels, target


class ProcessorTransform:
    """Evaluation preprocessing: the model's image processor, nothing random."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: PIL.Image.Image, index: int, epoch: int) -> np.ndarray:
        return self.processor(image, return_tensors="np")["pixel_values"][0]


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


def processor_image_size(processor: Any) -> tuple[int, int]:
    """The fixed (height, width) a processor resizes to; batching needs one."""
    size = fixed_size(processor)
    if size is None:
        raise ValueError(
            f"{type(processor).__name__} resizes to {getattr(processor, 'size', None)}; evaluation "
            "batches need a fixed {'height', 'width'} size (set the processor's size)"
        )
    return size
