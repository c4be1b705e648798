"""Atomic file and directory writes, shared by every `save_pretrained` and export in pvtkit.

A save that is killed half-way must never leave behind a file or a directory that does not load: we write to a
temporary name next to the target and rename it into place, which POSIX guarantees to be atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[str]:
    """A temporary sibling of `path` to fill; on a clean exit it is synced and renamed onto `path`, on an error
    removed. Created with the permissions an ordinary new file gets (mkstemp's are private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _default_mode())
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write one file atomically: `write(tmp_path)` fills a temporary sibling that is then renamed to `path`."""
    with _replacing(path) as tmp:
        write(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; on a clean exit it replaces `path`, on an error it is removed.

    For outputs written bit by bit (results streamed as they come): readers never see a half-written file.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes files; mode {mode!r} is not a write mode")
    with _replacing(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
        yield f


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented, key-sorted JSON (the layout Hugging Face writes), atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, drop: Iterable[str] = ()) -> Iterator[Path]:
    """Build a directory's new contents in a temporary sibling, then swap it in place of `path`.

    Files already in `path` that the new contents do not replace are carried over (hard-linked when possible),
    so saving a model next to, say, a processor config keeps the latter, except the names in `drop`. If the body
    raises, `path` is untouched.
    """
    path, drop = Path(path), set(drop)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"cannot save into {path}: it exists and is not a directory")
    staging = _sibling_directory(path, "saving")
    try:
        yield staging
        mode = _default_mode()
        for root, _, files in os.walk(staging):  # folders too: a SavedModel has variables/ and assets/
            for name in files:
                file = os.path.join(root, name)
                if os.path.islink(file):
                    continue
                os.chmod(file, mode)  # some writers (safetensors) create files private to the owner
                with open(file, "rb+") as fh:
                    os.fsync(fh.fileno())
        if not path.exists():
            os.rename(staging, path)
        else:
            for entry in os.scandir(path):
                target = staging / entry.name
                if target.exists() or entry.name in drop:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.copytree(entry.path, target, symlinks=True)
                else:
                    try:
                        os.link(entry.path, target, follow_symlinks=False)
                    except OSError:
                        shutil.copy2(entry.path, target, follow_symlinks=False)
            backup = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.previous-"))
            os.rmdir(backup)
            # Two renames a few microseconds apart; if the process dies between them the complete previous
            # version is still on disk under `backup`, and loading `path` says so (see `find_interrupted_save`).
            os.rename(path, backup)
            os.rename(staging, path)
            shutil.rmtree(backup, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _sibling_directory(path: Path, purpose: str) -> Path:
    """A new, empty directory `.{name}.{purpose}-XXXX` beside `path`, with ordinary permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{purpose}-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; what is staged becomes ordinary files
    return staging


@contextlib.contextmanager
def atomic_files(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside `path` to write `path` (as `staging / path.name`) and any companion files into
    (an ONNX model's external data). On a clean exit the companions, then `path` itself, are renamed into place,
    each atomically; the directory is removed whatever happens, so a failed write leaves nothing behind."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; expected a file path")
    try:
        staging = _sibling_directory(path, "writing")
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        yield staging
        main = staging / path.name
        for f in sorted(staging.iterdir()):
            if f != main:
                os.replace(f, path.parent / f.name)
        os.replace(main, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def find_interrupted_save(path: str | os.PathLike) -> Path | None:
    """The previous version of `path` left by a save that died between its two renames, if there is one."""
    path = Path(path)
    if not path.parent.is_dir():
        return None
    candidates = sorted(path.parent.glob(f".{path.name}.previous-*"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from `path`, or a ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data
