"""Where models run: the one place that turns a device name (`auto`, `cpu`, `cuda:1`, ...) into a `torch.device`."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that is no device, or names one this machine does not have."""


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`"auto"` (or None) -> the local GPU when there is one (under torchrun, the one LOCAL_RANK names), else the CPU;
    any other name or `torch.device` -> that device, checked to exist here (a `DeviceError` saying why not)."""
    if name is None or name == "auto":
        from .distributed import auto_device

        return auto_device()
    try:
        device = name if isinstance(name, torch.device) else torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{name!r} is not a device (try auto, cpu, cuda, cuda:0)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{name}: MPS is not available on this machine")
    return device
