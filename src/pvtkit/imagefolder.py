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
