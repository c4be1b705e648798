"""`pvtkit eval --compare A B` (two segmentation models side by side) and the guard rails where a number silently
misleads: evaluating a model on the folder it was trained on (its run's `training_args.json` says which), and
training a classifier on a segmentation dataset's `images/` and `masks/` folders.

The data are canvases of scikit-learn's handwritten digits (`helpers.write_dataset`); the models tiny SegFormers,
one of them trained for one epoch by `pvtkit train` itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pvtkit
from pvtkit.cli import main as cli
from pvtkit.data.classification import load_training_folders
from pvtkit.data.folders import DatasetError
from pvtkit.evaluation import seen_in_training_warning

from helpers import CLASSES, digit_canvases, save_tiny_segformer, write_dataset, write_pairs

QUIET = ["-q", "--num-workers", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Split-folder data; flat data (images/ + masks/, no validation split); model A (random), model B (A with
    the background's score raised: another model, measurably better on these mostly-background canvases); a run
    that fine-tuned A on the flat data for one epoch, holding out a quarter."""
    root = tmp_path_factory.mktemp("compare")
    data = write_dataset(root / "data", 8, 4)
    flat = root / "flat"
    write_pairs(flat / "images", flat / "masks", digit_canvases(8, 32, seed=3))
    (flat / "labels.json").write_text(json.dumps(CLASSES))
    model_a = save_tiny_segformer(root / "a")
    model_b = root / "b"
    model = pvtkit.AutoModelForSemanticSegmentation.from_pretrained(model_a)
    with torch.no_grad():
        model.decode_head.classifier.bias[0] += 0.5
    model.save_pretrained(model_b)
    pvtkit.SegformerImageProcessor.from_pretrained(model_a).save_pretrained(model_b)
    run = root / "run"
    train = ["train", "--task", "segmentation", "--data", str(flat), "--model", str(model_a), "--epochs", "1"]
    assert (
        cli([*train, "--batch-size", "4", "--image-size", "32", "--val-fraction", "0.25", "-o", str(run), *QUIET]) == 0
    )
    return {"data": data, "flat": flat, "a": model_a, "b": model_b, "run": run}


