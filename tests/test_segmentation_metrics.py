"""The segmentation metrics beside mIoU: Dice, precision, recall and F-score from the pixel confusion matrix, checked
against scikit-learn on the flattened labels; Boundary IoU (Cheng et al. 2021), its band checked against a chessboard
distance transform (scipy) of each class mask and its accumulation against a direct per-image computation; and the
evaluator's report and training's validation record, against an independent forward of a tiny SegFormer."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import jaccard_score, precision_recall_fscore_support

import pvtkit
from pvtkit import tasks
from pvtkit.data.folders import IGNORE_INDEX
from pvtkit.evaluation import SegmentationMetric, boundary_band, evaluate_segmentation, iou_from_confusion

from helpers import CLASSES, write_dataset


def reference_band(labels: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """Each class's pixels within chessboard distance d of a pixel of another class or of the outside of the image
    (the mask padded with zeros), d = max(1, round(ratio * diagonal)): scipy's distance transform per class."""
    d = max(1, int(round(ratio * math.hypot(*labels.shape))))
    band = np.zeros(labels.shape, dtype=bool)
    for value in np.unique(labels):
        inside = np.pad(labels == value, 1)
        distance = ndimage.distance_transform_cdt(inside, metric="chessboard")[1:-1, 1:-1]
        band |= (labels == value) & (distance <= d)
    return band


def blobs(rng: np.random.Generator, shape: tuple[int, int], classes: int, smooth: int = 5) -> np.ndarray:
    """A class map of blobs (a smoothed random field's argmax), not salt-and-pepper noise: bands of any width."""
    field = ndimage.uniform_filter(rng.random((classes, *shape)), size=(1, smooth, smooth), mode="nearest")
    return field.argmax(0)


# ---- Dice, precision, recall, F-score --------------------------------------------------------------------------


def test_confusion_metrics_match_scikit_learn_on_the_flattened_labels():
    rng = np.random.default_rng(0)
    k = 6  # class 3: only predicted; class 4: in neither; class 5: only in the labels, never predicted
    labels = rng.choice([0, 1, 2, 5, IGNORE_INDEX], size=(3, 17, 19), p=[0.4, 0.2, 0.2, 0.1, 0.1])
    predicted = np.where(rng.random(labels.shape) < 0.6, labels, rng.choice([0, 1, 2, 3], size=labels.shape))
    predicted = np.where((labels == IGNORE_INDEX) | (predicted == 5), 0, predicted)
    metric = SegmentationMetric(k, boundary_ratio=None)
    for lab, pred in zip(labels, predicted):
        metric.update(torch.from_numpy(pred), torch.from_numpy(lab))
    m = metric.compute()

    valid = labels.ravel() != IGNORE_INDEX
    y_true, y_pred = labels.ravel()[valid], predicted.ravel()[valid]
    present = [0, 1, 2, 3, 5]
    precision, recall, fscore, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average=None, zero_division=0
    )
    jaccard = jaccard_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    np.testing.assert_allclose(m["per_category_precision"][present], precision, rtol=1e-12)
    np.testing.assert_allclose(m["per_category_recall"][present], recall, rtol=1e-12)
    np.testing.assert_allclose(m["per_category_fscore"][present], fscore, rtol=1e-12)
    np.testing.assert_allclose(m["per_category_dice"][present], fscore, rtol=1e-12)  # F1 is Dice
    np.testing.assert_allclose(m["per_category_iou"][present], jaccard, rtol=1e-12)
    # the edge cases, by name: never predicted, only predicted, in neither
    assert m["per_category_precision"][5] == 0.0 and m["per_category_recall"][5] == 0.0
    assert m["per_category_recall"][3] == 0.0 and m["per_category_dice"][3] == 0.0
    for key in ("iou", "dice", "precision", "recall", "fscore"):
        assert np.isnan(m[f"per_category_{key}"][4]), key
    # the means leave out only the class in neither (sklearn's macro average over the present classes)
    for key, values in (("precision", precision), ("recall", recall), ("fscore", fscore), ("dice", fscore)):
        assert m[f"mean_{key}"] == pytest.approx(values.mean(), rel=1e-12), key


def test_metrics_of_an_empty_or_perfect_confusion_matrix():
    empty = iou_from_confusion(np.zeros((3, 3)))
    assert all(math.isnan(empty[f"mean_{key}"]) for key in ("iou", "dice", "precision", "recall", "fscore"))
    perfect = iou_from_confusion(np.diag([5, 0, 7]))
    assert perfect["mean_dice"] == perfect["mean_fscore"] == perfect["mean_precision"] == 1.0
    assert np.isnan(perfect["per_category_dice"][1])


