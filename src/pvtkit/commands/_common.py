"""What the subcommands share: model and device options, loading a model for inference, errors, output."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import re

import torch

from ..dtypes import names, parse_dtype

logger = logging.getLogger("pvtkit")

DEFAULT_MODEL = "OpenGVLab/pvt_v2_b0"
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class UsageError(Exception):
    """A mistake in how the command was called (no such model, a bad option value): exit status 2."""


@contextlib.contextmanager
def on_every_rank() -> Iterator[bool]:
    """The body of a command that torchrun may run in several processes; yields whether this is the main one.

    Every process fails the same way, so only the main process (rank 0) logs below ERROR and reports a failure;
    the others exit quietly with the same status (2 usage, 1 failure). The process group is shut down either way.
    """
    from ..distributed import shutdown_distributed

    main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        logging.getLogger("pvtkit").setLevel(logging.ERROR)
    try:
        yield main
    except UsageError:
        if main:
            raise
        raise SystemExit(2) from None
    except (OSError, ValueError, RuntimeError):
        if main:
            raise
        raise SystemExit(1) from None
    finally:
        shutdown_distributed()


def add_model_arguments(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    """`--model` (Hub id, directory or weights file) and the Hub options."""
    parser.add_argument(
        "--model", "-m", default=default, required=default is None,
        help="Hub repo id, local directory or weights file (.safetensors/.pth/.bin), in transformers, timm or "
        "whai362/PVT layout" + (" (default: %(default)s)" if default else ""),
    )  # fmt: skip
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--offline", action="store_true", help="never touch the network; use the Hub cache only")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=names(COMPUTE_DTYPES), help="compute dtype (default float32)")


def resolve_device(name: str) -> torch.device:
    """`auto` -> the local GPU when there is one (the rank's own under torchrun), else the CPU."""
    if name == "auto":
        from ..distributed import auto_device

        return auto_device()
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r} is not a device (try auto, cpu, cuda, cuda:0)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return parse_dtype(name, COMPUTE_DTYPES)  # type: ignore[return-value]
    except ValueError as e:
        raise UsageError(f"--dtype: {e}") from e


def parse_size(text: str, option: str = "--image-size", dynamic: bool = False) -> tuple[int, int] | None:
    """`224` or `480x640` (height x width, also `480,640`) -> (h, w); with `dynamic`, the word `dynamic` -> None."""
    if dynamic and text == "dynamic":
        return None
    match = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip().lower())
    if not match or int(match[1]) < 1 or int(match[2] or match[1]) < 1:
        also = "'dynamic', " if dynamic else ""
        raise UsageError(f"{option} {text!r}: expected {also}a size such as 224 or 480x640 (height x width)")
    return int(match[1]), int(match[2] or match[1])


def hub_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"revision": getattr(args, "revision", None), "local_files_only": bool(getattr(args, "offline", False))}


def load_model(auto_class: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(args.model)`; a model that cannot be found or read is a `UsageError`."""
    try:
        return auto_class.from_pretrained(args.model, **hub_kwargs(args), **kwargs)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {args.model!r}: {e}") from e


def load_processor(args: argparse.Namespace, model: Any, use_fast: bool = False) -> Any:
    """The checkpoint's image processor; without a `preprocessor_config.json`, the family's defaults (logged)."""
    from ..auto import image_processor_for

    return image_processor_for(args.model, model, use_fast=use_fast, **hub_kwargs(args))


def report_failure(command: str, path: str, error: str) -> None:
    """One stderr line for an input that failed, naming it (unless the message already does)."""
    where = "" if path and path in error else f"{path}: " if path else ""
    print(f"pvtkit {command}: error: {where}{error}", file=sys.stderr)


@contextlib.contextmanager
def open_output(path: str | None, binary: bool = False) -> Iterator[IO[Any]]:
    """`path` written atomically (a temporary file renamed at the end), or stdout when `path` is None or '-'."""
    if path is None or path == "-":
        yield sys.stdout.buffer if binary else sys.stdout
        return
    from .._files import atomic_open

    with atomic_open(path, "wb" if binary else "w") as f:
        yield f
