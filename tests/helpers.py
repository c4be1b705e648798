"""What many tests share: the relative-error measure every parity test uses, the repository's paths, a Hub cache
laid out by hand, killing a training run part-way, and a small depth dataset of real photos. Imported as
`from helpers import ...`; digit canvases (images + masks of real handwritten digits) and a tiny SegFormer for
the segmentation tests (pytest puts `tests/` on the path: pyproject's `pythonpath`)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file

import pvtkit

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


def same_state(a: Path, b: Path, atol: float) -> float:
    """Largest absolute difference between two safetensors files with the same keys (asserted at most `atol`)."""
    from safetensors.torch import load_file

    sa, sb = load_file(a), load_file(b)
    assert sa.keys() == sb.keys()
    worst = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
    assert worst <= atol, f"weights differ by {worst:.3g} > {atol:g}"
    return worst


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


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def detection_dataset(
    root: Path,
    n_train: int = 8,
    n_val: int = 4,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    digits: tuple[int, ...] = (0, 1, 2),
    first_category_id: int = 1,
    image_format: str = "png",
    noise: bool = True,
) -> Path:
    """A COCO-format detection dataset of real handwritten digits (scikit-learn's 8x8 ones, upscaled to 10-50% of
    the shorter side, a little taller or wider) in dark ink on light canvases, 1-3 digits per image at places that
    keep 3 pixels apart, every fourth image empty: `root/{train,val}/NNN.png` and
    `root/annotations/instances_{train,val}.json`. A box is the tight box of the ink (the upscaled digit's intensity
    above 35% of its maximum), the ink is blended over the canvas by that intensity. Digit d is category
    `first_category_id + its position in digits`, named in words ("zero"), and the categories are listed in reverse
    order (a reader must sort them by id)."""
    import numpy as np
    import PIL.Image
    from sklearn.datasets import load_digits

    bank = load_digits()
    rng = np.random.default_rng(seed)
    height, width = size
    categories = [
        {"id": first_category_id + i, "name": DIGIT_NAMES[d], "supercategory": "digit"} for i, d in enumerate(digits)
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    annotation_id = 1
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            canvas = np.full((height, width, 3), rng.uniform(170, 250, size=3), dtype=np.float64)
            if noise:
                canvas += rng.normal(0, 8, size=canvas.shape)
            placed: list[tuple[int, int, int, int]] = []
            wanted = 0 if i % 4 == 3 else int(rng.integers(1, 4))
            for _ in range(50 * wanted):
                if len(placed) == wanted:
                    break
                k = int(rng.integers(len(digits)))
                side = int(rng.integers(max(10, min(size) // 10), max(11, min(size) // 2) + 1))
                w, h = (side, round(side * rng.uniform(0.8, 1.25)))[:: 1 if rng.random() < 0.5 else -1]
                h, w = min(h, height - 2), min(w, width - 2)
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                if any(
                    left < x1 + 3 and x0 < left + w + 3 and top < y1 + 3 and y0 < top + h + 3
                    for x0, y0, x1, y1 in placed
                ):
                    continue
                choices = np.flatnonzero(bank.target == digits[k])
                digit = bank.images[int(rng.choice(choices))] / 16.0
                alpha = np.asarray(
                    PIL.Image.fromarray(digit.astype(np.float32)).resize((w, h), PIL.Image.BILINEAR)
                ).clip(0, 1)
                alpha = alpha / alpha.max()
                ys, xs = np.nonzero(alpha > 0.35)
                ink = rng.uniform(0, 60, size=3)
                window = canvas[top : top + h, left : left + w]
                window[:] = window * (1 - alpha[..., None]) + ink * alpha[..., None]
                x0, y0, x1, y1 = left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1
                placed.append((left, top, left + w, top + h))
                annotations.append(
                    {
                        "id": annotation_id,
                        "image_id": 100 + i,
                        "category_id": categories[k]["id"],
                        "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                        "area": float((x1 - x0) * (y1 - y0)),
                        "iscrowd": 0,
                    }
                )
                annotation_id += 1
            name = f"{i:03d}.{image_format}"
            PIL.Image.fromarray(canvas.clip(0, 255).round().astype(np.uint8)).save(root / split / name, quality=95)
            images.append({"id": 100 + i, "file_name": name, "width": width, "height": height})
        document = {"images": images, "annotations": annotations, "categories": categories[::-1]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document, indent=1))
    return root


# a small PVTv2 backbone for detectors: heads 1, 2, 3, 4 (the published head width 16), stages 2-4 out
TINY_PVT_BACKBONE = {
    "model_type": "pvt_v2",
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [16, 32, 48, 64],
    "num_attention_heads": [1, 2, 3, 4],
    "mlp_ratios": [2, 2, 2, 2],
    "out_indices": [1, 2, 3],
}
DETECTION_LABELS = {0: "zero", 1: "one", 2: "two"}


def tiny_detector(seed: int = 0, **overrides):
    """A small random Deformable DETR on a small PVTv2, its class heads biased so that some scores pass 0.5."""
    import pvtkit

    config = pvtkit.DeformableDetrConfig(
        backbone_config=TINY_PVT_BACKBONE,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        num_labels=3,
        id2label=DETECTION_LABELS,
        **overrides,
    )
    torch.manual_seed(seed)
    model = pvtkit.DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():  # spread the scores around 0.5: the records above the threshold are not empty
        for name, p in model.named_parameters():
            if "class_embed" in name and name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif "class_embed" in name:
                p.normal_(0, 0.5)
    return model


# ---- segmentation: canvases of scikit-learn's handwritten digits, a tiny SegFormer ---------------------------------

CLASSES = ["background", *(str(d) for d in range(10))]


def digit_canvases(count: int, size: int = 32, per_canvas: int = 2, seed: int = 0, first: int = 0, zoom: int = 2):
    """`count` (image, mask) pairs: `per_canvas` digits (8x8 scans, upscaled `zoom` x) at random places on a dark,
    slightly noisy canvas; a pixel of a digit's stroke (scan value >= 6 of 16) is labelled 1 + the digit, the rest
    0 (background). Digits are taken in order from index `first` of scikit-learn's set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out, k = [], first
    for _ in range(count):
        image = rng.integers(0, 30, size=(size, size)).astype(np.float64)
        mask = np.zeros((size, size), dtype=np.uint8)
        for _ in range(per_canvas):
            scan = np.kron(digits.images[k % len(digits.images)], np.ones((zoom, zoom)))  # values 0..16
            label = int(digits.target[k % len(digits.images)])
            k += 1
            side = 8 * zoom
            top, left = rng.integers(0, size - side, size=2)
            region = (slice(top, top + side), slice(left, left + side))
            image[region] = np.maximum(image[region], scan * 255 / 16)
            mask[region] = np.where(scan >= 6, 1 + label, mask[region])
        out.append((PIL.Image.fromarray(image.astype(np.uint8), mode="L"), PIL.Image.fromarray(mask, mode="L")))
    return out


