"""Depth data: images and depth maps paired by file stem, every map read once and checked, and the datasets that
decode them for training and evaluation.

Layouts (the NYU-style one GLPN's and BTS's loaders use, with the split folders optional):

    DIR/train/images/*.jpg   DIR/train/depths/*.png     (and DIR/val/images/, DIR/val/depths/)
    DIR/images/*.jpg         DIR/depths/*.png           (a val_fraction of the pairs is held out)

`depth/` works for `depths/`. A depth map is a 16-bit PNG of integers divided by `depth_scale` (NYU: millimetres,
1000; KITTI: 256), a float `.npy` array in metres, or a 32-bit float TIFF in metres. 0 (or anything outside
`[min_depth, max_depth]`, or not finite) means "no measurement": such pixels are left out of the loss and the
metrics, and resizing never mixes them into valid ones (nearest neighbour).
"""

from __future__ import annotations

import os
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
    DEPTH_EXTENSIONS,
    DEPTH_FOLDER_NAMES,
    DEPTH_LAYOUTS,
    SPLIT_SEED,
    DatasetError,
    LayoutError,
    find_split_folders,
    is_image_file,
    listed,
    warn_unreadable,
)

DepthSample = tuple[str, str]  # (image path, depth map path)


@dataclass
class DepthData:
    """A depth dataset found on disk and checked (every map read once, its size compared with its image's).

    Attributes:
        train / val: `(image, depth map)` path pairs; `val` is empty when there is no validation set.
        val_source: `"folder"`, `"fraction"` or None.
        classes: Always empty (depth has no classes); there for the trainer's generic summary.
        unreadable: Pairs left out because the image or the map cannot be decoded, with the reason.
    """

    train: list[DepthSample]
    val: list[DepthSample]
    val_source: str | None
    classes: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, list[int]]:
        """The fingerprint a resumed run must match: the number of pairs of each split."""
        return {"pairs": [len(self.train), len(self.val)]}


