"""Where a model comes from: a local directory or a single weights file, and how its tensors are read.

`torch.load` is only ever called with `weights_only=True`: a pickle from the internet must not run code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._files import find_interrupted_save

CONFIG_NAME = "config.json"
# In the order transformers prefers them.
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass
class Checkpoint:
    """The files that make up one checkpoint: its config (if any) and its weight shards."""

    config_file: Path | None
    weight_files: list[Path] = field(default_factory=list)


def _shards(index_file: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index_file} is not a valid shard index (expected a JSON object with 'weight_map')") from e
    return [index_file.parent / name for name in dict.fromkeys(weight_map.values())]


def resolve_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Find the config and weight files of a checkpoint given as a directory or a single weights file."""
    path = Path(path)
    if path.is_dir():
        config = path / CONFIG_NAME
        for name in WEIGHT_NAMES:
            weights = path / name
            if weights.is_file():
                files = _shards(weights) if name.endswith(".index.json") else [weights]
                return Checkpoint(config if config.is_file() else None, files)
        raise FileNotFoundError(f"{path} holds no weights: expected one of {', '.join(WEIGHT_NAMES)}")
    if path.is_file():
        if path.name.endswith(".index.json"):
            files = _shards(path)
        elif path.suffix in WEIGHT_SUFFIXES:
            files = [path]
        else:
            raise ValueError(f"{path}: not a weights file (expected one of {', '.join(WEIGHT_SUFFIXES)})")
        config = path.parent / CONFIG_NAME
        return Checkpoint(config if config.is_file() else None, files)
    previous = find_interrupted_save(path)
    hint = f"; a save into it was interrupted, and the previous version is intact at {previous}" if previous else ""
    raise FileNotFoundError(f"{path}: no such directory or file{hint}")


def load_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read and merge the tensors of every shard (safetensors, or pickles through `weights_only=True`)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"weights file {file} is missing")
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(file)
            else:
                part = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, truncated or unsafe: say which file
            raise ValueError(f"cannot read weights from {file}: {e}") from e
        if not isinstance(part, dict):
            raise ValueError(f"{file} holds a {type(part).__name__}, not a state dict of tensors")
        state.update(part)
    return state