# ---- Boundary IoU ------------------------------------------------------------------------------------------------


def test_boundary_band_of_a_square_by_hand():
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[2:6, 2:6] = 1  # d = round(0.02 * 11.3) = 1
    band = boundary_band(torch.from_numpy(labels)).numpy()
    # the square's ring; the background is all within 1 of the image's edge or of the square
    expected = np.ones((8, 8), dtype=bool)
    expected[3:5, 3:5] = False
    np.testing.assert_array_equal(band, expected)
    wide = np.zeros((40, 40), dtype=np.int64)
    wide[10:30, 10:30] = 1  # d = round(0.02 * 56.6) = 1
    expected = np.zeros((40, 40), dtype=bool)
    expected[[0, -1], :] = expected[:, [0, -1]] = True  # the image's edge
    expected[9:31, 9:31] = True  # the square's ring and the background's ring around it
    expected[11:29, 11:29] = False  # the square's inside
    np.testing.assert_array_equal(boundary_band(torch.from_numpy(wide)).numpy(), expected)


@pytest.mark.parametrize("shape, ratio", [((9, 13), 0.02), ((40, 31), 0.02), ((48, 64), 0.1), ((33, 70), 0.25)])
def test_boundary_band_matches_a_distance_transform_per_class(shape, ratio):
    rng = np.random.default_rng(sum(shape))
    labels = blobs(rng, shape, 4)
    labels[rng.random(shape) < 0.02] = IGNORE_INDEX  # a value like any other here
    band = boundary_band(torch.from_numpy(labels), ratio).numpy()
    np.testing.assert_array_equal(band, reference_band(labels, ratio))
    batch = boundary_band(torch.from_numpy(np.stack([labels, labels[::-1].copy()])), ratio).numpy()
    np.testing.assert_array_equal(batch[1], reference_band(labels[::-1], ratio))
    large = boundary_band(torch.from_numpy(labels * 1000 + 2**15), ratio).numpy()  # values past int16's range
    np.testing.assert_array_equal(large, band)


def test_boundary_iou_of_a_shifted_square_by_hand():
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[2:6, 2:6] = 1
    predicted = np.roll(labels, 1, axis=1)  # one column to the right
    metric = SegmentationMetric(2)
    metric.update(torch.from_numpy(predicted), torch.from_numpy(labels))
    # the two 12-pixel rings share the top and bottom rows' three middle pixels: 6 / (12 + 12 - 6)
    assert metric.compute()["per_category_boundary_iou"][1] == pytest.approx(1 / 3, rel=1e-12)
    same = SegmentationMetric(2)
    same.update(torch.from_numpy(labels), torch.from_numpy(labels))
    np.testing.assert_array_equal(same.compute()["per_category_boundary_iou"], [1.0, 1.0])


def reference_boundary_counts(maps, k: int, ratio: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Boundary IoU's intersection and union per class over `(labels, predicted)` maps, class by class and image by
    image: bands from the distance transform (an ignored region is a region of its own), ignored pixels left out."""
    intersection, union = np.zeros(k), np.zeros(k)
    for labels, predicted in maps:
        valid = labels != IGNORE_INDEX
        label_band = reference_band(np.where(valid, labels, -1), ratio) & valid
        predicted_band = reference_band(predicted, ratio) & valid
        for c in range(k):
            g, p = label_band & (labels == c), predicted_band & (predicted == c)
            intersection[c] += (g & p).sum()
            union[c] += (g | p).sum()
    return intersection, union


def test_boundary_iou_accumulates_over_images_like_a_direct_computation():
    rng = np.random.default_rng(3)
    k = 5  # class 4 in neither map
    maps = []
    for shape in [(24, 30), (50, 41), (16, 16), (60, 90)]:
        labels = blobs(rng, shape, 4, smooth=7)
        predicted = np.where(rng.random(shape) < 0.9, labels, rng.integers(0, 4, size=shape))
        predicted = np.roll(predicted, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        labels[ndimage.uniform_filter(rng.random(shape), 5) > 0.6] = IGNORE_INDEX
        maps.append((labels, predicted))
    metric = SegmentationMetric(k)
    for labels, predicted in maps:
        metric.update(torch.from_numpy(predicted), torch.from_numpy(labels))
    m = metric.compute()
    intersection, union = reference_boundary_counts(maps, k)
    with np.errstate(invalid="ignore"):
        expected = intersection / union
    np.testing.assert_allclose(m["per_category_boundary_iou"], expected, rtol=1e-12)
    assert np.isnan(m["per_category_boundary_iou"][4])
    assert m["mean_boundary_iou"] == pytest.approx(np.nanmean(expected), rel=1e-12)
    assert 0.2 < m["mean_boundary_iou"] < m["mean_iou"] < 1  # boundaries are the hard part of a noisy prediction


# ---- the evaluator, its report, training's record ---------------------------------------------------------------


class Thresholder(torch.nn.Module):
    """A stand-in segmentation model whose scores are far from chance (a random SegFormer's are all near 0):
    background where the image is dark, else a digit class picked by a fixed random convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)))
        torch.manual_seed(0)
        self.digits = torch.nn.Conv2d(3, len(CLASSES) - 1, 5, padding=2)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        background = -3 * pixel_values.mean(1, keepdim=True)  # normalised: about -2 dark, +2 on a stroke
        return SimpleNamespace(logits=torch.cat((background, self.digits(pixel_values)), 1)[:, :, ::2, ::2])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, object]:
    data = write_dataset(tmp_path_factory.mktemp("metrics") / "data", 4, 6, size=40)
    processor = pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32})
    result = evaluate_segmentation(Thresholder(), data, processor=processor, device="cpu", progress=False)
    return data, result


