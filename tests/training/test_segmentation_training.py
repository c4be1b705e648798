"""Segmentation fine-tuning and evaluation end to end, on real data no one here made: canvases composed of
scikit-learn's handwritten digits (8x8 scans by 43 writers), each stroke pixel labelled with its digit's class
and the rest background, written out as images and PNG masks in the layouts `pvtkit train` recognises.

The metric is checked against scikit-learn's `confusion_matrix`, the evaluation against an independent forward of
the same model; the training runs use tiny SegFormers trained from scratch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix

import pvtkit
from pvtkit.cli import main as cli
from pvtkit.data.folders import IGNORE_INDEX
from pvtkit.data.segmentation import load_segmentation_data
from pvtkit.data.transforms import SegmentationTrainTransform, nearest_resize
from pvtkit.evaluation import SegmentationMetric
from pvtkit.training import learning_rate, parameter_groups

from helpers import (
    CLASSES,
    TORCHRUN_PVTKIT,
    digit_canvases,
    kill_training_at_step,
    read_metrics,
    save_tiny_segformer,
    train_argv,
    write_dataset,
    write_pairs,
)
from helpers import REPO as ROOT


@pytest.fixture(scope="module")
def canvases(tmp_path_factory) -> Path:
    """The learning run's data: 768 training canvases of 48x48, each with one digit scanned at 4x (32x32: a scan
    pixel is one cell of the model's 1/4-resolution output), and 64 validation canvases of digits training never
    saw."""
    return write_dataset(tmp_path_factory.mktemp("canvases") / "digits", 768, 64, size=48, per_canvas=1, zoom=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("small") / "small", 48, 16)


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory) -> Path:
    """With SegFormer's dropout (0.1 before the classifier) and stochastic depth (0.1): random numbers drawn in
    every training step, which a resumed run must draw alike."""
    return save_tiny_segformer(tmp_path_factory.mktemp("models") / "tiny-seg")


@pytest.fixture(scope="module")
def tiny_seg_no_dropout(tmp_path_factory) -> Path:
    """Without dropout or stochastic depth: N processes draw their own masks, so only such a model trains exactly
    alike on 1 and N processes."""
    return save_tiny_segformer(
        tmp_path_factory.mktemp("models") / "tiny-seg-nd", classifier_dropout_prob=0.0, drop_path_rate=0.0
    )


def tiny_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return train_argv("semantic-segmentation", data, model, out, "--batch-size", "8", "--lr", "2e-3", "-q", *extra)


def same_state(a: Path, b: Path, atol: float) -> None:
    sa, sb = load_file(a), load_file(b)
    assert sa.keys() == sb.keys()
    worst = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    assert worst <= atol, f"weights differ by {worst:.3g} > {atol:g}"


def reference_iou(labels: np.ndarray, predicted: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """IoU and accuracy per class, and pixel accuracy, from scikit-learn's confusion matrix over the labelled pixels."""
    valid = labels != IGNORE_INDEX
    cm = confusion_matrix(labels[valid], predicted[valid], labels=list(range(k))).astype(float)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    iou = np.array([inter[i] / union[i] if union[i] else np.nan for i in range(k)])
    acc = np.array([inter[i] / cm[i].sum() if cm[i].sum() else np.nan for i in range(k)])
    return iou, acc, inter.sum() / cm.sum()


# ---- the metric ------------------------------------------------------------------------------------------------


