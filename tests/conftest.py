"""Test-wide settings: transformers (the reference) quiet and offline, every test seeded, and the markers the
fast inner loop leaves out (`pytest -m "not slow"`)."""

from __future__ import annotations

import os

import pytest
import torch

# transformers is the reference implementation; keep its logs and telemetry out of the way, and never go online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread, and a second one only fights other work for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
