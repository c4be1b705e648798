"""Shared test helpers: the relative-error measure every parity test uses, and quiet, seeded runs."""

from __future__ import annotations

import os

import pytest
import torch

# transformers is the reference implementation; keep its logs and telemetry out of the way, and never go online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

FP32_RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    """max |a - b| / max |b|: the relative error the parity tests bound (1e-5 in fp32).

    `floor` bounds the denominator from below, for tensors that are zero in exact arithmetic (the gradient of a
    key bias, which softmax cancels) and hold only rounding noise; pass a small fraction of the overall scale.
    """
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


def assert_close(
    a: torch.Tensor, b: torch.Tensor, tol: float = FP32_RTOL, what: str = "output", floor: float = 1e-12
) -> None:
    err = rel_err(a, b, floor)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