def test_miou_accumulates_over_the_set_like_an_independent_confusion_matrix():
    rng = np.random.default_rng(0)
    k = 5  # class 3 never appears in the labels (only predicted), class 4 in neither
    maps = []
    for shape in [(7, 9), (12, 5), (3, 3)]:
        labels = rng.choice([0, 1, 2, IGNORE_INDEX], size=shape, p=[0.5, 0.2, 0.2, 0.1])
        predicted = np.where(
            rng.random(shape) < 0.7, np.where(labels == IGNORE_INDEX, 0, labels), rng.choice([0, 1, 2, 3], size=shape)
        )
        maps.append((labels, predicted))
    metric = SegmentationMetric(k)
    for labels, predicted in maps:
        metric.update(torch.from_numpy(predicted), torch.from_numpy(labels))
    result = metric.compute()
    all_labels = np.concatenate([m[0].ravel() for m in maps])
    all_predicted = np.concatenate([m[1].ravel() for m in maps])
    iou, acc, overall = reference_iou(all_labels, all_predicted, k)
    np.testing.assert_allclose(result["per_category_iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(result["per_category_accuracy"], acc, rtol=1e-12)
    assert result["per_category_iou"][3] == 0.0 and np.isnan(result["per_category_iou"][4])  # counted / left out
    assert result["mean_iou"] == pytest.approx(np.nanmean(iou), rel=1e-12)
    assert result["mean_accuracy"] == pytest.approx(np.nanmean(acc), rel=1e-12)
    assert result["overall_accuracy"] == pytest.approx(overall, rel=1e-12)
    # Averaging per image instead would give another number: the accumulation matters.
    per_image = np.nanmean([np.nanmean(reference_iou(lab, pred, k)[0]) for lab, pred in maps])
    assert abs(per_image - result["mean_iou"]) > 1e-3


# ---- data layouts and bad data ---------------------------------------------------------------------------------


def test_the_three_layouts_are_recognised_and_paired_by_name(tmp_path):
    pairs = digit_canvases(12, seed=3)
    split = tmp_path / "split"
    write_pairs(split / "train" / "images", split / "train" / "masks", pairs[:8])
    write_pairs(split / "validation" / "images", split / "validation" / "masks", pairs[8:], 8, mask_mode="P")
    (split / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    data = load_segmentation_data(split)
    assert (data.layout, len(data.train), len(data.val), data.val_source) == ("split folders", 8, 4, "folder")
    assert data.classes == CLASSES
    assert all(Path(i).stem == Path(m).stem for i, m in data.train + data.val)

    # ADE20K: images/{training,validation} + annotations/..., 0 = "other" with --reduce-labels.
    ade = tmp_path / "ADEChallengeData2016"
    write_pairs(ade / "images" / "training", ade / "annotations" / "training", pairs[:8], mask_mode="I;16")
    write_pairs(ade / "images" / "validation", ade / "annotations" / "validation", pairs[8:], 8)
    data = load_segmentation_data(ade, reduce_labels=True)
    assert (data.layout, len(data.train), len(data.val)) == ("ADE20K", 8, 4)
    top = max(int(np.asarray(m).max()) for _, m in pairs)
    assert data.classes == [str(i) for i in range(top)]  # no names file: the indices; 0 became "ignored"

    # Flat: a reproducible, stratified hold-out.
    flat = tmp_path / "flat"
    write_pairs(flat / "images", flat / "masks", digit_canvases(40, seed=4))
    a, b = load_segmentation_data(flat, val_fraction=0.25), load_segmentation_data(flat, val_fraction=0.25)
    assert a.layout == "flat" and a.val == b.val and len(a.val) == 10 and len(a.train) == 30
    assert not set(a.val) & set(a.train)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("lone image", "1 image(s) without a mask"),
        ("lone mask", "1 mask(s) without an image"),
        ("size", "differ in size from their image"),
        ("value", "hold values that are no class"),
        ("one class", "segmentation needs at least two classes"),
        ("empty val", "the validation split is empty"),
    ],
)
def test_bad_datasets_are_refused_with_the_files_named(tmp_path, damage, message, tiny_seg, capsys):
    root = write_dataset(tmp_path / "data", 6, 2)
    named = None
    if damage == "lone image":
        named = root / "train" / "masks" / "0003.png"
        named.unlink()
        named = root / "train" / "images" / "0003.jpg"
    elif damage == "lone mask":
        named = root / "val" / "images" / "0006.jpg"
        named.unlink()
        named = root / "val" / "masks" / "0006.png"
    elif damage == "size":
        named = root / "train" / "masks" / "0002.png"
        PIL.Image.open(named).resize((20, 32), PIL.Image.Resampling.NEAREST).save(named)
    elif damage == "value":
        named = root / "val" / "masks" / "0007.png"
        PIL.Image.fromarray(np.full((32, 32), 11, dtype=np.uint8)).save(named)  # 11 classes: 0..10
    elif damage == "one class":
        (root / "labels.json").unlink()
        for mask in (root / "train" / "masks").glob("*.png"):
            PIL.Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask)
        for mask in (root / "val" / "masks").glob("*.png"):
            PIL.Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask)
    elif damage == "empty val":
        for path in (root / "val").rglob("*.*"):
            path.unlink()
    code = cli(tiny_args(root, tiny_seg, tmp_path / "out", "--epochs", "1"))
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    if named is not None:
        assert str(named) in err
    assert "Traceback" not in err