def test_the_evaluator_reports_every_metric_like_an_independent_forward(evaluated):
    data, result = evaluated
    model = Thresholder().eval()
    processor = pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32})
    maps = []
    for image_path in sorted((data / "val" / "images").glob("*.jpg")):
        mask = np.asarray(PIL.Image.open(data / "val" / "masks" / f"{image_path.stem}.png")).astype(np.int64)
        with torch.no_grad():
            logits = model(**processor(PIL.Image.open(image_path).convert("RGB"), return_tensors="pt")).logits
        predicted = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False).argmax(1)[0]
        maps.append((mask, predicted.numpy()))
    y_true = np.concatenate([m.ravel() for m, _ in maps])
    y_pred = np.concatenate([p.ravel() for _, p in maps])
    k = len(CLASSES)
    present = sorted(set(y_true) | set(y_pred))
    precision, recall, fscore, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average=None, zero_division=0
    )
    intersection, union = reference_boundary_counts(maps, k)
    report = result.to_dict()
    for i, c in enumerate(present):
        row = report["per_class"][CLASSES[c]]
        assert row["precision"] == pytest.approx(precision[i], rel=1e-9, abs=1e-12)
        assert row["recall"] == pytest.approx(recall[i], rel=1e-9, abs=1e-12)
        assert row["dice"] == pytest.approx(fscore[i], rel=1e-9, abs=1e-12)
        assert row["fscore"] == pytest.approx(fscore[i], rel=1e-9, abs=1e-12)
        assert row["boundary_iou"] == pytest.approx(intersection[c] / union[c], rel=1e-9, abs=1e-12)
    absent = [CLASSES[c] for c in range(k) if c not in present]
    assert all(report["per_class"][name]["dice"] is None for name in absent)
    assert report["mean_dice"] == pytest.approx(fscore.mean(), rel=1e-9)
    assert report["mean_precision"] == pytest.approx(precision.mean(), rel=1e-9)
    assert report["mean_boundary_iou"] == pytest.approx(np.mean(intersection[present] / union[present]), rel=1e-9)
    assert report["boundary_ratio"] == 0.02
    # far from chance, and the boundaries are where the errors are
    assert report["per_class"]["background"]["iou"] > report["per_class"]["background"]["boundary_iou"] > 0.3


def test_the_table_and_the_validation_record_carry_the_new_metrics(evaluated):
    data, result = evaluated
    task = tasks.get("semantic-segmentation")
    report = {"model": "thresholder", "data": str(data), **result.to_dict()}
    table = task.report_table(report)
    assert f"mDice (= mF1)     {report['mean_dice']:.2%}" in table
    assert f"boundary mIoU     {report['mean_boundary_iou']:.2%}" in table
    assert f"mean recall {report['mean_recall']:.2%}" in table
    row = next(line for line in table.splitlines() if line.startswith("background "))
    background = report["per_class"]["background"]
    assert row.split()[1:6] == [
        f"{background[key]:.2%}" for key in ("iou", "dice", "precision", "accuracy", "boundary_iou")
    ]
    record, score = task.validation_record(result)
    assert score == result.mean_iou
    assert record["val_mean_iou"] == result.mean_iou and record["val_mean_accuracy"] == result.mean_accuracy
    for key in ("dice", "precision", "recall", "fscore", "boundary_iou"):
        assert record[f"val_mean_{key}"] == report[f"mean_{key}"], key