def read_depth(
    path: str | os.PathLike, depth_scale: float = 1000.0, min_depth: float = 1e-3, max_depth: float | None = None
) -> np.ndarray:
    """A depth map file as `(H, W)` float32 metres, 0 where there is no valid measurement.

    Raises:
        ImageLoadError: The file cannot be decoded or is not a one-band map of depths.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            depth = np.load(path, allow_pickle=False).astype(np.float32)
            if depth.ndim == 3 and depth.shape[-1] == 1:
                depth = depth[..., 0]
        else:
            with PIL.Image.open(path) as opened:
                opened.load()
                if opened.mode == "F":  # 32-bit float TIFF: metres already
                    depth = np.asarray(opened, dtype=np.float32)
                elif opened.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 8-bit maps cannot hold depth
                    depth = np.asarray(opened, dtype=np.float32) / float(depth_scale)
                else:
                    raise ImageLoadError(
                        f"depth map {path}: PIL mode {opened.mode}; expected a one-band 16-bit PNG "
                        "(8 bits cannot hold depth), a 32-bit float TIFF or a .npy array"
                    )
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageLoadError):
            raise
        raise ImageLoadError(f"depth map {path}: cannot be decoded ({e})") from e
    if depth.ndim != 2:
        raise ImageLoadError(f"depth map {path}: shape {depth.shape}; expected (height, width)")
    valid = np.isfinite(depth) & (depth >= min_depth)
    if max_depth is not None:
        valid &= depth <= max_depth
    return np.where(valid, depth, 0.0).astype(np.float32)


def _pairs(images: Path, depths: Path) -> tuple[list[DepthSample], list[str], list[str]]:
    """(pairs by file stem, images without a map, maps without an image)."""
    image_files = {p.stem: p for p in sorted(images.iterdir()) if p.is_file() and is_image_file(p)}
    depth_files = {p.stem: p for p in sorted(depths.iterdir()) if p.is_file() and p.suffix.lower() in DEPTH_EXTENSIONS}
    pairs = [(str(image_files[s]), str(depth_files[s])) for s in sorted(image_files) if s in depth_files]
    return (
        pairs,
        [str(image_files[s]) for s in sorted(set(image_files) - set(depth_files))],
        [str(depth_files[s]) for s in sorted(set(depth_files) - set(image_files))],
    )


def _split_folders(directory: Path) -> tuple[Path, Path] | None:
    images = directory / "images"
    depths = next((directory / n for n in DEPTH_FOLDER_NAMES if (directory / n).is_dir()), None)
    return (images, depths) if images.is_dir() and depths is not None else None


def load_depth_data(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    depth_scale: float = 1000.0,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
) -> DepthData:
    """The image/depth pairs of a depth dataset, every map read and checked (`pvtkit train` / `eval`).

    Raises:
        FileNotFoundError: `root` does not exist.
        LayoutError: No known layout.
        DatasetError: Images without maps or the reverse, maps of another size than their image, maps without a
            single valid depth, or an empty split; each listed by file name.
    """
    root = Path(root)
    train_dir, val_dir = find_split_folders(root)
    train_folders = _split_folders(train_dir)
    if train_folders is None:
        raise LayoutError(f"{root}: no depth dataset layout; expected\n{DEPTH_LAYOUTS}")
    splits = {"train": _pairs(*train_folders)}
    if val_dir is not None:
        val_folders = _split_folders(val_dir)
        if val_folders is None:
            raise LayoutError(f"{val_dir}: a validation folder without images/ and depths/; expected\n{DEPTH_LAYOUTS}")
        splits["val"] = _pairs(*val_folders)
    lone = [f"{p} (no depth map)" for _, lone_images, _ in splits.values() for p in lone_images]
    lone += [f"{p} (no image)" for _, _, lone_maps in splits.values() for p in lone_maps]
    if lone:
        raise DatasetError(
            f"{root}: every image needs a depth map of the same file stem and the reverse:{listed(lone)}"
        )
    unreadable, empty, mismatched = [], [], []
    checked: dict[str, list[DepthSample]] = {}
    for split, (pairs, _, _) in splits.items():
        if not pairs:
            raise DatasetError(f"{root}: the {split} split has no image/depth pairs")
        kept = []
        for image, depth_path in pairs:
            try:
                with PIL.Image.open(image) as opened:
                    size = opened.size
                depth = read_depth(depth_path, depth_scale, min_depth, max_depth)
            except (OSError, SyntaxError, ValueError) as e:
                unreadable.append((f"{image} / {depth_path}", str(e) or type(e).__name__))
                continue
            if (depth.shape[1], depth.shape[0]) != size:
                mismatched.append(f"{depth_path}: {depth.shape[1]}x{depth.shape[0]}, image {size[0]}x{size[1]}")
            elif not (depth > 0).any():
                empty.append(depth_path)
            else:
                kept.append((image, depth_path))
        checked[split] = kept
    if mismatched:
        raise DatasetError(
            f"{root}: {len(mismatched)} depth map(s) differ in size from their image (width x height):"
            f"{listed(mismatched)}"
        )
    if empty:
        raise DatasetError(
            f"{root}: {len(empty)} depth map(s) hold no valid depth in [{min_depth}, "
            f"{max_depth if max_depth is not None else 'inf'}] m (check --depth-scale, --min-depth, "
            f"--max-depth):{listed(empty)}"
        )
    warn_unreadable(unreadable, "pair")
    train = checked["train"]
    if not train:
        raise DatasetError(f"{root}: none of the training pairs is readable")
    if "val" in checked:
        return DepthData(train, checked["val"], "folder", unreadable=unreadable)
    held = set(np.random.default_rng(SPLIT_SEED).permutation(len(train))[: int(round(len(train) * val_fraction))])
    val = [p for i, p in enumerate(train) if i in held]
    return DepthData(
        [p for i, p in enumerate(train) if i not in held], val, "fraction" if val else None, unreadable=unreadable
    )


class DepthTrainTransform:
    """GLPN's training augmentation on an image and its depth map together: the short side resized to `size` x a
    ratio in `scale_range` (the map by nearest neighbour, so invalid pixels stay invalid), a random `size` x `size`
    crop, a horizontal flip, with probability `cutdepth` GLPN's vertical CutDepth (`cut_depth_strip`), then the
    processor's rescaling and normalisation. Randomness is a function of (seed, epoch, index) only; with `cutdepth`
    0 no draw is added, so the output is the one without it."""

    def __init__(
        self,
        processor: Any,
        size: int,
        hflip: bool,
        seed: int,
        scale_range: Sequence[float] = (1.0, 1.25),
        cutdepth: float = 0.0,
    ):
        from .transforms import Normalize

        self.size, self.hflip, self.seed, self.scale_range = size, hflip, seed, tuple(scale_range)
        self.cutdepth = float(cutdepth)
        self.resample, self.normalize = int(processor.resample), Normalize(processor)

    def __call__(
        self, image: PIL.Image.Image, depth: np.ndarray, index: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from .transforms import nearest_resize

        rng = np.random.default_rng([self.seed, epoch, index])
        S = self.size
        scale = rng.uniform(*self.scale_range) * S / min(image.size)
        width, height = max(S, round(image.width * scale)), max(S, round(image.height * scale))
        image = image.resize((width, height), resample=self.resample)
        depth = nearest_resize(depth, width, height)
        top, left = int(rng.integers(0, height - S + 1)), int(rng.integers(0, width - S + 1))
        x = np.asarray(image, dtype=np.float32)[top : top + S, left : left + S]
        depth = depth[top : top + S, left : left + S]
        if self.hflip and rng.random() < 0.5:
            x, depth = x[:, ::-1], depth[:, ::-1]
        if self.cutdepth > 0 and rng.random() < self.cutdepth:
            left, width = cut_depth_strip(S, rng)
            x = x.copy()
            x[:, left : left + width] = scaled_depth(depth[:, left : left + width], depth)[..., None]
        return self.normalize(x), np.ascontiguousarray(depth)


CUTDEPTH_WIDTH = 0.75  # GLPN's p: the strip is at most this share of the width right of its left edge


def cut_depth_strip(width: int, rng: np.random.Generator) -> tuple[int, int]:
    """GLPN's vertical CutDepth strip (Kim et al. 2022, after Ishii & Yamashita 2021) in an image `width` wide:
    left edge `l = int(a W)`, width `max(int((W - a W) b p), 1)` with `a, b ~ U(0, 1)` and `p = 0.75`; full
    height. Returns `(left, strip width)`."""
    a, b = rng.random(), rng.random()
    left = min(int(a * width), width - 1)
    return left, max(int((width - a * width) * b * CUTDEPTH_WIDTH), 1)


def scaled_depth(values: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Depths as image intensities: `values * 255 / depth.max()` (the map's nearest depth dark, its farthest
    white, no measurement 0), what CutDepth pastes into the image before its normalisation."""
    top = float(depth.max())
    return values * np.float32(255.0 / top) if top > 0 else np.zeros_like(values)


