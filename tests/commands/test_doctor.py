"""`pvtkit doctor` and the label checks `pvtkit train` runs: each label mistake people make (0/255 binary masks,
values beyond the classes, ADE20K-style masks without --reduce-labels, colour masks, size mismatches, duplicate and
unpaired files, extreme imbalance, heavy use of the ignore index) made on real digit canvases, caught with its code
and its fix named; a clean set passes. The class table is checked against pixel counts numpy makes of the masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from pvtkit.cli import main as cli
from pvtkit.data.doctor import FIX_BINARY, FIX_COLOURS, FIX_REDUCE, FIX_WEIGHTS, diagnose_segmentation
from pvtkit.data.segmentation import load_segmentation_data

from helpers import CLASSES, write_dataset


def dataset(tmp_path: Path, name: str = "data", train: int = 8, val: int = 4) -> Path:
    """Digit canvases in train/ and val/ with labels.json (11 classes: background and the ten digits); 8 training
    canvases hold two digits each, so every class appears in training."""
    return write_dataset(tmp_path / name, train, val)


def masks(root: Path) -> list[Path]:
    return sorted(root.glob("*/masks/*.png"))


def rewrite_masks(root: Path, change) -> None:
    """Replace every mask by `change(values)` (a uint8 array), saved as a grey PNG."""
    for path in masks(root):
        values = np.asarray(PIL.Image.open(path))
        PIL.Image.fromarray(change(values).astype(np.uint8), mode="L").save(path)


def doctor(root: Path, *extra: str, capsys) -> tuple[int, dict]:
    code = cli(["doctor", "--data", str(root), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def finding(report: dict, code: str) -> dict:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, f"no {code} finding in {[f['code'] for f in report['findings']]}"
    return found[0]


def test_a_clean_set_passes_and_the_class_table_counts_every_pixel(tmp_path, capsys):
    root = dataset(tmp_path)
    code, report = doctor(root, capsys=capsys)
    assert code == 0 and report["ok"] and report["errors"] == 0 and report["warnings"] == 0, report["findings"]
    assert report["layout"] == "split folders" and report["pairs"] == {"train": 8, "val": 4}
    assert report["num_labels"] == 11 and report["labels_from"] == "labels.json"
    # the table against numpy's own count of the mask files
    values = np.concatenate([np.asarray(PIL.Image.open(p)).ravel() for p in masks(root)])
    index, pixels = np.unique(values, return_counts=True)
    rows = {row["index"]: row for row in report["classes"]}
    assert [rows[i]["name"] for i in range(11)] == CLASSES
    assert {int(i): int(n) for i, n in zip(index, pixels)} == {i: r["pixels"] for i, r in rows.items()}
    for i, n in zip(index, pixels):
        assert rows[int(i)]["share"] == pytest.approx(n / values.size)
        assert rows[int(i)]["masks"] == sum(int(i) in np.asarray(PIL.Image.open(p)) for p in masks(root))
    # the readable form says the same
    assert cli(["doctor", "--data", str(root)]) == 0
    text = capsys.readouterr().out
    assert "no errors: ready to train" in text and "background" in text and f"{rows[0]['share']:.2%}" in text


def test_binary_0_255_masks_are_an_error_whose_fix_is_the_remap(tmp_path, capsys):
    root = dataset(tmp_path)
    (root / "labels.json").write_text(json.dumps(["background", "digit"]))
    rewrite_masks(root, lambda v: np.where(v > 0, 255, 0))
    code, report = doctor(root, capsys=capsys)
    assert code == 1 and not report["ok"]
    binary = finding(report, "binary-255")
    assert binary["severity"] == "error" and binary["fix"] == FIX_BINARY and "remap 255 -> 1" in binary["fix"]
    assert binary["count"] == 12 and len(binary["files"]) == 5  # every mask, the first five named
    # a 0/1/255 set where 255 only draws thin borders is a legitimate use of the ignore index
    rewrite_masks(root, lambda v: np.where(v > 0, 1, 0))
    first = masks(root)[0]
    values = np.asarray(PIL.Image.open(first)).copy()
    values[0, :] = 255
    PIL.Image.fromarray(values.astype(np.uint8)).save(first)
    code, report = doctor(root, capsys=capsys)
    assert code == 0 and "binary-255" not in [f["code"] for f in report["findings"]]
    assert finding(report, "ignore-index")["severity"] == "info"


def test_values_beyond_the_classes_are_named_by_file(tmp_path, capsys):
    root = dataset(tmp_path)
    bad = root / "val" / "masks" / "0009.png"
    values = np.asarray(PIL.Image.open(bad)).copy()
    values[:4, :4] = 14  # 11 classes: 0..10
    PIL.Image.fromarray(values).save(bad)
    code, report = doctor(root, capsys=capsys)
    found = finding(report, "out-of-range")
    assert code == 1 and found["severity"] == "error" and found["files"] == [str(bad)]
    assert "14" in found["message"] and "0..10" in found["message"] and "15 class names" in found["fix"]


def test_ade20k_style_masks_need_reduce_labels_and_pass_with_it(tmp_path, capsys):
    # 0 = "other" (unlabelled), 1..10 = the ten digit classes: ten names, no background among them
    root = dataset(tmp_path)
    (root / "labels.json").write_text(json.dumps(CLASSES[1:]))
    code, report = doctor(root, capsys=capsys)
    found = finding(report, "reduce-labels-needed")
    assert code == 1 and found["severity"] == "error" and found["fix"] == FIX_REDUCE
    code, report = doctor(root, "--reduce-labels", capsys=capsys)
    assert code == 0 and report["errors"] == 0 and report["reduce_labels"], report["findings"]
    assert [row["name"] for row in report["classes"]] == CLASSES[1:]
    # the same advice from a model's classes, when the data names none
    (root / "labels.json").unlink()
    model = tmp_path / "model"
    model.mkdir()
    config = {"model_type": "segformer", "id2label": {str(i): name for i, name in enumerate(CLASSES[1:])}}
    (model / "config.json").write_text(json.dumps(config))
    code, report = doctor(root, "--model", str(model), capsys=capsys)
    assert code == 1 and finding(report, "reduce-labels-needed")["fix"] == FIX_REDUCE
    assert report["labels_from"] == "the model's id2label"


def test_reduce_labels_on_masks_with_a_background_class_is_a_warning(tmp_path, capsys):
    root = dataset(tmp_path)
    code, report = doctor(root, "--reduce-labels", capsys=capsys)
    found = finding(report, "reduce-labels-suspect")
    assert code == 0 and found["severity"] == "warning" and "--no-reduce-labels" in found["fix"]
    assert "'background'" in found["message"]


def test_palette_masks_pass_colour_and_grey_level_masks_do_not(tmp_path, capsys):
    root = dataset(tmp_path)
    for path in masks(root):  # palette masks: their indices are the classes
        PIL.Image.open(path).convert("P").save(path)
    code, report = doctor(root, capsys=capsys)
    assert code == 0 and report["mask_modes"] == {"P": 12} and "palette" in finding(report, "mask-modes")["message"]

    colours = np.random.default_rng(0).integers(0, 256, size=(256, 3), dtype=np.uint8)
    colours[0] = 0
    for path in masks(root)[:3]:  # colour-coded masks, as annotation tools export them
        PIL.Image.fromarray(colours[np.asarray(PIL.Image.open(path))]).save(path)
    code, report = doctor(root, capsys=capsys)
    found = finding(report, "colour-masks")
    assert code == 1 and found["severity"] == "error" and found["count"] == 3
    assert found["fix"].startswith(FIX_COLOURS) and "convert palette masks to indices" in found["fix"]

    grey = dataset(tmp_path, "grey")  # colour masks turned grey: the luminance of each colour, not its index
    rewrite_masks(grey, lambda v: np.where(v > 0, 20 + 23 * v, 0))
    code, report = doctor(grey, capsys=capsys)
    found = finding(report, "out-of-range")
    assert code == 1 and found["fix"] == FIX_COLOURS and found["count"] == 12


def test_size_mismatch_unpaired_and_duplicate_files(tmp_path, capsys):
    root = dataset(tmp_path)
    small = root / "train" / "masks" / "0002.png"
    PIL.Image.open(small).resize((20, 32), PIL.Image.Resampling.NEAREST).save(small)
    lone = root / "train" / "images" / "0005.jpg"
    (root / "train" / "masks" / "0005.png").unlink()
    # a training pair copied into validation under another name: the same bytes
    shutil.copy(root / "train" / "images" / "0001.jpg", root / "val" / "images" / "0020.jpg")
    shutil.copy(root / "train" / "masks" / "0001.png", root / "val" / "masks" / "0020.png")
    code, report = doctor(root, capsys=capsys)
    assert code == 1
    mismatch = finding(report, "size-mismatch")
    assert mismatch["severity"] == "error" and mismatch["files"][0].startswith(str(small))
    assert "mask 20x32, image 32x32" in mismatch["files"][0]
    unpaired = finding(report, "unpaired")
    assert unpaired["severity"] == "error" and unpaired["files"] == [str(lone)]
    copies = finding(report, "duplicate-images")
    assert copies["severity"] == "warning" and copies["count"] == 2
    assert "both the training and validation split" in copies["message"]
    assert str(root / "val" / "images" / "0020.jpg") in copies["files"]


def test_extreme_imbalance_suggests_class_weights(tmp_path):
    root = dataset(tmp_path)
    (root / "labels.json").write_text(json.dumps(["background", "dot"]))
    state = {"n": 0}

    def dots(values):  # every third mask gets one labelled pixel: 4 of 12,288
        out = np.zeros_like(values)
        if state["n"] % 3 == 0:
            out[5, 7] = 1
        state["n"] += 1
        return out

    rewrite_masks(root, dots)
    report = diagnose_segmentation(root)
    found = next(f for f in report.findings if f.code == "imbalance")
    assert report.ok and found.severity == "warning" and found.fix == FIX_WEIGHTS
    assert "--class-weights auto" in found.fix
    dot = next(row for row in report.classes if row.name == "dot")
    assert dot.pixels == 4 and dot.share == pytest.approx(4 / (12 * 32 * 32)) and dot.masks == 4


def test_heavy_use_of_the_ignore_index_is_a_warning(tmp_path):
    root = dataset(tmp_path)
    rewrite_masks(root, lambda v: np.where(np.arange(32)[:, None] < 24, 255, v))  # 75% ignored
    empty = masks(root)[0]
    PIL.Image.fromarray(np.full((32, 32), 255, np.uint8)).save(empty)
    report = diagnose_segmentation(root)
    codes = report.codes("warning")
    assert report.ok and "ignore-heavy" in codes and "all-ignored" in codes
    expected = sum(int((np.asarray(PIL.Image.open(p)) == 255).sum()) for p in masks(root))
    assert report.ignored_pixels == expected and report.pixels == 12 * 32 * 32
    assert next(f for f in report.findings if f.code == "all-ignored").files == [str(empty)]


def test_usage_errors_and_names_that_cannot_be_paired(tmp_path, capsys):
    assert cli(["doctor", "--data", str(tmp_path / "missing")]) == 2
    (tmp_path / "pictures").mkdir()
    assert cli(["doctor", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "not a segmentation dataset layout" in err
    root = dataset(tmp_path, train=2, val=1)
    assert cli(["doctor", "--data", str(root), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    shutil.copy(root / "train" / "masks" / "0000.png", root / "train" / "masks" / "0000.bmp")
    code, report = doctor(root, capsys=capsys)
    assert code == 1 and finding(report, "name-clash")["severity"] == "error"


@pytest.mark.parametrize(
    "damage, fix",
    [("binary", "remap 255 -> 1"), ("ade", "--reduce-labels"), ("grey RGB", "save them as one-band greyscale PNGs")],
)
def test_train_refuses_broken_labels_before_any_model_work(tmp_path, capsys, monkeypatch, damage, fix):
    from pvtkit.training.trainer import Trainer

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Trainer, "_model", no_model)
    root = dataset(tmp_path)
    if damage == "binary":
        (root / "labels.json").write_text(json.dumps(["background", "digit"]))
        rewrite_masks(root, lambda v: np.where(v > 0, 255, 0))
    elif damage == "ade":
        (root / "labels.json").write_text(json.dumps(CLASSES[1:]))
    else:  # a grey mask saved as RGB: the right values, in three bands
        path = masks(root)[2]
        PIL.Image.open(path).convert("RGB").save(path)
    argv = ["train", "--task", "semantic-segmentation", "--data", str(root), "--arch", "b0", "-o", str(tmp_path / "o")]
    assert cli([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert fix in err and "pvtkit doctor" in err and "--skip-data-checks" in err and "Traceback" not in err
    # the override: the loader's own checks only (0/255 masks with two names load; the training would learn nothing)
    if damage == "binary":
        data = load_segmentation_data(root, label_checks=False)
        assert data.classes == ["background", "digit"] and len(data.train) == 8
        args = cli_args([*argv, "--skip-data-checks"])
        assert args.check_data is False


def cli_args(argv: list[str]):
    from pvtkit.cli import build_parser

    return build_parser().parse_args(argv)


def test_one_read_gives_the_histogram_training_sees(tmp_path):
    """`pair_stats` keeps a mask as its histogram; reduced, it matches numpy's count of the reduced array."""
    from pvtkit.data.doctor import pair_stats
    from pvtkit.processing import reduce_labels

    root = dataset(tmp_path, train=2, val=1)
    mask = masks(root)[0]
    values = np.asarray(PIL.Image.open(mask)).astype(np.int64)
    values[:3, :3] = 255
    PIL.Image.fromarray(values.astype(np.uint16)).save(mask)  # I;16: the widened path
    stats = pair_stats(root / "train" / "images" / "0000.jpg", mask, hashes=True)
    assert stats.error is None and stats.mode.startswith("I") and stats.image_size == stats.mask_size == (32, 32)
    for reduce in (False, True):
        expected = reduce_labels(values.copy()) if reduce else values
        keys, counts = np.unique(expected, return_counts=True)
        got_keys, got_counts = stats.histogram(reduce)
        assert got_keys.tolist() == keys.tolist() and got_counts.tolist() == counts.tolist()
