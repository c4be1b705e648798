"""dtype names: the one table behind every option that takes a dtype (`torch_dtype=`, `--dtype`, export's `dtype`,
training's `precision`)."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def parse_dtype(dtype: str | torch.dtype | None, allowed: tuple[torch.dtype, ...] | None = None) -> torch.dtype | None:
    """`torch.float16`, `"float16"`, `"fp16"`, `"torch.float16"` -> `torch.float16`; None stays None.

    Raises a ValueError naming the accepted spellings for an unknown name, or one outside `allowed`.
    """
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        parsed = dtype
    else:
        name = str(dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(names(allowed))} or a torch.dtype")
        parsed = DTYPES[name]
    if allowed is not None and parsed not in allowed:
        raise ValueError(f"dtype {dtype!r} is not supported here: expected one of {', '.join(names(allowed))}")
    return parsed


def names(allowed: tuple[torch.dtype, ...] | None = None) -> list[str]:
    """The accepted spellings of the dtypes in `allowed` (all when None), short names first."""
    keys = [k for k, v in DTYPES.items() if allowed is None or v in allowed]
    return sorted(keys, key=lambda k: (len(k) > 4, k))


def short_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `"fp32"`."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))
