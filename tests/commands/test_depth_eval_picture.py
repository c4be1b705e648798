"""`pvtkit eval --worst PNG` / `evaluate_depth(..., worst=PNG)`: a picture of the images with the highest AbsRel,
one row each (photo, ground truth, prediction, absolute error) under a caption, in the order of the per-image CSV's
AbsRel, worst first."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import pvtkit
from pvtkit import tasks
from pvtkit.cli import main
from pvtkit.evaluation import (
    WORST_CAPTION,
    WORST_HEADER,
    WORST_PAD,
    WORST_PANEL_HEIGHT,
    evaluate_depth,
    worst_caption,
)

from helpers import stereo_depth_dataset

ENCODER = dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4])


@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> Path:
    return stereo_depth_dataset(tmp_path_factory.mktemp("stereo-worst"), train=1, val=8, size=96)


@pytest.fixture(scope="module")
def tiny_glpn(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glpn-worst") / "tiny-glpn"
    torch.manual_seed(5)
    pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**ENCODER, decoder_hidden_size=16)).save_pretrained(path)
    pvtkit.GLPNImageProcessor().save_pretrained(path)
    return path


def worst_order(csv_path: Path) -> list[str]:
    rows = list(csv.DictReader(csv_path.open()))
    return [r["path"] for r in sorted(rows, key=lambda r: -float(r["abs_rel"]))]


def check_picture(png: Path, expected_paths: list[str]) -> PIL.Image.Image:
    picture = PIL.Image.open(png)
    picture.load()
    rows = len(expected_paths)
    block = WORST_CAPTION + WORST_PANEL_HEIGHT + WORST_PAD
    assert picture.size == (WORST_PAD + 4 * (WORST_PANEL_HEIGHT + WORST_PAD), WORST_HEADER + rows * block)
    captions = [picture.text[f"row {k + 1}"] for k in range(rows)]
    assert f"row {rows + 1}" not in picture.text
    assert [c.split("  AbsRel ")[0] for c in captions] == expected_paths
    # Each row shows its own photo, and its ground truth is black exactly where the map has no measurement.
    canvas = np.asarray(picture.convert("RGB")).astype(int)
    size = (WORST_PANEL_HEIGHT, WORST_PANEL_HEIGHT)
    for k, path in enumerate(expected_paths):
        top = WORST_HEADER + k * block + WORST_CAPTION
        photo = np.asarray(pvtkit.load_image(path).resize(size, PIL.Image.Resampling.BILINEAR)).astype(int)
        shown = canvas[top : top + size[1], WORST_PAD : WORST_PAD + size[0]]
        assert np.abs(shown - photo).max() == 0
        depth = np.asarray(PIL.Image.open(Path(path).parent.parent / "depths" / f"{Path(path).stem}.png"))
        invalid = np.asarray(PIL.Image.fromarray((depth == 0).astype(np.uint8)).resize(size, PIL.Image.NEAREST))
        left = WORST_PAD + (WORST_PANEL_HEIGHT + WORST_PAD)
        truth = canvas[top : top + size[1], left : left + size[0]]
        assert invalid.any() and (truth[invalid > 0] == 0).all() and (truth[invalid == 0].sum(-1) > 0).all()
    return picture


def test_eval_worst_draws_the_worst_rows_in_the_csvs_order(stereo, tiny_glpn, tmp_path, capsys, monkeypatch):
    depth_task = tasks.get("depth")
    if "worst" not in depth_task.eval_options:  # the depth task's own line (tasks/depth.py) names it
        monkeypatch.setattr(type(depth_task), "eval_options", (*depth_task.eval_options, "worst"))
    csv_path, png = tmp_path / "per_image.csv", tmp_path / "worst.png"
    args = ["eval", "--model", str(tiny_glpn), "--data", str(stereo), "--max-depth", "10", "--quiet"]
    args += ["--per-image", str(csv_path), "--worst", str(png), "--device", "cpu", "--num-workers", "0"]
    assert main(args) == 0
    capsys.readouterr()
    order = worst_order(csv_path)
    assert len(order) == 8
    check_picture(png, order[:6])  # the default: 6 rows
    # Classification models refuse the option.
    assert main(["eval", "--model", str(tiny_glpn), "--data", str(stereo), "--task", "classification",
                 "--worst", str(png)]) == 2  # fmt: skip
    assert "--worst: only for depth-estimation models" in capsys.readouterr().err


def test_evaluate_depth_worst_keeps_only_the_worst_with_crop_and_median_scaling(stereo, tiny_glpn, tmp_path):
    csv_path, png = tmp_path / "per_image.csv", tmp_path / "worst.png"
    options = dict(max_depth=10, device="cpu", progress=False, crop="garg", median_scaling=True)
    result = evaluate_depth(str(tiny_glpn), stereo, per_image=csv_path, worst=png, worst_count=3, **options)
    order = worst_order(csv_path)
    assert [e["path"] for e in result.worst] == order[:3]
    # The kept maps are the ones the metrics saw: the row's AbsRel recomputed from them.
    for entry in result.worst:
        counted = entry["counted"]
        p, t = entry["prediction"][counted].astype(np.float64), entry["target"][counted].astype(np.float64)
        assert np.mean(np.abs(p - t) / t) == pytest.approx(entry["abs_rel"], rel=1e-5)
        assert counted.sum() < (entry["target"] > 0).sum()  # the crop
    picture = check_picture(png, order[:3])
    assert picture.text["row 1"] == worst_caption(result.worst[0])
    with pytest.raises(ValueError, match="worst_count"):
        evaluate_depth(str(tiny_glpn), stereo, worst=png, worst_count=0, **options)
