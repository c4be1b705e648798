"""Training with the losses for imbalanced data (`--loss`, `--class-weights`) and binary segmentation with a
one-label (BCE) model, end to end through `pvtkit train` / `eval` / `segment`, on canvases of scikit-learn's real
handwritten digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

import pvtkit
from pvtkit.cli import main as cli
from pvtkit.evaluation import evaluate_segmentation

from helpers import digit_canvases, read_metrics, save_tiny_segformer, train_argv, write_dataset, write_pairs

RARE_CLASSES = ["background", "zero", "one"]


def zeros_and_rare_ones(count: int, rare_share: float, seed: int, size: int = 48, zoom: int = 4):
    """`count` canvases of one handwritten digit each (scanned at `zoom` x): a 0 (class 1, "zero") or, with
    probability `rare_share`, a 1 (class 2, "one"); stroke pixels (scan value >= 6 of 16) labelled, the rest
    background."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    zeros, ones = np.flatnonzero(digits.target == 0), np.flatnonzero(digits.target == 1)
    pairs = []
    for _ in range(count):
        rare = rng.random() < rare_share
        scan = np.kron(digits.images[int(rng.choice(ones if rare else zeros))], np.ones((zoom, zoom)))
        image = rng.integers(0, 30, size=(size, size)).astype(np.float64)
        mask = np.zeros((size, size), dtype=np.uint8)
        top, left = rng.integers(0, size - 8 * zoom, size=2)
        region = (slice(top, top + 8 * zoom), slice(left, left + 8 * zoom))
        image[region] = np.maximum(image[region], scan * 255 / 16)
        mask[region] = np.where(scan >= 6, 2 if rare else 1, 0)
        pairs.append((PIL.Image.fromarray(image.astype(np.uint8), mode="L"), PIL.Image.fromarray(mask, mode="L")))
    return pairs


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """256 training canvases, 15% of them a "one" (under 3% of the pixels); 32 validation canvases, half
    of each."""
    root = tmp_path_factory.mktemp("imbalanced") / "data"
    write_pairs(root / "train" / "images", root / "train" / "masks", zeros_and_rare_ones(256, 0.15, seed=1))
    write_pairs(root / "val" / "images", root / "val" / "masks", zeros_and_rare_ones(32, 0.5, seed=2), 256)
    (root / "labels.json").write_text(json.dumps(RARE_CLASSES))
    return root


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory) -> Path:
    return save_tiny_segformer(
        tmp_path_factory.mktemp("models") / "tiny-seg", classifier_dropout_prob=0.0, drop_path_rate=0.0
    )


def train_args(data: Path, model: Path, out: Path, size: int, *extra: str) -> list[str]:
    options = ("--batch-size", "8", "--lr", "2e-3", "-q", *extra)
    return train_argv("segmentation", data, model, out, *options, image_size=size)


def test_auto_class_weights_train_the_rare_class_to_a_better_iou(imbalanced, tiny_seg, tmp_path, one_thread):
    # Stated: on this set, 8 epochs from the same start, the rare class's validation IoU is at least 0.15 higher
    # with --class-weights auto than without (measured: 0.30 vs 0.00 at seed 0; 0.30 / 0.35 vs 0.00 at seeds 1, 2).
    # Without weights the tiny model never predicts the rare "one" (its pixels are too few to outweigh
    # calling them "zero" or background).
    iou = {}
    for name, extra in (("plain", []), ("auto", ["--class-weights", "auto"])):
        out = tmp_path / name
        assert cli(train_args(imbalanced, tiny_seg, out, 48, "--epochs", "8", *extra)) == 0
        result = evaluate_segmentation(out, imbalanced, progress=False, device="cpu")
        iou[name] = result.per_class["one"]["iou"] or 0.0
    assert iou["auto"] >= iou["plain"] + 0.15, iou

    # The weights used are ENet's 1 / ln(1.02 + p) of the training masks' pixel shares, mean 1 per pixel, and are
    # kept with the run's settings.
    counts = np.zeros(3)
    for mask in sorted((imbalanced / "train" / "masks").glob("*.png")):
        values, n = np.unique(np.asarray(PIL.Image.open(mask)), return_counts=True)
        counts[values] += n
    share = counts / counts.sum()
    raw = np.array([1 / math.log(1.02 + s) for s in share])
    saved = json.loads((tmp_path / "auto" / "training_args.json").read_text())
    assert saved["class_weights"] == "auto"
    np.testing.assert_allclose(saved["class_weight_values"], raw / (share * raw).sum(), rtol=1e-9)
    assert share[2] < 0.03 and np.all(np.diff(saved["class_weight_values"]) > 0)  # rarer, heavier


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("small") / "small", 16, 4)


