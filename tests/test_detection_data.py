"""COCO-format detection data: the layouts, every kind of bad input (each reported by file, annotation id and value),
Deformable DETR's augmentation keeping the boxes on the objects, batching, and COCO mAP against pycocotools run by
hand. The data are real handwritten digits pasted onto canvases (`helpers.detection_dataset`)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from pvtkit.coco_metrics import STAT_NAMES, coco_evaluate
from pvtkit.data.detection import (
    DETECTION_LAYOUTS,
    DetectionEvalDataset,
    DetectionTrainDataset,
    DetectionTrainTransform,
    detection_collate,
    load_detection_data,
)
from pvtkit.data.folders import DatasetError, LayoutError

from helpers import detection_dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROCESSOR = SimpleNamespace(
    do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=MEAN, image_std=STD, resample=2
)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return detection_dataset(tmp_path_factory.mktemp("digits"), n_train=8, n_val=4, size=(96, 128), seed=0)


@pytest.fixture
def copy(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made, tmp_path / "data"))


def _json(root: Path, split: str = "train") -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _write(root: Path, document: dict, split: str = "train") -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(document))
    return path


# ---- reading ----------------------------------------------------------------------------------------------------


def test_coco_layout_classes_by_id_and_boxes_as_written(made: Path) -> None:
    data = load_detection_data(made)
    document = _json(made)
    assert data.layout == "COCO" and data.val_source == "folder"
    assert data.classes == ["zero", "one", "two"]  # by id (1, 2, 3), though the file lists them 3, 2, 1
    assert data.category_ids == [1, 2, 3] and data.class_of == {1: 0, 2: 1, 3: 2}
    assert [len(data.train), len(data.val)] == [8, 4]
    by_id = {s.image_id: s for s in data.train}
    for a in document["annotations"]:
        s = by_id[a["image_id"]]
        row = list(s.annotation_ids).index(a["id"])
        x, y, w, h = a["bbox"]
        np.testing.assert_array_equal(s.boxes[row], [x, y, x + w, y + h])
        assert data.category_ids[s.labels[row]] == a["category_id"]
    assert any(s.num_objects == 0 for s in data.train)  # images without objects are kept
    assert data.counts() == {"classes": [3], "images": [8, 4], "objects": [len(document["annotations"]), 3]}
    assert "8 images" in data.report() and not any(data.issues.values())
    samples, truth = data.evaluation_set("val")
    assert samples == data.val and len(truth["images"]) == 4 and truth["categories"][0]["id"] == 1


def _move_images(root: Path, mapping: dict[str, Path]) -> None:
    for split, target in mapping.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / split, target)


def test_coco_2017_names(copy: Path) -> None:
    for split in ("train", "val"):
        (copy / "annotations" / f"instances_{split}.json").rename(copy / "annotations" / f"instances_{split}2017.json")
    _move_images(copy, {"train": copy / "train2017", "val": copy / "val2017"})
    data = load_detection_data(copy)
    assert data.layout == "COCO" and [len(data.train), len(data.val)] == [8, 4]
    assert data.train[0].path.startswith(str(copy / "train2017"))


def test_images_folder_with_subpaths(copy: Path) -> None:
    _move_images(copy, {"train": copy / "images" / "train", "val": copy / "images" / "val"})
    for split in ("train", "val"):
        document = _json(copy, split)
        for image in document["images"]:
            image["file_name"] = f"{split}/{image['file_name']}"
        _write(copy, document, split)
    data = load_detection_data(copy)
    assert [len(data.train), len(data.val)] == [8, 4] and not any(data.issues.values())


def test_roboflow_split_folders(copy: Path) -> None:
    for split, folder in (("train", "train"), ("val", "valid")):
        if folder != split:
            (copy / split).rename(copy / folder)
        shutil.move(copy / "annotations" / f"instances_{split}.json", copy / folder / "_annotations.coco.json")
    data = load_detection_data(copy)
    assert data.layout == "split folders" and [len(data.train), len(data.val)] == [8, 4]
    assert not data.issues["image files no annotation file lists"]  # the JSON beside the images is no image


def test_single_file_holds_out_a_reproducible_fraction(copy: Path) -> None:
    shutil.rmtree(copy / "val")
    (copy / "annotations" / "instances_val.json").unlink()
    shutil.move(copy / "annotations" / "instances_train.json", copy / "annotations.json")
    shutil.move(copy / "train", copy / "images")
    data = load_detection_data(copy, val_fraction=0.25)
    assert data.layout == "single file" and data.val_source == "fraction"
    assert [len(data.train), len(data.val)] == [6, 2]
    assert {s.path for s in data.train}.isdisjoint(s.path for s in data.val)
    again = load_detection_data(copy, val_fraction=0.25)
    assert [s.path for s in again.val] == [s.path for s in data.val]
    assert [s.path for s in load_detection_data(copy, 0.25, seed=1).val] != [s.path for s in data.val]


def test_no_layout_ambiguous_layout_and_no_directory(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_detection_data(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError) as e:
        load_detection_data(tmp_path / "empty")
    assert DETECTION_LAYOUTS in str(e.value)
    shutil.copy(copy / "annotations" / "instances_train.json", copy / "annotations" / "instances_train2014.json")
    with pytest.raises(LayoutError, match="instances_train2014.json"):
        load_detection_data(copy)


# ---- bad input: each reported by file, annotation id and value --------------------------------------------------


def _annotation(document: dict, image_index: int = 0) -> dict:
    image_id = document["images"][image_index]["id"]
    return next(a for a in document["annotations"] if a["image_id"] == image_id)


def test_box_partly_outside_is_clipped_and_said_once(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    document = _json(copy)
    first, second = document["annotations"][:2]
    first["bbox"] = [-5, 10, 20, 30]
    second["bbox"] = [120, 90, 20, 20]  # the image is 128 x 96
    path = _write(copy, document)
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        data = load_detection_data(copy)
    clipped = data.issues["boxes clipped to their image"]
    assert len(clipped) == 2
    assert str(path) in clipped[0] and f"annotation {first['id']}" in clipped[0] and "[-5, 10, 20, 30]" in clipped[0]
    assert sum("boxes clipped" in r.getMessage() for r in caplog.records) == 1
    boxes = {aid: box for s in data.train for aid, box in zip(s.annotation_ids, s.boxes)}
    np.testing.assert_array_equal(boxes[first["id"]], [0, 10, 15, 40])
    np.testing.assert_array_equal(boxes[second["id"]], [120, 90, 128, 96])
    assert "2 boxes clipped to their image" in data.report()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"bbox": [10, 10, 0, 5]}, "zero or negative size"),
        ({"bbox": [10, 10, 5, -3]}, "zero or negative size"),
        ({"bbox": [200, 10, 5, 5]}, "outside the image"),
        ({"bbox": [10, 10, "5", 5]}, "not 4 finite numbers"),
        ({"category_id": 7}, "category_id 7 is no category"),
        ({"image_id": 999}, "image_id 999 is not in its images"),
    ],
)
def test_bad_annotation_is_skipped_and_named(copy: Path, change: dict, words: str) -> None:
    document = _json(copy)
    bad = _annotation(document)
    bad.update(change)
    path = _write(copy, document)
    data = load_detection_data(copy)
    assert bad["id"] not in {int(a) for s in data.train for a in s.annotation_ids}
    (entry,) = data.issues["annotations skipped"]
    assert str(path) in entry and f"annotation {bad['id']}" in entry and words in entry
    value = next(iter(change.values()))
    assert str(value) in entry or repr(value) in entry


def test_missing_and_unlisted_images_are_reported(copy: Path) -> None:
    (copy / "train" / "001.png").unlink()
    shutil.copy(copy / "train" / "000.png", copy / "train" / "stray.png")
    data = load_detection_data(copy)
    assert len(data.train) == 7
    (missing,) = data.issues["listed images missing on disk (skipped)"]
    assert "instances_train.json" in missing and "image 101" in missing and "001.png" in missing
    assert data.issues["image files no annotation file lists"] == [str(copy / "train" / "stray.png")]


def test_image_of_another_size_than_listed_is_skipped(copy: Path) -> None:
    document = _json(copy)
    document["images"][2]["width"] = 64
    _write(copy, document)
    data = load_detection_data(copy)
    (entry,) = data.issues["images of another size than listed (skipped)"]
    assert "image 102" in entry and "listed 64x96" in entry and "128x96" in entry


def test_size_not_listed_is_the_files(copy: Path) -> None:
    document = _json(copy)
    del document["images"][0]["width"], document["images"][0]["height"]
    _write(copy, document)
    data = load_detection_data(copy)
    sample = next(s for s in data.train if s.image_id == document["images"][0]["id"])
    assert (sample.width, sample.height) == (128, 96) and not any(data.issues.values())


def test_crowd_regions_are_evaluated_not_trained_on(copy: Path) -> None:
    document = _json(copy)
    crowd = _annotation(document)
    crowd["iscrowd"] = 1
    _write(copy, document)
    data = load_detection_data(copy)
    sample = next(s for s in data.train if crowd["id"] in s.annotation_ids)
    assert sample.crowd.sum() == 1 and sample.num_objects == len(sample.boxes) - 1
    truth = data.ground_truth([sample])
    assert [a["iscrowd"] for a in truth["annotations"] if a["id"] == crowd["id"]] == [1]
    dataset = DetectionTrainDataset([sample], PROCESSOR, {"image_size": 128, "seed": 0, "random_crop": False})
    _, target, *_ = dataset[0, 0]
    assert len(target["boxes"]) == sample.num_objects


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"images": [1, 2,\n  ]}', "line 2, column 3"),
        ('{"images": [], "annotations": [], "categories": []}', '"images" is empty'),
        (
            '{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "zero"}]}',
            'images[0] has no "file_name"',
        ),
        ('{"annotations": [], "categories": []}', 'no "images" key'),
        ('{"images": {}, "annotations": [], "categories": []}', '"images" is a JSON dict'),
    ],
)
def test_malformed_file_is_an_error_naming_it(copy: Path, text: str, words: str) -> None:
    path = copy / "annotations" / "instances_val.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as e:
        load_detection_data(copy)
    assert str(path) in str(e.value) and words in str(e.value)


def test_repeated_ids_are_errors(copy: Path) -> None:
    document = _json(copy)
    document["annotations"][1]["id"] = document["annotations"][0]["id"]
    _write(copy, document)
    with pytest.raises(DatasetError, match=f"annotation id {document['annotations'][0]['id']} is used twice"):
        load_detection_data(copy)


def test_exif_rotated_image_decodes_upright_when_listed_so(copy: Path) -> None:
    document = _json(copy)
    image = document["images"][0]
    stored = PIL.Image.open(copy / "train" / image["file_name"]).convert("RGB").transpose(PIL.Image.Transpose.ROTATE_90)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # view rotated 90 degrees clockwise: the stored pixels are the upright ones turned back
    image["file_name"] = "rotated.jpg"
    stored.save(copy / "train" / "rotated.jpg", exif=exif.tobytes(), quality=95)
    _write(copy, document)
    (copy / "train" / "000.png").unlink()
    data = load_detection_data(copy)
    sample = next(s for s in data.train if s.file_name == "rotated.jpg")
    assert sample.upright and (sample.width, sample.height) == (128, 96)
    pixels, *_ = DetectionTrainDataset([sample], PROCESSOR, {"image_size": 96, "seed": 0})[0, 0]
    assert pixels.shape[2] > pixels.shape[1]  # landscape, as annotated


# ---- training: the augmentation keeps the boxes on the digits ---------------------------------------------------


def _ink(pixels: torch.Tensor) -> np.ndarray:
    """Where the augmented image holds the digits' ink, from the normalised pixels: darker than the canvas by 35% of
    the way to the ink (grey ~30), the level `detection_dataset` draws its boxes at (resampling moves that level's
    edge by a fraction of a pixel)."""
    grey = (pixels.numpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)).mean(2) * 255
    canvas = np.median(grey)
    return grey < canvas - 0.35 * (canvas - 30)


def test_scales_follow_the_paper() -> None:
    paper = DetectionTrainTransform(PROCESSOR, 800)
    assert paper.scales == tuple(range(480, 801, 32)) and paper.max_size == 1333
    assert paper.crop_resize == (400, 500, 600) and paper.crop_range == (384, 600)
    small = DetectionTrainTransform(PROCESSOR, 128)
    assert small.scales == tuple(sorted({round(s * 128 / 800) for s in range(480, 801, 32)})) and small.max_size == 213
    assert small.crop_resize == (64, 80, 96) and small.crop_range == (61, 96)


def test_augmented_boxes_stay_on_the_digits(tmp_path: Path) -> None:
    root = detection_dataset(tmp_path, n_train=6, n_val=1, size=(96, 128), seed=3, noise=False)
    data = load_detection_data(root)
    dataset = DetectionTrainDataset(data.train, PROCESSOR, {"image_size": 128, "seed": 0})
    tol = 2  # pixels; a wrong flip or crop offset moves a box by tens
    sizes, dropped = set(), 0
    for index in range(len(data.train)):
        for epoch in range(5):
            pixels, target, weight, _, reason = dataset[index, epoch]
            assert weight == 1.0 and reason == ""
            _, H, W = pixels.shape
            sizes.add((H, W))
            assert min(H, W) in dataset.transform.scales and max(H, W) <= dataset.transform.max_size
            ink = _ink(pixels)
            boxes = target["boxes"].numpy() * np.array([W, H, W, H])
            corners = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2], 1)
            corners = np.concatenate([corners, corners + boxes[:, 2:]], 1)
            dropped += data.train[index].num_objects - len(corners)
            covered = np.zeros_like(ink)
            for x0, y0, x1, y1 in corners:
                assert -1e-4 <= x0 < x1 <= W + 1e-4 and -1e-4 <= y0 < y1 <= H + 1e-4
                a, b = max(int(np.floor(y0)) - tol, 0), int(np.ceil(y1)) + tol
                c, d = max(int(np.floor(x0)) - tol, 0), int(np.ceil(x1)) + tol
                covered[a:b, c:d] = True
                ys, xs = np.nonzero(ink[a:b, c:d])
                if x1 - x0 < 4 or y1 - y0 < 4:
                    continue  # a sliver a crop left: too thin to hold ink reliably
                assert len(ys), f"item ({index}, {epoch}): no ink in box {x0, y0, x1, y1}"
                found = (c + xs.min(), a + ys.min(), c + xs.max() + 1, a + ys.max() + 1)
                for edge, (want, got) in enumerate(zip((x0, y0, x1, y1), found)):
                    at_border = want < 0.5 or (edge == 2 and want > W - 0.5) or (edge == 3 and want > H - 0.5)
                    if not at_border:  # an edge a crop made need not have ink along it
                        assert abs(want - got) <= tol, f"item ({index}, {epoch}): box {x0, y0, x1, y1}, ink {found}"
            assert not (ink & ~covered).any(), f"item ({index}, {epoch}): ink outside every box"
    assert len(sizes) > 4 and dropped > 0  # multi-scale, and crops that leave objects out


def test_augmentation_is_a_function_of_seed_epoch_index(made: Path) -> None:
    data = load_detection_data(made)
    settings = {"image_size": 128, "seed": 0}
    a, b = (
        DetectionTrainDataset(data.train, PROCESSOR, settings),
        DetectionTrainDataset(data.train, PROCESSOR, settings),
    )
    for key in ((0, 0), (1, 3), (5, 2)):
        x, t, *_ = a[key]
        y, u, *_ = b[key]
        assert (
            torch.equal(x, y)
            and torch.equal(t["boxes"], u["boxes"])
            and torch.equal(t["class_labels"], u["class_labels"])
        )
    differs = [
        not torch.equal(a[1, e][0], a[1, 0][0]) if a[1, e][0].shape == a[1, 0][0].shape else True for e in range(1, 6)
    ]
    assert any(differs)
    other = DetectionTrainDataset(data.train, PROCESSOR, {**settings, "seed": 1})
    assert any(
        not torch.equal(other[i, 0][0], a[i, 0][0]) if other[i, 0][0].shape == a[i, 0][0].shape else True
        for i in range(4)
    )


def test_undecodable_image_has_weight_zero_and_a_reason(copy: Path) -> None:
    data = load_detection_data(copy)
    Path(data.train[0].path).write_bytes(b"not an image")
    pixels, target, weight, index, reason = DetectionTrainDataset(
        data.train, PROCESSOR, {"image_size": 128, "seed": 0}
    )[0, 0]
    assert weight == 0.0 and index == 0 and "cannot decode" in reason
    assert pixels.ndim == 3 and len(target["boxes"]) == 0 and target["boxes"].shape == (0, 4)


def test_collate_pads_and_masks_and_keeps_boxes_relative_to_each_image(made: Path) -> None:
    data = load_detection_data(made)
    dataset = DetectionTrainDataset(data.train, PROCESSOR, {"image_size": 128, "seed": 0})
    items = [dataset[i, 0] for i in range(4)]
    (values, mask), targets, weights, indices, reasons = detection_collate(items)
    H, W = max(i[0].shape[1] for i in items), max(i[0].shape[2] for i in items)
    assert values.shape == (4, 3, H, W) and mask.shape == (4, H, W) and mask.dtype == torch.int64
    for n, (pixels, target, *_) in enumerate(items):
        h, w = pixels.shape[1:]
        assert torch.equal(values[n, :, :h, :w], pixels) and values[n, :, h:].abs().sum() == 0
        assert mask[n].sum() == h * w and mask[n, :h, :w].all()
        assert torch.equal(targets[n]["boxes"], target["boxes"])
    assert weights.dtype == torch.float32 and torch.equal(indices, torch.arange(4)) and reasons == [""] * 4
    # transformers' convention (boxes relative to the padded image), as its processor's pad gives it
    from transformers import DeformableDetrImageProcessor

    processor = DeformableDetrImageProcessor()
    padded = detection_collate(items, boxes_relative_to="padded")[1]
    for n, (pixels, target, *_) in enumerate(items):
        _, _, theirs = processor.pad(pixels.numpy(), (H, W), annotation={"boxes": target["boxes"].numpy().copy()})
        np.testing.assert_allclose(padded[n]["boxes"].numpy(), theirs["boxes"], rtol=1e-6)
    first = data.val[0]
    pixels, target, weight, *_ = DetectionEvalDataset([first], processor)[0]
    assert weight == 1.0 and target == {"image_id": first.image_id, "orig_size": (96, 128)}
    assert tuple(pixels.shape) == (3, 800, 1066)  # transformers' resize: shortest side 800, the other int(800 * 4 / 3)


# ---- COCO mAP ---------------------------------------------------------------------------------------------------


def _pycocotools(truth: dict, detections: list[dict], categories: list[int] | None = None) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(truth))
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(json.loads(json.dumps(detections))), "bbox")
        if categories is not None:
            evaluation.params.catIds = categories
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def _detections(truth: dict, rng: np.random.Generator, jitter: float, extra: int) -> list[dict]:
    out = []
    for a in truth["annotations"]:
        x, y, w, h = a["bbox"]
        noise = rng.normal(0, jitter, 4) * [w, h, w, h]
        category = a["category_id"] if rng.random() > 0.15 else truth["categories"][0]["id"]
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": category,
                "bbox": list(np.add([x, y, w, h], noise)),
                "score": rng.random(),
            }
        )
    for _ in range(extra):
        image = truth["images"][int(rng.integers(len(truth["images"])))]
        x, y = rng.uniform(0, 100), rng.uniform(0, 70)
        out.append(
            {
                "image_id": image["id"],
                "category_id": int(rng.integers(1, 4)),
                "bbox": [x, y, 20.0, 20.0],
                "score": rng.random() * 0.5,
            }
        )
    return out


def test_coco_evaluate_equals_pycocotools(made: Path) -> None:
    data = load_detection_data(made)
    truth = data.ground_truth(data.train)
    detections = _detections(truth, np.random.default_rng(0), 0.08, 10)
    result = coco_evaluate(truth, detections)
    stats = _pycocotools(truth, detections)
    for name, value in zip(STAT_NAMES, stats):
        assert (np.isnan(result[name]) and value == -1) or result[name] == pytest.approx(value, abs=1e-12), name
    assert np.isnan(result["APl"])  # no large digit: pycocotools' -1
    assert 0 < result["AP"] < 1
    for category in truth["categories"]:
        alone = _pycocotools(truth, detections, [category["id"]])[0]
        assert result["per_class"][category["name"]] == pytest.approx(alone, abs=1e-12)
    assert result["num_images"] == 8 and result["num_detections"] == len(detections)


def test_coco_evaluate_perfect_shifted_and_empty(made: Path) -> None:
    data = load_detection_data(made)
    truth = data.ground_truth(data.train)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in truth["annotations"]
    ]
    assert coco_evaluate(truth, perfect)["AP"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in coco_evaluate(truth, perfect)["per_class"].values())
    shifted = [{**d, "bbox": [d["bbox"][0] + 0.3 * d["bbox"][2], *d["bbox"][1:]]} for d in perfect]
    result = coco_evaluate(truth, shifted)
    assert result["AP50"] == pytest.approx(1.0) and result["AP"] < 0.8
    empty = coco_evaluate(truth, [])
    assert empty["AP"] == 0.0 and empty["AR100"] == 0.0 and set(empty["per_class"].values()) == {0.0}
    no_twos = {**truth, "annotations": [a for a in truth["annotations"] if a["category_id"] != 3]}
    assert coco_evaluate(no_twos, perfect)["per_class"]["two"] is None
    with pytest.raises(ValueError, match="image_id 12345"):
        coco_evaluate(truth, [{**perfect[0], "image_id": 12345}])