def test_an_unknown_layout_is_a_usage_error_that_says_what_is_expected(tmp_path, tiny_seg, capsys):
    (tmp_path / "data" / "pictures").mkdir(parents=True)
    assert cli(tiny_args(tmp_path / "data", tiny_seg, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "not a segmentation dataset layout" in err and "ADEChallengeData2016" in err and "masks/" in err
    # Options of the other task are refused by name.
    assert cli(["train", "--data", str(tmp_path), "--arch", "b0", "--reduce-labels", "-o", str(tmp_path / "o")]) == 2
    assert "reduce-labels: only for task semantic-segmentation" in capsys.readouterr().err


def test_unreadable_pairs_are_skipped_counted_and_the_rest_trained(small, tiny_seg, tmp_path, one_thread, caplog):
    data = tmp_path / "data"
    write_dataset(data, 16, 4)
    (data / "train" / "images" / "0005.jpg").write_bytes(b"not a jpeg")
    truncated = data / "train" / "images" / "0006.jpg"
    content = truncated.read_bytes()
    truncated.write_bytes(content[: len(content) * 2 // 3])  # the header reads; the pixels do not
    out = tmp_path / "out"
    assert cli(tiny_args(data, tiny_seg, out, "--epochs", "1")) == 0
    assert "0005.jpg" in caplog.text and "skipping 1 unreadable pair(s)" in caplog.text
    assert "0006.jpg" in caplog.text  # reported when its pixels failed to decode
    record = read_metrics(out)[0]
    assert record["skipped_images"] == 1  # 0006.jpg, found when decoded; 15 pairs = one step of 8 + the rest dropped
    assert np.isfinite(record["train_loss"])


# ---- augmentation and schedule ---------------------------------------------------------------------------------


def test_joint_augmentation_keeps_labels_whole_and_aligned():
    processor = pvtkit.SegformerImageProcessor(do_normalize=False, do_rescale=False)
    image, mask = digit_canvases(1, size=48, seed=5)[0]
    labels = np.asarray(mask).astype(np.int64)
    transform = SegmentationTrainTransform(processor, 40, (0.5, 2.0), 0.75, True, False, seed=0)
    values = set(np.unique(labels).tolist())
    seen_pad = False
    for index in range(30):
        pixels, target = transform(image.convert("RGB"), labels, index, epoch=0)
        assert pixels.shape == (3, 40, 40) and target.shape == (40, 40)
        assert set(np.unique(target).tolist()) <= values | {IGNORE_INDEX}  # nearest: never a value in between
        padded = target == IGNORE_INDEX
        seen_pad |= bool(padded.any())
        assert (pixels[:, padded] == 0).all()  # padding is zero in the image, ignored in the mask
        strokes = (target > 0) & ~padded
        if strokes.any():  # labels stay on the strokes: stroke pixels are bright, background ones dark
            assert pixels[0][strokes].mean() > pixels[0][(target == 0)].mean() + 60
        again = transform(image.convert("RGB"), labels, index, epoch=0)
        assert np.array_equal(again[1], target) and np.array_equal(again[0], pixels)  # (seed, epoch, index) only
    assert seen_pad  # ratios below 40/48 leave the image smaller than the crop
    np.testing.assert_array_equal(nearest_resize(labels, 96, 96)[::2, ::2], labels)


def test_poly_schedule_and_the_heads_ten_times_rate():
    lrs = [learning_rate(s, 1.0, 10, 110, "poly") for s in range(111)]
    assert lrs[9] == 1.0 and lrs[10] == 1.0 and lrs[60] == pytest.approx(0.5) and lrs[110] == 0.0
    model = pvtkit.SegformerForSemanticSegmentation(
        pvtkit.SegformerConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16
        )
    )
    groups = parameter_groups(model, 0.01, 10.0)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = by_param[id(p)]
        assert group["lr_scale"] == (10.0 if name.startswith("decode_head.") else 1.0), name
        assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 0.01), name


# ---- evaluation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_eval_agrees_with_an_independent_iou_of_the_same_predictions(small, tiny_seg, tmp_path, capsys, mode):
    # Masks at other sizes than the model's input: logits are upsampled to each image's own size.
    data = tmp_path / "data"
    write_pairs(data / "val" / "images", data / "val" / "masks", digit_canvases(5, size=45, seed=7))
    write_pairs(data / "train" / "images", data / "train" / "masks", digit_canvases(2, size=45, seed=8))
    out = tmp_path / "report.json"
    png = tmp_path / "confusion.png"
    assert (
        cli(
            [
                "eval",
                "-m",
                str(tiny_seg),
                "-d",
                str(data),
                "--format",
                "json",
                "-o",
                str(out),
                "--confusion",
                str(png),
                "--mode",
                mode,
                "-q",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["task"] == "semantic-segmentation" and report["num_images"] == 5 and report["mode"] == mode
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(tiny_seg).eval()
    processor = pvtkit.SegformerImageProcessor.from_pretrained(tiny_seg)
    labels, predicted = [], []
    for image_path in sorted((data / "val" / "images").glob("*.jpg")):
        image = PIL.Image.open(image_path).convert("RGB")
        mask = np.asarray(PIL.Image.open(data / "val" / "masks" / f"{image_path.stem}.png")).astype(np.int64)
        with torch.no_grad():
            if mode == "whole":
                logits = model(**processor(image, return_tensors="pt")).logits
            else:  # short side to the window (32), then one 32x32 window: the images are square
                small_image = image.resize((32, 32), PIL.Image.Resampling.BILINEAR)
                logits = model(**processor(small_image, do_resize=False, return_tensors="pt")).logits
                logits = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
            up = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        labels.append(mask.ravel())
        predicted.append(up.argmax(1)[0].numpy().ravel())
    iou, acc, overall = reference_iou(np.concatenate(labels), np.concatenate(predicted), len(CLASSES))
    assert report["mean_iou"] == pytest.approx(np.nanmean(iou), rel=1e-9)
    assert report["overall_accuracy"] == pytest.approx(overall, rel=1e-9)
    assert report["mean_accuracy"] == pytest.approx(np.nanmean(acc), rel=1e-9)
    for i, name in enumerate(CLASSES):
        row = report["per_class"][name]
        assert (row["iou"] is None) == bool(np.isnan(iou[i]))
        if row["iou"] is not None:
            assert row["iou"] == pytest.approx(iou[i], rel=1e-9)
    assert PIL.Image.open(png).size[0] > 100
    # The table, for people.
    assert cli(["eval", "-m", str(tiny_seg), "-d", str(data), "-q", "--num-workers", "0", "--mode", mode]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "background" in table and f"{report['mean_iou']:.2%}" in table
    if mode == "whole":  # a reader that has gone (`| head`) gets no error message: the pipe is closed at once
        process = subprocess.Popen(
            [sys.executable, "-m", "pvtkit", "eval", "-m", str(tiny_seg), "-d", str(data), "-q", "--num-workers", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        process.stdout.close()
        _, err = process.communicate(timeout=120)
        assert process.returncode == 141 and err == b"", err.decode()[-2000:]


# ---- learning, resuming, scaling out -----------------------------------------------------------------------------


@pytest.mark.slow
def test_segformer_from_scratch_learns_digit_canvases_and_the_output_loads_everywhere(canvases, tmp_path, capsys):
    pytest.importorskip("transformers")
    import transformers

    out = tmp_path / "run"
    # From scratch, at this size and length, augmentation slows learning more than it helps: the recipe turns it
    # off (README, "Segmentation fine-tuning").
    code = cli(
        [
            "train",
            "--task",
            "semantic-segmentation",
            "--data",
            str(canvases),
            "--arch",
            "mit_b0",
            "--image-size",
            "48",
            "--epochs",
            "12",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--head-lr-scale",
            "1",
            "--warmup-epochs",
            "1",
            "--scale-range",
            "1",
            "1",
            "--cat-max-ratio",
            "1",
            "--no-jitter",
            "--no-hflip",
            "--num-workers",
            "2",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    summary = capsys.readouterr().out
    history = read_metrics(out)
    best = max(h["val_mean_iou"] for h in history)
    assert best >= 0.3, history  # 11 classes; background everywhere gives 0.08 (measured here: 0.42)
    assert "best validation mIoU" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["3"] == "2" and config["architectures"] == ["SegformerForSemanticSegmentation"]
    # transformers loads it, and predicts what pvtkit predicts.
    theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(out).eval()
    ours = pvtkit.AutoModelForSemanticSegmentation.from_pretrained(out).eval()
    pixels = pvtkit.SegformerImageProcessor.from_pretrained(out)(
        PIL.Image.open(next((canvases / "val" / "images").glob("*.jpg"))), return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        assert torch.allclose(theirs(pixel_values=pixels).logits, ours(pixel_values=pixels).logits, atol=1e-4)
    # pvtkit eval reproduces the best epoch's validation mIoU; pvtkit segment runs on it.
    report = tmp_path / "eval.json"
    assert (
        cli(
            [
                "eval",
                "-m",
                str(out),
                "-d",
                str(canvases),
                "--format",
                "json",
                "-o",
                str(report),
                "-q",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["mean_iou"] == pytest.approx(best, abs=1e-6)
    assert (
        cli(
            [
                "segment",
                str(canvases / "val" / "images" / "0768.jpg"),
                "-m",
                str(out),
                "-o",
                str(tmp_path / "seg"),
                "--format",
                "json",
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_a_sigkilled_segmentation_run_resumes_to_the_same_result(small, tiny_seg, tmp_path, one_thread):
    reference = tmp_path / "reference"
    assert cli(tiny_args(small, tiny_seg, reference, "--epochs", "3")) == 0
    history = read_metrics(reference)
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "pvtkit",
        *tiny_args(small, tiny_seg, killed, "--epochs", "3", "--save-steps", "1"),
    ]
    kill_training_at_step(command, killed, 8, ROOT)
    state_file = killed / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert 8 <= state["global_step"] < state["total_steps"] == 18

    assert cli(["train", "--output", str(killed), "--resume", "--num-workers", "0", "-q"]) == 0
    resumed = read_metrics(killed)
    assert [h["lr"] for h in resumed] == pytest.approx([h["lr"] for h in history], rel=1e-12)
    for key in ("train_loss", "train_pixel_accuracy", "val_loss", "val_mean_iou", "val_overall_accuracy"):
        assert [h[key] for h in resumed] == pytest.approx([h[key] for h in history], rel=1e-5, abs=1e-6), key
    same_state(killed / "model.safetensors", reference / "model.safetensors", 1e-5)
    processor = json.loads((killed / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32} and processor["do_reduce_labels"] is False


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_segmentation_model_as_one(
    small, tiny_seg_no_dropout, tmp_path, one_thread
):
    one, two, model = tmp_path / "one", tmp_path / "two", tiny_seg_no_dropout
    assert cli(tiny_args(small, model, one, "--epochs", "2")) == 0
    command = [
        *TORCHRUN_PVTKIT,
        *tiny_args(small, model, two, "--epochs", "2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained SegformerForSemanticSegmentation") == 1 and "2 process(es)" in done.stdout
    h1, h2 = read_metrics(one), read_metrics(two)
    # The decode head's BatchNorm normalises over both processes' images: the same training as one process.
    for key in ("train_loss", "train_pixel_accuracy", "lr"):
        assert [h[key] for h in h2] == pytest.approx([h[key] for h in h1], rel=1e-4, abs=1e-5), key
    # Except where the architecture amplifies rounding: the projections' biases feed the fuse conv and then the
    # BatchNorm, which subtracts every constant, so their exact gradient is 0 and what autograd returns is rounding
    # noise, which AdamW scales up to full-size steps (in transformers' SegFormer alike). Training outputs never
    # see them; the running mean follows them, so validation (eval-mode BatchNorm) differs a little.
    noise = {f"decode_head.linear_c.{i}.proj.bias" for i in range(4)} | {"decode_head.batch_norm.running_mean"}
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if k not in noise)
    assert worst < 1e-3, worst
    for key in ("val_loss", "val_mean_iou"):
        assert [h[key] for h in h2] == pytest.approx([h[key] for h in h1], rel=5e-2), key
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(model).train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, len(CLASSES), (2, 32, 32))
    model(pixel_values=x, labels=y).loss.backward()
    for i in range(4):
        assert model.decode_head.linear_c[i].proj.bias.grad.abs().max() < 1e-6  # the exact gradient is 0


def test_a_pvtv2_classifier_starts_a_segmentation_fine_tune_in_bf16_with_checkpointing(
    small, tmp_path, one_thread, caplog
):
    torch.manual_seed(0)
    classifier = tmp_path / "pvt-classifier"
    config = pvtkit.PvtV2Config(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
        num_labels=3,
    )
    pvtkit.PvtV2ForImageClassification(config).save_pretrained(classifier)
    out = tmp_path / "out"
    assert (
        cli(
            tiny_args(
                small,
                classifier,
                out,
                "--epochs",
                "1",
                "--precision",
                "bf16",
                "--gradient-checkpointing",
                "--grad-accum",
                "2",
            )
        )
        == 0
    )
    assert "new 11-class head" in caplog.text
    model = pvtkit.AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(model).__name__ == "PvtV2ForSemanticSegmentation" and model.config.id2label[1] == "0"
    # The encoder is the classifier's, trained on: its weights moved from where they started.
    start = load_file(classifier / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    key = "pvt_v2.encoder.layers.0.blocks.0.mlp.dense1.weight"
    assert key in trained and not torch.equal(trained[key], start[key])
    record = read_metrics(out)[0]
    assert np.isfinite(record["train_loss"]) and 0 <= record["val_mean_iou"] <= 1


@pytest.mark.slow
def test_eval_under_torchrun_sums_the_counts_of_both_processes(small, tiny_seg, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    base = [
        "-m",
        "pvtkit",
        "eval",
        "-m",
        str(tiny_seg),
        "-d",
        str(small),
        "--format",
        "json",
        "-q",
        "--num-workers",
        "0",
        "--batch-size",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *base, "-o", str(one)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *base,
        "-o",
        str(two),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["num_images"] == b["num_images"] == 16  # 8 per process, each image once
    assert a["confusion_matrix"] == b["confusion_matrix"]  # pixel counts: exactly the same sums
    assert a["mean_iou"] == b["mean_iou"] and a["per_class"] == b["per_class"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