def test_a_weighted_sum_of_every_loss_trains_and_a_resumed_run_keeps_it(small, tiny_seg, tmp_path, one_thread):
    """(That the sum does not depend on how a step is split into micro-batches is tested on the losses themselves, in
    tests/test_segmentation_losses.py: SegFormer's BatchNorm sees other batches when a step is split, so whole runs
    differ anyway.)"""
    spec = "ce:1,dice:0.5,lovasz:0.5,ohem:0.5,focal:1"
    out = tmp_path / "run"
    extra = ("--epochs", "2", "--loss", spec, "--class-weights", "auto", "--grad-accum", "2")
    assert cli(train_args(small, tiny_seg, out, 32, *extra)) == 0
    records = read_metrics(out)
    assert len(records) == 2 and all(math.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in records)
    saved = json.loads((out / "training_args.json").read_text())
    assert saved["loss"] == spec and saved["class_weights"] == "auto" and len(saved["class_weight_values"]) == 11
    # a resumed run keeps its loss: another one is refused
    assert cli([*train_args(small, tiny_seg, out, 32, "--loss", "dice"), "--resume"]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "ce:1,dyce:1"], "unknown loss 'dyce'; the losses are ce, ohem, dice, lovasz, focal"),
        (["--loss", "dice:0"], "the weight of dice must be a positive number"),
        (["--class-weights", "1,2,3"], "3 weight(s) given, the data has 11 classes"),
        (["--class-weights", "x"], "expected 'auto' or one number per class"),
        (["--task", "classification", "--loss", "dice"], "loss: only for task semantic-segmentation"),
        (["--task", "depth", "--class-weights", "auto"], "class-weights: only for task semantic-segmentation"),
    ],
)
def test_bad_loss_options_are_usage_errors_that_name_them(small, tiny_seg, tmp_path, capsys, extra, message):
    args = train_args(small, tiny_seg, tmp_path / "out", 32, "--epochs", "1")
    if "--task" in extra:
        args[1:3] = []
    assert cli([*args, *extra]) == 2
    assert message in capsys.readouterr().err


# ---- binary segmentation: one label, BCE -------------------------------------------------------------------------


def test_a_one_label_model_trains_with_bce_evaluates_background_and_foreground_and_segments(
    tmp_path, one_thread, capsys
):
    data = tmp_path / "binary"
    for split, count, seed in (("train", 48, 1), ("val", 8, 2)):
        pairs = [
            (image, PIL.Image.fromarray((np.asarray(mask) > 0).astype(np.uint8)))
            for image, mask in digit_canvases(count, seed=seed)
        ]
        write_pairs(data / split / "images", data / split / "masks", pairs, 0 if split == "train" else 48)
    (data / "labels.json").write_text(json.dumps(["background", "digit"]))
    model_dir = tmp_path / "one-label"
    torch.manual_seed(0)
    config = pvtkit.SegformerConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
        num_labels=1,
    )
    pvtkit.SegformerForSemanticSegmentation(config).save_pretrained(model_dir)
    pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    out = tmp_path / "out"
    assert cli(train_args(data, model_dir, out, 32, "--epochs", "3")) == 0
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(out).eval()
    assert model.config.num_labels == 1 and model.config.id2label == {0: "digit"}

    result = evaluate_segmentation(out, data, progress=False, device="cpu")
    assert list(result.per_class) == ["background", "digit"]
    # independently: logit > 0 at each mask's size, sklearn's confusion matrix
    processor = pvtkit.SegformerImageProcessor.from_pretrained(out)
    labels, predicted = [], []
    for image_path in sorted((data / "val" / "images").glob("*.jpg")):
        image = PIL.Image.open(image_path).convert("RGB")
        mask = np.asarray(PIL.Image.open(data / "val" / "masks" / f"{image_path.stem}.png")).astype(np.int64)
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits
        up = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        labels.append(mask.ravel())
        predicted.append((up[0, 0] > 0).numpy().ravel().astype(np.int64))
    cm = confusion_matrix(np.concatenate(labels), np.concatenate(predicted), labels=[0, 1]).astype(float)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert result.per_class["digit"]["iou"] == pytest.approx(iou[1], rel=1e-9)
    assert result.mean_iou == pytest.approx(iou.mean(), rel=1e-9)
    assert iou[1] > 0.2  # it learned the strokes (BCE, not an empty foreground)

    # `pvtkit segment`: class maps of 0 / 1 equal to logit > 0, records naming background and the label
    segmented = tmp_path / "segmented"
    first = sorted((data / "val" / "images").glob("*.jpg"))[0]
    assert cli(["segment", "-m", str(out), "-o", str(segmented), str(first), "--format", "json"]) == 0
    written = np.asarray(PIL.Image.open(segmented / f"{first.stem}.png"))
    np.testing.assert_array_equal(written, predicted[0].reshape(written.shape))
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {c["label"] for c in record["classes"]} <= {"background", "digit"}
