"""What many tests share: the relative-error measure every parity test uses, the repository's paths, a Hub cache
laid out by hand, killing a training run part-way, and a small depth dataset of real photos. Imported as
`from helpers import ...` (pytest puts `tests/` on the path: pyproject's `pythonpath`)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# `pvtkit` under torchrun, two processes on this machine: the command's start, its arguments follow.
TORCHRUN_PVTKIT = (
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
    "-m",
    "pvtkit",
)


def read_metrics(out: Path) -> list[dict]:
    """A training run's `metrics.jsonl`, one record per epoch."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


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


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = HUB_COMMIT) -> Path:
    """Copy the files of `source` into `cache` as huggingface_hub lays out a downloaded model repo
    (`models--owner--name/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> blob}`); returns the snapshot."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def kill_training_at_step(command: list[str], out: Path, step: int, cwd: Path, timeout: float = 120) -> None:
    """Run a `pvtkit train ... --save-steps 1` command and SIGKILL it once its checkpoint records `step` optimizer
    steps (one thread, as the tests' in-process runs: the same kernels, the same numbers); asserts it was killed."""
    import json
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    state_file = out / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(state_file.read_text())["global_step"] >= step:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err.decode()[-2000:]}"


def gradients_by_disk_name(model, folder):
    """A model's gradients under the names its save_pretrained writes: a copy holding the gradients as weights,
    saved by transformers itself (so its renaming of names on disk applies)."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(copied.parameters(), model.parameters()):
            p.copy_(q.grad)
    copied.save_pretrained(folder)
    return load_file(folder / "model.safetensors")


def stereo_depth_dataset(root: Path, train: int = 8, val: int = 4, size: int = 96) -> Path:
    """Crops of scikit-image's motorcycle stereo pair (left image) with depth from its ground-truth disparity
    (depth = f B / d, scaled to metres of a 0-10 m scene; no disparity = no measurement), as NYU-style 16-bit PNGs
    in millimetres."""
    import numpy as np
    import PIL.Image
    import skimage.data

    left, _, disparity = skimage.data.stereo_motorcycle()
    depth = np.where(disparity > 0, 1000.0 / np.maximum(disparity, 1e-6), 0.0)  # arbitrary f B: a 3.5-40 m scene
    depth = depth / np.max(depth) * 9.5
    rng = np.random.default_rng(0)
    h, w = disparity.shape
    for split, count in (("train", train), ("val", val)):
        for folder in ("images", "depths"):
            (root / split / folder).mkdir(parents=True)
        for i in range(count):
            top, left_edge = int(rng.integers(0, h - 3 * size)), int(rng.integers(0, w - 3 * size))
            window = (slice(top, top + 3 * size), slice(left_edge, left_edge + 3 * size))
            image = PIL.Image.fromarray(left[window]).resize((size, size), PIL.Image.BILINEAR)
            image.save(root / split / "images" / f"{i:03d}.jpg", quality=95)
            crop = depth[window][1::3, 1::3]  # nearest: never a mix of valid and invalid pixels
            PIL.Image.fromarray(np.round(crop * 1000).astype(np.uint16)).save(root / split / "depths" / f"{i:03d}.png")
    return root