class DepthPairDataset(Dataset):
    """Training pairs transformed together; a pair that cannot be decoded yields a zero image and an all-invalid map
    of weight 0 (and the reason)."""

    def __init__(
        self,
        samples: Sequence[DepthSample],
        transform: Callable[..., tuple[np.ndarray, np.ndarray]],
        read: Callable[[str], np.ndarray],
    ) -> None:
        self.samples, self.transform, self.read = list(samples), transform, read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float, int, str]:
        index, epoch = key
        image_path, depth_path = self.samples[index]
        S = self.transform.size
        try:
            pixels, depth = self.transform(load_image(image_path), self.read(depth_path), index, epoch)
        except (ImageLoadError, OSError) as e:
            return torch.zeros(3, S, S), torch.zeros(S, S), 0.0, index, str(e) or type(e).__name__
        return torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(depth), 1.0, index, ""


class DepthEvalDataset(Dataset):
    """Validation pairs: the image as the processor prepares it and the map at the image's own size; a pair that
    cannot be decoded yields `(None, None, 0.0, index, reason)`."""

    def __init__(self, samples: Sequence[DepthSample], processor: Any, read: Callable[[str], np.ndarray]) -> None:
        self.samples, self.processor, self.read = list(samples), processor, read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any, float, int, str]:
        image_path, depth_path = self.samples[index]
        try:
            depth = self.read(depth_path)
            pixels = self.processor(load_image(image_path), return_tensors="np")["pixel_values"][0]
        except (ImageLoadError, OSError) as e:
            return None, None, 0.0, index, str(e) or type(e).__name__
        return torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(depth), 1.0, index, ""
