"""`pvtkit segment` and `pvtkit depth` end to end (files, records, errors, slide mode, torchrun), and the export of
the segmentation and depth models. Tiny random models; real photos from scikit-image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import torch.nn.functional as F

import pvtkit
from pvtkit.cli import main
from pvtkit.pipelines import slide_windows

from helpers import TORCHRUN_PVTKIT, assert_close

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
LABELS = {0: "sky", 1: "cat", 2: "cup", 3: "road", 4: "tree"}
ENCODER = dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    PIL.Image.fromarray(skimage.data.chelsea()).save(root / "chelsea.jpg", quality=92)
    PIL.Image.fromarray(skimage.data.coffee()).save(root / "nested" / "coffee.png")
    PIL.Image.fromarray(skimage.data.camera()).resize((160, 120)).save(root / "camera.png")  # grayscale
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


GOOD = ["camera.png", "chelsea.jpg", "nested/coffee.png"]


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "model"
    torch.manual_seed(3)
    model = pvtkit.SegformerForSemanticSegmentation(
        pvtkit.SegformerConfig(**ENCODER, decoder_hidden_size=32, num_labels=5, id2label=LABELS)
    )
    model.save_pretrained(path)
    pvtkit.SegformerImageProcessor(size=96).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def glpn_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glpn") / "model"
    torch.manual_seed(4)
    pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**ENCODER, decoder_hidden_size=16)).save_pretrained(path)
    pvtkit.GLPNImageProcessor().save_pretrained(path)
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pvtkit", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


# ---- segment ---------------------------------------------------------------------------------------------------


def test_segment_writes_label_pngs_overlays_and_records(seg_dir, photos, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "segment",
        str(photos),
        "-m",
        str(seg_dir),
        "-o",
        str(out),
        "--format",
        "json",
        "--batch-size",
        "2",
        "--num-workers",
        "2",
    )
    assert result.returncode == 1, result.stderr  # one input is broken; the others are segmented
    assert "broken.jpg" in result.stderr and "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).relative_to(photos).as_posix() for r in records] == sorted(GOOD + ["broken.jpg"])
    assert "cannot decode" in records[0]["error"]
    pipe = pvtkit.pipeline("image-segmentation", model=str(seg_dir))
    for record in records[1:]:
        image = PIL.Image.open(record["path"])
        label = PIL.Image.open(record["label_png"])
        assert label.mode == "P" and label.size == image.size and record["size"] == [image.height, image.width]
        classes = np.asarray(label)
        expected = next(pipe.run([record["path"]], formatted=False)).output.numpy()
        assert (classes == expected).mean() > 0.999  # another batch composition may round a boundary pixel
        areas = {c["label"]: c["pixels"] for c in record["classes"]}
        assert sum(areas.values()) == classes.size
        for c in record["classes"]:
            assert c["pixels"] == int((classes == c["id"]).sum()) and c["label"] == LABELS[c["id"]]
        overlay = PIL.Image.open(record["overlay"])
        assert overlay.format == "JPEG" and overlay.size == image.size
    assert (out / "nested" / "coffee.png").is_file()  # the folder's structure is kept


def test_slide_mode_with_one_window_equals_whole_mode_at_full_size(seg_dir, photos):
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(seg_dir)
    whole = pvtkit.pipeline(
        "image-segmentation", model=model, image_processor=pvtkit.SegformerImageProcessor(do_resize=False)
    )
    slide = pvtkit.pipeline(
        "image-segmentation",
        model=model,
        image_processor=pvtkit.SegformerImageProcessor(),
        mode="slide",
        crop=(512, 512),
        stride=(256, 256),
    )
    path = str(photos / "chelsea.jpg")
    a = next(whole.run([path], formatted=False)).output
    b = next(slide.run([path], formatted=False)).output
    assert a.shape == (300, 451) and torch.equal(a, b)


def test_slide_mode_averages_overlapping_windows(seg_dir, photos):
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(seg_dir)
    processor = pvtkit.SegformerImageProcessor()
    slide = pvtkit.pipeline(
        "image-segmentation",
        model=model,
        image_processor=processor,
        mode="slide",
        crop=(128, 160),
        stride=(96, 100),
        batch_size=3,
    )
    pixels = processor(PIL.Image.open(photos / "chelsea.jpg"), do_resize=False, return_tensors="pt").pixel_values
    H, W = pixels.shape[-2:]
    # Independently: window origins every stride, plus one flush with the far edge; each window's logits
    # upsampled to the window; the mean over the windows covering each pixel.
    tops = sorted({*range(0, H - 128, 96), H - 128})
    lefts = sorted({*range(0, W - 160, 100), W - 160})
    total, count = torch.zeros(1, 5, H, W), torch.zeros(1, 1, H, W)
    with torch.no_grad():
        for t in tops:
            for left in lefts:
                crop = pixels[..., t : t + 128, left : left + 160]
                logits = F.interpolate(model(crop).logits, size=(128, 160), mode="bilinear", align_corners=False)
                total[..., t : t + 128, left : left + 160] += logits
                count[..., t : t + 128, left : left + 160] += 1
        got = slide.slide_logits(pixels)
    assert sorted(slide_windows(H, W, (128, 160), (96, 100))) == sorted(
        (t, t + 128, left, left + 160) for t in tops for left in lefts
    )
    assert count.min() >= 1
    assert_close(got, total / count, what="slide logits")
    small = slide_windows(50, 70, (128, 160), (96, 100))
    assert small == [(0, 50, 0, 70)]  # an image smaller than the crop is one window


def test_segment_slide_cli_matches_the_pipeline(seg_dir, photos, tmp_path):
    out = tmp_path / "slide"
    code = main(
        [
            "segment",
            str(photos / "chelsea.jpg"),
            "-m",
            str(seg_dir),
            "-o",
            str(out),
            "--mode",
            "slide",
            "--crop",
            "128x160",
            "--stride",
            "96x100",
            "--no-overlay",
            "--num-workers",
            "0",
        ]
    )
    assert code == 0
    pipe = pvtkit.pipeline("image-segmentation", model=str(seg_dir), mode="slide", crop=(128, 160), stride=(96, 100))
    expected = next(pipe.run([str(photos / "chelsea.jpg")], formatted=False)).output.numpy()
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "chelsea.png")), expected)
    assert not (out / "chelsea_overlay.jpg").exists()


def test_segment_usage_errors(seg_dir, photos, tmp_path, capsys):
    image = str(photos / "chelsea.jpg")
    assert main(["segment", image, "-m", str(seg_dir), "-o", str(tmp_path / "o"), "--crop", "64"]) == 2
    assert "--crop and --stride belong to --mode slide" in capsys.readouterr().err
    assert (
        main(
            [
                "segment",
                image,
                "-m",
                str(seg_dir),
                "-o",
                str(tmp_path / "o"),
                "--mode",
                "slide",
                "--crop",
                "64",
                "--stride",
                "80",
            ]
        )
        == 2
    )
    assert "larger than --crop" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["segment", image, "-m", str(seg_dir), "-o", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_segment_under_torchrun_shards_and_matches_one_process(seg_dir, photos, tmp_path):
    cmd = [
        *TORCHRUN_PVTKIT,
        "segment",
        str(photos),
        "-m",
        str(seg_dir),
        "-o",
        str(tmp_path / "dist"),
        "--format",
        "json",
        "--records",
        str(tmp_path / "dist.jsonl"),
        "--num-workers",
        "0",
        "--no-overlay",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode != 0  # the broken input: rank 0 exits 1, which torchrun passes on
    distributed = [json.loads(line) for line in (tmp_path / "dist.jsonl").read_text().splitlines()]
    single = run_cli(
        "segment",
        str(photos),
        "-m",
        str(seg_dir),
        "-o",
        str(tmp_path / "one"),
        "--format",
        "json",
        "--num-workers",
        "0",
        "--no-overlay",
    )
    reference = [json.loads(line) for line in single.stdout.splitlines()]
    assert [r["path"] for r in distributed] == [r["path"] for r in reference]
    for ours, expected in zip(distributed, reference):
        assert ("error" in ours) == ("error" in expected)
        if "label_png" in expected:
            a, b = np.asarray(PIL.Image.open(ours["label_png"])), np.asarray(PIL.Image.open(expected["label_png"]))
            assert (a == b).mean() > 0.999


# ---- depth -----------------------------------------------------------------------------------------------------


def test_depth_writes_16_bit_pngs_and_coloured_views(glpn_dir, photos, tmp_path):
    out = tmp_path / "depth"
    result = run_cli(
        "depth",
        str(photos),
        "-m",
        str(glpn_dir),
        "-o",
        str(out),
        "--format",
        "json",
        "--scale",
        "1000",
        "--num-workers",
        "1",
    )
    assert result.returncode == 1 and "broken.jpg" in result.stderr, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4 and "error" in records[0]
    pipe = pvtkit.pipeline("depth-estimation", model=str(glpn_dir))
    for record in records[1:]:
        image = PIL.Image.open(record["path"])
        png = PIL.Image.open(record["depth_png"])
        assert png.mode.startswith("I;16") and png.size == image.size and png.info["depth_scale"] == "1000.0"
        depth = next(pipe.run([record["path"]], formatted=False)).output.numpy()
        stored = np.asarray(png).astype(np.float64)
        np.testing.assert_allclose(stored, np.clip(np.round(depth * 1000), 0, 65535), atol=1)
        assert record["max"] == pytest.approx(float(depth.max()), rel=1e-5)
        colour = PIL.Image.open(record["color_png"])
        assert colour.mode == "RGB" and colour.size == image.size
    assert main(["depth", str(photos / "camera.png"), "-m", str(glpn_dir), "-o", str(out), "--scale", "0"]) == 2


# ---- export ----------------------------------------------------------------------------------------------------


def two_stages(**fields):
    """Two stages (tracing with symbolic sizes costs seconds per stage) still cover SRA, the stage hand-over and
    every head's upsampling."""
    return dict(
        num_encoder_blocks=2,
        depths=[1, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        sr_ratios=[4, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        **fields,
    )


@pytest.mark.slow
def test_segmentation_onnx_is_dynamic_and_carries_labels_and_processor(tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from pvtkit.export import export_onnx, read_onnx_metadata

    model = pvtkit.SegformerForSemanticSegmentation(
        pvtkit.SegformerConfig(**two_stages(decoder_hidden_size=16, num_labels=5, id2label=LABELS))
    ).eval()
    processor = pvtkit.SegformerImageProcessor(size=64, do_reduce_labels=True)
    report = export_onnx(model, tmp_path / "seg.onnx", processor=processor)
    assert report.verified and report.max_rel_diff < 1e-4 and report.output_names == ["logits"]
    assert {tuple(c.shape[2:]) for c in report.checks} >= {(64, 64), (55, 73)}  # odd, non-square sizes
    meta = read_onnx_metadata(tmp_path / "seg.onnx")
    assert meta["id2label"] == {str(k): v for k, v in LABELS.items()}
    assert meta["preprocessor_config"]["do_reduce_labels"] is True and meta["size"] == {"height": 64, "width": 64}


@pytest.mark.slow
def test_depth_model_exports_to_onnx_and_torch(tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from pvtkit.export import export_onnx, export_torch

    torch.manual_seed(0)
    model = pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**two_stages(decoder_hidden_size=8))).eval()
    report = export_onnx(model, tmp_path / "glpn.onnx", image_size=(96, 128))
    assert report.verified and report.output_names == ["predicted_depth"] and report.max_rel_diff < 1e-4
    program = export_torch(model, tmp_path / "glpn.pt2", image_size=(96, 128))
    loaded = torch.export.load(tmp_path / "glpn.pt2").module()
    x = torch.randn(2, 3, 75, 133)
    with torch.no_grad():
        assert_close(loaded(x)["predicted_depth"], model(x).predicted_depth, tol=1e-4)
    assert program.dynamic_ranges["height"][0] >= 4


@pytest.mark.slow
def test_export_cli_picks_the_task_from_the_checkpoint(seg_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    code = main(["export", "torch", "-m", str(seg_dir), "-o", str(tmp_path / "seg.pt2"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "SegformerForSemanticSegmentation" and report["output_names"] == ["logits"]
