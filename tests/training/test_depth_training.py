"""Depth as a task like the others: depth maps read with their validity, the standard metrics against a direct
NumPy computation, GLPN fine-tuned by `pvtkit train --task depth` on real photos with depth from a real stereo pair
(scikit-image's motorcycle: disparity -> depth), evaluated by `pvtkit eval`, served by the pipeline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
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

from helpers import REPO as ROOT
from helpers import TORCHRUN_PVTKIT, kill_training_at_step, read_metrics, stereo_depth_dataset, train_argv

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


@pytest.mark.parametrize("processor_class", ["GLPNImageProcessor", "SegformerImageProcessor"])
def test_cutdepth_replaces_a_full_height_strip_with_the_scaled_depth(stereo, processor_class):
    """GLPN's vertical CutDepth: with p = 1 a full-height strip (left edge a W, width up to 0.75 of the rest) of the
    cropped, flipped image is the depth map scaled to 0-255 by its maximum, normalised as the image is; elsewhere,
    and in the depth map, the output is the plain transform's; with p = 0 it is the plain transform's."""
    from pvtkit.data.depth import DepthTrainTransform
    from pvtkit.data.transforms import Normalize

    data = load_depth_data(stereo, max_depth=10)
    processor = getattr(pvtkit, processor_class)()
    plain, off, cut = (
        DepthTrainTransform(processor, 64, True, 3, **extra) for extra in ({}, {"cutdepth": 0.0}, {"cutdepth": 1.0})
    )
    normalize, strips = Normalize(processor), set()
    for epoch in range(2):
        for index, (image_path, depth_path) in enumerate(data.train):
            image, depth = pvtkit.load_image(image_path), read_depth(depth_path, max_depth=10)
            x0, d0 = plain(image, depth, index, epoch)
            x_off, d_off = off(image, depth, index, epoch)
            x1, d1 = cut(image, depth, index, epoch)
            np.testing.assert_array_equal(x_off, x0)
            np.testing.assert_array_equal(d_off, d0)
            np.testing.assert_array_equal(d1, d0)
            columns = np.flatnonzero((x1 != x0).any(axis=(0, 1)))
            left, right = int(columns.min()), int(columns.max()) + 1
            assert list(columns) == list(range(left, right)) and right - left <= max(int((64 - left) * 0.75), 1)
            expected = normalize(np.repeat((d0 * np.float32(255 / d0.max()))[..., None], 3, axis=-1))
            np.testing.assert_allclose(x1[:, :, left:right], expected[:, :, left:right], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(np.delete(x1, columns, axis=2), np.delete(x0, columns, axis=2))
            strips.add((left, right))
    assert len(strips) > 10  # the strip moves and changes width with the epoch and the image


@pytest.mark.slow
def test_glpn_fine_tunes_on_stereo_depth_and_eval_reproduces_the_validation(stereo, tmp_path, capsys):
    """`pvtkit train --task depth` learns (the loss falls; validation delta1 reaches 0.35: 0.468 measured, the same
    on 1, 2 and 4 threads, from 0.041 after the first epoch), keeps the best epoch by delta1, writes a model that
    loads as a depth model; `pvtkit eval` on it gives the validation numbers the trainer recorded for that epoch.

    The model is tiny (0.2M parameters, random encoder) and the data 8 crops of one scene: predicting the training
    maps' median depth everywhere scores delta1 0.55 on these 4 validation crops, so 0.35 says the run learns, not
    that it has learnt depth."""
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
            "20",
            "--batch-size",
            "2",
            "--image-size",
            "64",
            "--lr",
            "1e-3",
            "--max-depth",
            "10",
            "--num-workers",
            "0",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 20 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(math.isfinite(h["val_abs_rel"]) and 0 <= h["val_delta1"] <= 1 for h in history)
    best = max(history, key=lambda h: h["val_delta1"])
    assert history[0]["val_delta1"] < 0.1 and best["val_delta1"] >= 0.35, [h["val_delta1"] for h in history]
    assert best["val_abs_rel"] < 0.45 < history[0]["val_abs_rel"]  # 0.315 measured, from 1.66
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
    common = ["train", "--data", str(stereo), "--arch", "b0", "--output", str(tmp_path / "x")]
    assert main([*common, "--depth-scale", "256"]) == 2
    assert "depth-scale: only for task depth-estimation" in capsys.readouterr().err
    assert main([*common, "--cutdepth", "1"]) == 2
    assert "cutdepth: only for task depth-estimation" in capsys.readouterr().err
    assert main([*common, "--task", "depth", "--cutdepth", "1.5"]) == 2
    assert "cutdepth must be a probability in [0, 1], got 1.5" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_glpn(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glpn") / "tiny-glpn"
    torch.manual_seed(3)
    pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**ENCODER, decoder_hidden_size=16)).save_pretrained(path)
    pvtkit.GLPNImageProcessor().save_pretrained(path)
    return path


def test_flip_averages_the_prediction_with_the_mirrored_images(stereo, tiny_glpn, tmp_path, capsys):
    """`pipeline(..., flip=True)` and `pvtkit depth --flip`: the mean of the image's depth and the mirrored image's
    depth mirrored back, at the image's size."""
    from pvtkit.processing import depth_maps

    path = stereo / "val" / "images" / "001.jpg"
    image = pvtkit.load_image(path)
    pipe = pvtkit.pipeline("depth", model=str(tiny_glpn), flip=True)
    pixels = pipe.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        plain = pipe.model(pixel_values=pixels).predicted_depth
        mirrored = pipe.model(pixel_values=pixels.flip(-1)).predicted_depth
    manual = depth_maps((plain + mirrored.flip(-1)) / 2, [(image.height, image.width)])[0]["predicted_depth"]
    flipped = pipe(image)["predicted_depth"]
    torch.testing.assert_close(flipped, manual, rtol=1e-5, atol=1e-6)
    unflipped = pvtkit.pipeline("depth", model=str(tiny_glpn))(image)["predicted_depth"]
    assert (unflipped - flipped).abs().max() > 1e-4  # a random model is not mirror-symmetric: flip did something
    args = ["depth", str(path), "-m", str(tiny_glpn), "-o", str(tmp_path / "d"), "--scale", "1000", "--format", "json"]
    assert main([*args, "--flip", "--num-workers", "0"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    written = np.asarray(PIL.Image.open(record["depth_png"])).astype(np.float64) / 1000
    np.testing.assert_allclose(written, manual.numpy(), atol=0.51e-3)


def test_eval_with_a_crop_median_scaling_and_flip_equals_numpy_per_image_and_in_the_means(
    stereo, tiny_glpn, tmp_path, capsys
):
    """`pvtkit eval --crop garg --median-scaling --flip --per-image CSV`: each image's metrics equal a NumPy
    computation on the model's own (flip-averaged) predictions over the valid pixels inside the Garg crop, after
    median scaling; the JSON means are the CSV rows' means."""
    import csv

    import torch.nn.functional as F

    from pvtkit.evaluation import DEPTH_METRICS

    csv_path = tmp_path / "per_image.csv"
    common = ["eval", "--model", str(tiny_glpn), "--data", str(stereo), "--max-depth", "10", "--quiet"]
    extra = ["--crop", "garg", "--median-scaling", "--flip", "--per-image", str(csv_path), "--format", "json"]
    assert main([*common, *extra, "--device", "cpu", "--num-workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(csv_path.open()))
    assert report["num_images"] == len(rows) == 4
    assert (report["crop"], report["median_scaling"], report["flip"]) == ("garg", True, True)
    assert list(rows[0]) == ["path", *DEPTH_METRICS, "valid_pixels"]

    model = pvtkit.AutoModelForDepthEstimation.from_pretrained(tiny_glpn).eval()
    processor = pvtkit.GLPNImageProcessor.from_pretrained(tiny_glpn)
    for row, image_path in zip(rows, sorted((stereo / "val" / "images").iterdir())):
        assert row["path"] == str(image_path)
        pixels = processor(pvtkit.load_image(image_path), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            mirrored = model(pixel_values=pixels.flip(-1)).predicted_depth.flip(-1)
            both = model(pixel_values=pixels).predicted_depth + mirrored
        target = read_depth(stereo / "val" / "depths" / f"{image_path.stem}.png", depth_scale=1000, max_depth=10)
        h, w = target.shape
        predicted = F.interpolate((both / 2)[:, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        inside = np.zeros((h, w), bool)
        inside[int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)] = True
        valid = (target > 0) & inside
        p, t = predicted[valid].astype(np.float64), target[valid].astype(np.float64)
        p = np.clip(p * np.median(t) / np.median(p), 1e-3, 10.0)
        expected = reference_metrics(p, t)
        assert int(row["valid_pixels"]) == valid.sum() < (target > 0).sum()
        for name in DEPTH_METRICS:
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    for name in DEPTH_METRICS:
        assert report[name] == pytest.approx(np.mean([float(r[name]) for r in rows]), rel=1e-9, abs=1e-12), name

    # Without median scaling the numbers differ; the crop is the Eigen one by name; other tasks refuse the options.
    assert main([*common, "--crop", "eigen", "--format", "json", "--device", "cpu", "--num-workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["abs_rel"] != pytest.approx(report["abs_rel"])
    assert main([*common, "--crop", "eigen", "--median-scaling", "--device", "cpu", "--num-workers", "0"]) == 0
    assert "measured  crop eigen, median scaling\n" in capsys.readouterr().out
    assert main([*common, "--task", "classification", "--median-scaling", "--crop", "garg"]) == 2
    assert "--crop and --median-scaling: only for depth-estimation models" in capsys.readouterr().err


# ---- resuming and torchrun --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stereo_small(tmp_path_factory) -> Path:
    return stereo_depth_dataset(tmp_path_factory.mktemp("stereo-small"), train=16, val=4, size=64)


@pytest.fixture(scope="module")
def tiny_glpn_no_drop(tmp_path_factory) -> Path:
    """Without stochastic depth: N processes draw their own masks, so only such a model trains exactly alike on 1
    and N processes."""
    path = tmp_path_factory.mktemp("glpn-nd") / "tiny-glpn-nd"
    torch.manual_seed(4)
    config = pvtkit.GLPNConfig(**ENCODER, decoder_hidden_size=16, drop_path_rate=0.0)
    pvtkit.GLPNForDepthEstimation(config).save_pretrained(path)
    pvtkit.GLPNImageProcessor().save_pretrained(path)
    return path


def depth_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    options = ("--batch-size", "4", "--lr", "2e-3", "--max-depth", "10", "--quiet", *extra)
    return train_argv("depth", data, model, out, *options, image_size=64)


def max_weight_difference(a: Path, b: Path, skip: set[str] = frozenset()) -> float:
    from safetensors.torch import load_file

    sa, sb = load_file(a), load_file(b)
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if k not in skip)


VAL_KEYS = ("val_loss", "val_abs_rel", "val_rmse", "val_delta1", "val_silog")


@pytest.mark.slow
def test_a_sigkilled_depth_run_resumes_to_the_same_result(stereo_small, tiny_glpn, tmp_path, one_thread):
    reference = tmp_path / "reference"
    assert main(depth_args(stereo_small, tiny_glpn, reference, "--epochs", "3")) == 0
    history = read_metrics(reference)
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "pvtkit",
        *depth_args(stereo_small, tiny_glpn, killed, "--epochs", "3", "--save-steps", "1"),
    ]
    kill_training_at_step(command, killed, 5, ROOT)
    state = json.loads((killed / "checkpoint" / "trainer_state.json").read_text())
    assert 5 <= state["global_step"] < state["total_steps"] == 12

    assert main(["train", "--output", str(killed), "--resume", "--num-workers", "0", "-q"]) == 0
    resumed = read_metrics(killed)
    assert [h["lr"] for h in resumed] == pytest.approx([h["lr"] for h in history], rel=1e-12)
    for key in ("train_loss", "train_delta1", *VAL_KEYS):
        assert [h[key] for h in resumed] == pytest.approx([h[key] for h in history], rel=1e-5, abs=1e-6), key
    assert max_weight_difference(killed / "model.safetensors", reference / "model.safetensors") <= 1e-5


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_depth_model_as_one(
    stereo_small, tiny_glpn_no_drop, tmp_path, one_thread
):
    """The loss is a mean over the global batch's images with a valid depth, whichever process holds them: two
    processes train the model one does."""
    one, two, model = tmp_path / "one", tmp_path / "two", tiny_glpn_no_drop
    assert main(depth_args(stereo_small, model, one, "--epochs", "2")) == 0
    command = [
        *TORCHRUN_PVTKIT,
        *depth_args(stereo_small, model, two, "--epochs", "2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained GLPNForDepthEstimation") == 1 and "2 process(es)" in done.stdout
    h1, h2 = read_metrics(one), read_metrics(two)
    for key in ("train_loss", "train_delta1", "lr", *VAL_KEYS):
        assert [h[key] for h in h2] == pytest.approx([h[key] for h in h1], rel=1e-4, abs=1e-5), key
    assert max_weight_difference(one / "model.safetensors", two / "model.safetensors") < 1e-3


def test_the_depth_training_loss_and_metric_are_means_over_images():
    """What the trainer divides by is images: the summed per-image SILog over the images with a valid pixel (an
    unreadable one, weight 0, and one without ground truth leave it), and each image's delta1 share."""
    from types import SimpleNamespace

    from pvtkit import tasks
    from pvtkit.losses import silog_loss

    torch.manual_seed(0)
    predicted = torch.rand(4, 6, 5) * 5 + 0.5
    labels = torch.rand(4, 6, 5) * 5 + 0.5
    labels[0, :3] = 0  # part of image 0 has no measurement
    labels[2] = 0  # image 2 has none
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0])  # image 3 could not be read
    loss, hits, count = tasks.get("depth").train_loss(SimpleNamespace(predicted_depth=predicted), labels, weights, {})
    assert count.item() == 2
    expected = [silog_loss(predicted[i][None], labels[i][None]) for i in (0, 1)]
    assert loss.item() == pytest.approx(sum(e.item() for e in expected), rel=1e-6)
    shares = []
    for i in (0, 1):
        valid = labels[i] > 0
        ratio = torch.maximum(predicted[i] / labels[i], labels[i] / predicted[i])[valid]
        shares.append((ratio < 1.25).double().mean().item())
    assert hits.item() == pytest.approx(sum(shares), rel=1e-6)
