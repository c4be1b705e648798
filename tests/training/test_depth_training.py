"""Depth as a task like the others: depth maps read with their validity, the standard metrics against a direct
NumPy computation, GLPN fine-tuned by `pvtkit train --task depth` on real photos with depth from a real stereo pair
(scikit-image's motorcycle: disparity -> depth), evaluated by `pvtkit eval`, served by the pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import pvtkit
from pvtkit.cli import main
from pvtkit.data.depth import load_depth_data, read_depth
from pvtkit.data.folders import DatasetError, LayoutError
from pvtkit.evaluation import depth_metrics

from helpers import stereo_depth_dataset

ENCODER = dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4])


def reference_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """The Eigen et al. metrics written out in NumPy, over t > 0."""
    p, t = p[t > 0].astype(np.float64), t[t > 0].astype(np.float64)
    ratio = np.maximum(p / t, t / p)
    d = np.log(p) - np.log(t)
    return {
        "abs_rel": np.mean(np.abs(p - t) / t),
        "sq_rel": np.mean((p - t) ** 2 / t),
        "rmse": math.sqrt(np.mean((p - t) ** 2)),
        "rmse_log": math.sqrt(np.mean(d**2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(t))),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
        "silog": 100 * math.sqrt(np.mean(d**2) - np.mean(d) ** 2),
    }


def test_depth_metrics_equal_a_direct_computation_on_valid_pixels_only():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 9.0, (40, 50)).astype(np.float32)
    target[rng.random((40, 50)) < 0.3] = 0  # no measurement
    predicted = (target * rng.uniform(0.7, 1.4, (40, 50))).astype(np.float32) + 0.05
    ours = depth_metrics(torch.from_numpy(predicted), torch.from_numpy(target), min_depth=1e-3, max_depth=None)
    theirs = reference_metrics(predicted, target)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-9), name
    # clipping: predictions beyond max_depth count as max_depth
    clipped = depth_metrics(torch.from_numpy(predicted * 10), torch.from_numpy(target), max_depth=10.0)
    assert clipped["rmse"] == pytest.approx(reference_metrics(np.minimum(predicted * 10, 10), target)["rmse"])
    assert depth_metrics(torch.ones(3, 3), torch.zeros(3, 3)) is None


def test_depth_maps_are_read_in_metres_with_their_invalid_pixels(tmp_path):
    millimetres = np.array([[0, 1000, 2500], [65535, 500, 10000]], dtype=np.uint16)
    PIL.Image.fromarray(millimetres).save(tmp_path / "nyu.png")
    assert np.asarray(PIL.Image.open(tmp_path / "nyu.png")).dtype == np.uint16
    depth = read_depth(tmp_path / "nyu.png", depth_scale=1000, max_depth=10)
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, [[0, 1, 2.5], [0, 0.5, 10]])  # 0 and 65.5 m (> max) are no measurement
    kitti = read_depth(tmp_path / "nyu.png", depth_scale=256, max_depth=None)
    np.testing.assert_allclose(kitti[0], [0, 1000 / 256, 2500 / 256])
    np.save(tmp_path / "metres.npy", np.array([[1.5, np.nan], [-1, 3]], dtype=np.float32))
    np.testing.assert_allclose(read_depth(tmp_path / "metres.npy"), [[1.5, 0], [0, 3]])
    PIL.Image.fromarray(np.array([[2.25, 0]], dtype=np.float32), mode="F").save(tmp_path / "metres.tiff")
    np.testing.assert_allclose(read_depth(tmp_path / "metres.tiff"), [[2.25, 0]])
    PIL.Image.new("RGB", (2, 2)).save(tmp_path / "colour.png")
    PIL.Image.new("L", (2, 2)).save(tmp_path / "eight_bits.png")
    for name, mode in (("colour.png", "RGB"), ("eight_bits.png", "L")):
        with pytest.raises(ValueError, match=rf"{name}: PIL mode {mode}; expected a one-band 16-bit PNG"):
            read_depth(tmp_path / name)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory) -> Path:
    return stereo_depth_dataset(tmp_path_factory.mktemp("stereo"))


def test_the_layout_is_found_paired_and_bad_data_named(stereo, tmp_path):
    data = load_depth_data(stereo, depth_scale=1000, max_depth=10)
    assert (len(data.train), len(data.val), data.val_source) == (8, 4, "folder")
    assert all(Path(i).stem == Path(d).stem for i, d in data.train)
    with pytest.raises(LayoutError, match="no depth dataset layout"):
        load_depth_data(tmp_path)
    broken = tmp_path / "broken"
    for folder in ("images", "depths"):
        (broken / folder).mkdir(parents=True)
    PIL.Image.new("RGB", (40, 30)).save(broken / "images" / "a.jpg")
    PIL.Image.new("RGB", (40, 30)).save(broken / "images" / "b.jpg")
    PIL.Image.fromarray(np.full((30, 40), 1000, np.uint16)).save(broken / "depths" / "a.png")
    with pytest.raises(DatasetError, match=r"b.jpg \(no depth map\)"):
        load_depth_data(broken)
    PIL.Image.fromarray(np.full((20, 40), 1000, np.uint16)).save(broken / "depths" / "b.png")
    with pytest.raises(DatasetError, match=r"b.png: 40x20, image 40x30"):
        load_depth_data(broken)
    PIL.Image.fromarray(np.zeros((30, 40), np.uint16)).save(broken / "depths" / "b.png")
    with pytest.raises(DatasetError, match=r"(?s)hold no valid depth .*depths/b.png"):
        load_depth_data(broken)


@pytest.mark.slow
def test_glpn_fine_tunes_on_stereo_depth_and_eval_reproduces_the_validation(stereo, tmp_path, capsys):
    """`pvtkit train --task depth` learns (the loss falls), keeps the best epoch by delta1, writes a model that loads
    as a depth model; `pvtkit eval` on it gives the validation numbers the trainer recorded for that epoch."""
    torch.manual_seed(0)
    start = tmp_path / "start"
    pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**ENCODER, decoder_hidden_size=16)).save_pretrained(start)
    pvtkit.GLPNImageProcessor().save_pretrained(start)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--task",
            "depth",
            "--data",
            str(stereo),
            "--model",
            str(start),
            "--output",
            str(out),
            "--epochs",
            "4",
            "--batch-size",
            "4",
            "--image-size",
            "64",
            "--lr",
            "2e-3",
            "--max-depth",
            "10",
            "--num-workers",
            "0",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(math.isfinite(h["val_abs_rel"]) and 0 <= h["val_delta1"] <= 1 for h in history)
    best = max(history, key=lambda h: h["val_delta1"])
    model = pvtkit.AutoModelForDepthEstimation.from_pretrained(out)
    assert isinstance(model, pvtkit.GLPNForDepthEstimation)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--data",
                str(stereo),
                "--max-depth",
                "10",
                "--format",
                "json",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 4
    for name in ("abs_rel", "rmse", "delta1", "log10"):
        assert report[name] == pytest.approx(best[f"val_{name}"], rel=1e-4, abs=1e-6), name
    depth = pvtkit.pipeline("depth", model=str(out))(str(stereo / "val" / "images" / "000.jpg"))
    assert depth["predicted_depth"].shape == (96, 96) and depth["depth"].size == (96, 96)


def test_depth_settings_belong_to_the_depth_task(stereo, tmp_path, capsys):
    assert (
        main(["train", "--data", str(stereo), "--arch", "b0", "--output", str(tmp_path / "x"), "--depth-scale", "256"])
        == 2
    )
    assert "depth-scale: only for task depth-estimation" in capsys.readouterr().err