def eval_json(capsys, *args: str) -> tuple[dict, str]:
    assert cli(["eval", *args, "--format", "json", *QUIET]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_compare_shows_both_models_per_class_side_by_side(setup, capsys, tmp_path):
    data, a, b = str(setup["data"]), str(setup["a"]), str(setup["b"])
    report_a, _ = eval_json(capsys, "-m", a, "-d", data)
    report_b, _ = eval_json(capsys, "-m", b, "-d", data)
    out = tmp_path / "compare.json"
    assert cli(["eval", "--compare", a, b, "-d", data, "--format", "json", "-o", str(out), *QUIET]) == 0
    comparison = json.loads(out.read_text())
    assert comparison["models"] == [a, b] and comparison["data"] == data and comparison["num_images"] == [4, 4]
    timing = ("seconds", "images_per_second")
    for found, alone in zip(comparison["reports"], (report_a, report_b)):
        assert {k: v for k, v in found.items() if k not in timing} == {
            k: v for k, v in alone.items() if k not in timing
        }
    assert list(comparison["per_class"]) == CLASSES
    for name, row in comparison["per_class"].items():
        iou_a, iou_b = report_a["per_class"][name]["iou"], report_b["per_class"][name]["iou"]
        assert (row["a"], row["b"], row["pixels"]) == (iou_a, iou_b, report_a["per_class"][name]["pixels"])
        assert row["delta"] is None if None in (iou_a, iou_b) else row["delta"] == pytest.approx(iou_b - iou_a)
    for key in ("mean_iou", "mean_dice", "mean_boundary_iou", "mean_accuracy", "overall_accuracy"):
        mean = comparison["means"][key]
        assert (mean["a"], mean["b"]) == (report_a[key], report_b[key])
        assert mean["delta"] == pytest.approx(report_b[key] - report_a[key])
    assert comparison["means"]["overall_accuracy"]["delta"] > 0.05  # B predicts more background: it is better

    assert cli(["eval", "--compare", a, b, "-d", data, *QUIET]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"model A   {a}\nmodel B   {b}\ndata      {data} (4 images)\n")
    means = {line[:15].strip(): line[15:].split() for line in table.splitlines() if line.startswith("mIoU ")}
    assert means["mIoU"] == [
        f"{report_a['mean_iou']:.2%}",
        f"{report_b['mean_iou']:.2%}",
        f"{100 * (report_b['mean_iou'] - report_a['mean_iou']):+.2f}",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in table.split("\nclass ", 1)[1].splitlines()[1:12]}
    background = comparison["per_class"]["background"]
    assert rows["background"] == [
        f"{background['a']:.2%}",
        f"{background['b']:.2%}",
        f"{100 * background['delta']:+.2f}",
        str(background["pixels"]),
    ]


def test_compare_usage_errors(setup, capsys, tmp_path):
    data, a, b = str(setup["data"]), str(setup["a"]), str(setup["b"])
    assert cli(["eval", "-m", a, "--compare", a, b, "-d", data, *QUIET]) == 2
    assert "give one model with --model, or two with --compare" in capsys.readouterr().err
    assert cli(["eval", "-d", data, *QUIET]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert cli(["eval", "--compare", a, b, "-d", data, "--confusion", str(tmp_path / "c.png"), *QUIET]) == 2
    assert "evaluate each model alone" in capsys.readouterr().err
    classifier = tmp_path / "classifier"
    config = pvtkit.PvtV2Config(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4))
    pvtkit.PvtV2ForImageClassification(config).save_pretrained(classifier)
    assert cli(["eval", "--compare", str(classifier), a, "-d", data, *QUIET]) == 2
    assert "compare two models of one task" in capsys.readouterr().err
    assert cli(["eval", "--compare", str(classifier), str(classifier), "-d", data, *QUIET]) == 2
    assert "--compare compares segmentation models" in capsys.readouterr().err


def test_eval_on_the_training_folder_warns_and_says_how_to_get_the_honest_number(setup, capsys):
    run, flat = str(setup["run"]), setup["flat"]
    args = json.loads((setup["run"] / "training_args.json").read_text())
    assert args["data"] == str(flat.resolve()) and args["val_fraction"] == 0.25
    everything, err = eval_json(capsys, "-m", run, "-d", str(flat))
    assert everything["num_images"] == 8
    assert err.count("warning:") == 1, err
    assert f"{run} was trained on {flat.resolve()}" in err and "75% of them" in err
    assert "--val-fraction 0.25" in err and "a folder of images it never saw" in err
    # the run's own hold-out: the honest number, no warning, and the run's last validation mIoU
    held_out, err = eval_json(capsys, "-m", run, "-d", str(flat), "--val-fraction", "0.25")
    assert "warning" not in err and held_out["num_images"] == 2
    history = [json.loads(line) for line in (setup["run"] / "metrics.jsonl").read_text().splitlines()]
    assert held_out["mean_iou"] == pytest.approx(history[-1]["val_mean_iou"], rel=1e-9)
    assert held_out["mean_boundary_iou"] == pytest.approx(history[-1]["val_mean_boundary_iou"], rel=1e-9)
    # another hold-out overlaps what was trained on
    _, err = eval_json(capsys, "-m", run, "-d", str(flat), "--val-fraction", "0.5")
    assert "is not the one that run kept out of training (0.25)" in err
    # another folder, or a model that is no training run of this folder: nothing to say
    for model, folder in ((run, setup["data"]), (str(setup["a"]), flat)):
        _, err = eval_json(capsys, "-m", model, "-d", str(folder))
        assert "warning" not in err


def test_the_warning_reads_the_run_beside_the_model_or_above_it(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    (run / "training_args.json").write_text(json.dumps({"data": str(data), "val_fraction": 0.0}))
    (run / "model.safetensors").touch()
    for model in (run, run / "best", run / "model.safetensors"):
        message = seen_in_training_warning(model, data, None, None)
        assert message and "held nothing out (val_fraction 0)" in message and "all of them" in message
    assert seen_in_training_warning(run, data, None, "folder") is None  # its validation folder: never trained on
    assert seen_in_training_warning(run, tmp_path / "other", None, None) is None
    assert seen_in_training_warning("nvidia/segformer-b0-finetuned-ade-512-512", data, None, None) is None
    (run / "training_args.json").write_text("{not json")
    assert seen_in_training_warning(run, data, None, None) is None


def test_classification_training_refuses_segmentation_folders(setup, tmp_path, capsys):
    flat = setup["flat"]
    with pytest.raises(DatasetError, match=r"images/, masks/ look like segmentation data.*--task segmentation"):
        load_training_folders(flat)
    ade = tmp_path / "ade"
    for folder in ("images/training", "annotations/training"):
        write_pairs(ade / folder, ade / "unused" / folder, digit_canvases(2, 24))
    with pytest.raises(DatasetError, match="annotations/, images/ look like segmentation data"):
        load_training_folders(ade)
    with pytest.raises(DatasetError, match="look like segmentation data"):
        load_training_folders(setup["data"])  # train/images + train/masks beside val/
    code = cli(["train", "--data", str(flat), "--arch", "pvt_v2_b0", "--epochs", "1", "-o", str(tmp_path / "o"), "-q"])
    assert code != 0
    err = capsys.readouterr().err
    assert "look like segmentation data" in err and "--task segmentation" in err
    # real classes that merely include an "images" folder are still classes
    for name in ("images", "drawings"):
        write_pairs(tmp_path / "cls" / name, tmp_path / "unused" / name, digit_canvases(2, 24))
    assert load_training_folders(tmp_path / "cls").classes == ["drawings", "images"]


def test_classification_eval_says_which_split_it_evaluated(tmp_path):
    from pvtkit.evaluation import evaluate

    config = pvtkit.PvtV2Config(
        depths=(1, 1, 1, 1),
        hidden_sizes=(8, 16, 24, 32),
        num_attention_heads=(1, 2, 3, 4),
        id2label={0: "ones", 1: "twos"},
    )
    model = pvtkit.PvtV2ForImageClassification(config).eval()
    processor = pvtkit.PvtImageProcessor(size={"height": 32, "width": 32})
    for split in ("flat", "split/train", "split/val"):
        for name in ("ones", "twos"):
            write_pairs(tmp_path / split / name, tmp_path / "unused" / split / name, digit_canvases(4, 24))
    found = {}
    for data, fraction in (("flat", None), ("flat", 0.25), ("split", None), ("split/train", None)):
        result = evaluate(
            model, tmp_path / data, processor=processor, val_fraction=fraction, device="cpu", progress=False
        )
        found[data, fraction] = (result.held_out, result.num_images)
    assert found == {
        ("flat", None): (None, 8),
        ("flat", 0.25): ("fraction", 2),
        ("split", None): ("folder", 8),
        ("split/train", None): (None, 8),
    }
