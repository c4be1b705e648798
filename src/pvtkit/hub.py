"""Where a model comes from: a local directory, a single weights file, or a Hugging Face Hub repo id.

Hub repos (`OpenGVLab/pvt_v2_b0`, `google/vit-base-patch16-224`, `timm/pvt_v2_b0.in1k`) are fetched through
`huggingface_hub`, so its cache, `HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and the token from the
environment all apply. `torch.load` is only ever called with `weights_only=True`: a pickle from the internet must
not run code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ._files import find_interrupted_save

CONFIG_NAME = "config.json"
# In the order transformers prefers them.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
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


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hub: `revision` (branch, tag or commit), `cache_dir`, `local_files_only`, `token`."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def is_repo_id(name: str | os.PathLike) -> bool:
    """True for strings shaped like a Hub repo id (`owner/name` or `name`) that are not an existing path."""
    text = str(name)
    return not Path(text).exists() and bool(_REPO_ID.match(text)) and not text.endswith(WEIGHT_SUFFIXES + (".json",))


PROBE_TIMEOUT = 5.0  # seconds one connection attempt to the Hub may take
PROBE_MEMORY = 60.0  # seconds an unreachable Hub is remembered, so one call makes one attempt
_unreachable: dict[str, float] = {}  # endpoint -> when it was last found unreachable (time.monotonic)


def hub_reachable() -> bool:
    """Whether the Hub endpoint answers at all: one connection attempt, no retries (huggingface_hub retries every
    file five times with back-off, two minutes for a checkpoint's candidate files when the network is down). An
    endpoint found unreachable is remembered for a minute; then the cache alone is used."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = constants.ENDPOINT
    if time.monotonic() - _unreachable.get(endpoint, -PROBE_MEMORY) < PROBE_MEMORY:
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_TIMEOUT):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered
    except urllib.error.URLError as e:
        if not isinstance(e.reason, ssl.SSLError):  # certificates: reachable; huggingface_hub reports the rest
            _unreachable[endpoint] = time.monotonic()
            return False
    except OSError:  # refused, reset, timed out
        _unreachable[endpoint] = time.monotonic()
        return False
    return True


def hub_file(repo_id: str, filename: str, options: HubOptions, required: bool = True) -> Path | None:
    """Download (or find in the cache) one file of a Hub repo; None when it is absent and not `required`. When the
    Hub cannot be reached, the cache alone answers (at once, without huggingface_hub's retries)."""
    import huggingface_hub

    if not options.local_files_only and not hub_reachable():
        options = replace(options, local_files_only=True)
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=options.revision,
                cache_dir=options.cache_dir,
                local_files_only=options.local_files_only,
                token=options.token,
            )
        )
    except GatedRepoError as e:
        raise PermissionError(f"{repo_id} is gated on the Hub: accept its terms and log in (HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo_id}: no such model on the Hub (or it is private: set HF_TOKEN), and no such local path"
        ) from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"{repo_id} has no revision {options.revision!r}") from e
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: it must come first
        if not required:
            return None
        raise FileNotFoundError(
            f"{repo_id}: {filename} is not in the local cache and the Hub cannot be reached (offline, or "
            "HF_HUB_OFFLINE=1 / local_files_only). Run once with network access to download it, or pass a local "
            "directory or file."
        ) from e
    except EntryNotFoundError:
        if required:
            raise FileNotFoundError(f"{repo_id} has no file {filename}") from None
        return None


def _resolve_hub(repo_id: str, options: HubOptions) -> Checkpoint:
    for name in WEIGHT_NAMES:
        weights = hub_file(repo_id, name, options, required=False)
        if weights is None:
            continue
        if name.endswith(".index.json"):
            files = [hub_file(repo_id, shard.name, options) for shard in _shards(weights)]
        else:
            files = [weights]
        return Checkpoint(hub_file(repo_id, CONFIG_NAME, options, required=False), files)  # type: ignore[arg-type]
    hub_file(repo_id, CONFIG_NAME, options)  # raises the clearer error when the repo itself is unreachable
    raise FileNotFoundError(
        f"{repo_id} has none of the weight files {', '.join(WEIGHT_NAMES)} (in the cache or on the Hub)"
    )


def resolve_file(name_or_path: str | os.PathLike, filename: str, options: HubOptions = HubOptions()) -> Path | None:
    """A side file of a checkpoint (e.g. `preprocessor_config.json`), local or from the Hub; None if absent."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    if path.is_file():
        return path.parent / filename if (path.parent / filename).is_file() else None
    if is_repo_id(name_or_path):
        return hub_file(str(name_or_path), filename, options, required=False)
    return None


def resolve_checkpoint(path: str | os.PathLike, options: HubOptions = HubOptions()) -> Checkpoint:
    """Find the config and weight files of a checkpoint: a directory, a single weights file, or a Hub repo id."""
    if is_repo_id(path):
        return _resolve_hub(str(path), options)
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


if TYPE_CHECKING:
    import torch


def load_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read and merge the tensors of every shard (safetensors, or pickles through `weights_only=True`)."""
    import torch  # here, not at the top: finding a checkpoint (the rest of this module) needs no PyTorch

    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"weights file {file} is missing")
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(file)
            else:
                # Training checkpoints often carry their argparse.Namespace: a plain attribute holder, safe to allow.
                with torch.serialization.safe_globals([argparse.Namespace]):
                    part = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, truncated or unsafe: say which file
            raise ValueError(f"cannot read weights from {file}: {e}") from e
        if not isinstance(part, dict):
            raise ValueError(f"{file} holds a {type(part).__name__}, not a state dict of tensors")
        state.update(part)
    return state