def write_pairs(images: Path, masks: Path, pairs, start: int = 0, mask_mode: str = "L") -> None:
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(pairs, start):
        image.convert("RGB").save(images / f"{i:04d}.jpg", quality=95)
        if mask_mode == "P":
            mask = mask.convert("P")
        elif mask_mode == "I;16":
            mask = PIL.Image.fromarray(np.asarray(mask).astype(np.uint16))
        mask.save(masks / f"{i:04d}.png")


def write_dataset(
    root: Path, train: int, val: int, size: int = 32, labels: bool = True, per_canvas: int = 2, zoom: int = 2
) -> Path:
    """`root/{train,val}/{images,masks}/` and `labels.json`; validation canvases hold digits training never saw."""
    write_pairs(
        root / "train" / "images", root / "train" / "masks", digit_canvases(train, size, per_canvas, seed=1, zoom=zoom)
    )
    write_pairs(
        root / "val" / "images",
        root / "val" / "masks",
        digit_canvases(val, size, per_canvas, seed=2, first=train * per_canvas, zoom=zoom),
        train,
    )
    if labels:
        (root / "labels.json").write_text(json.dumps(CLASSES))
    return root


def save_tiny_segformer(path: Path, **options) -> Path:
    torch.manual_seed(0)
    config = pvtkit.SegformerConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        **options,
    )
    pvtkit.SegformerForSemanticSegmentation(config).save_pretrained(path)
    pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def train_argv(task: str | None, data: Path, model: Path, out: Path, *options: str, image_size: int = 32) -> list[str]:
    """`pvtkit train`'s arguments for a small test run: the task (None: left to the data), the data, the model, the
    output, `--image-size`, no loader workers, then `options`."""
    task_args = ["--task", task] if task else []
    return [
        "train",
        *task_args,
        "--data",
        str(data),
        "--model",
        str(model),
        "--output",
        str(out),
        "--image-size",
        str(image_size),
        "--num-workers",
        "0",
        *options,
    ]
