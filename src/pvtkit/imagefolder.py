"""Finding images on disk: the inputs of `pvtkit classify` / `features` and the class folders of a dataset."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

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
