"""Object detection as a task: `pipeline("object-detection")` against transformers' pipeline on the same weights,
`pvtkit detect` (records, pictures, folders, per-input errors), `pvtkit eval`'s COCO mAP against pycocotools run
directly on the detections it saved, `pvtkit export onnx` checked in ONNX Runtime, and the errors a detection
checkpoint gets where it does not belong."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import transformers

import pvtkit
from pvtkit import DeformableDetrImageProcessor
from pvtkit.cli import main as cli
from pvtkit.processing import pad_batch
from pvtkit.visualize import draw_boxes

from helpers import REPO, TORCHRUN_PVTKIT, detection_dataset, tiny_detector


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("detect") / "tiny-detr"
    tiny_detector().save_pretrained(path)
    DeformableDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos() -> dict[str, PIL.Image.Image]:
    return {
        "astronaut": PIL.Image.fromarray(skimage.data.astronaut()[::2, ::2]),
        "coffee": PIL.Image.fromarray(skimage.data.coffee()),
        "camera": PIL.Image.fromarray(skimage.data.camera()[::3, ::2]),  # grayscale, another aspect
    }


def test_pipeline_records_equal_transformers_pipeline(detector_dir, photos):
    """Image by image, pvtkit's pipeline gives transformers' object-detection records (score, label, box) on the same
    checkpoint; a batch of images of different sizes is padded together and equals the model run on the
    processor's own padded batch."""
    ours = pvtkit.pipeline("object-detection", model=str(detector_dir), threshold=0.3)
    theirs = transformers.pipeline(
        "object-detection",
        model=transformers.DeformableDetrForObjectDetection.from_pretrained(detector_dir),
        image_processor=transformers.AutoImageProcessor.from_pretrained(detector_dir, backend="pil"),
    )
    images = list(photos.values())
    total = 0
    for image in images:
        got, want = ours(image), theirs(image, threshold=0.3)
        assert [r["label"] for r in got] == [r["label"] for r in want]
        for a, b in zip(got, want):  # integer pixels: a coordinate within rounding of an integer may truncate apart
            assert all(abs(a["box"][k] - b["box"][k]) <= 1 for k in b["box"]), (a, b)
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-5, atol=1e-6)
        assert all(r["score"] >= 0.3 for r in got) and set(got[0]) == {"score", "label", "box"}
        total += len(got)
    assert total > 0, "the test's detector must find something to compare"

    batched = ours(images, batch_size=3)
    processor = ours.image_processor
    feed = processor(images, return_tensors="pt")  # pads to the largest, as the pipeline does
    with torch.inference_mode():
        output = ours.model(pixel_values=feed["pixel_values"], pixel_mask=feed["pixel_mask"])
    sizes = [(i.height, i.width) for i in images]
    direct = processor.post_process_object_detection(output, threshold=0.3, target_sizes=sizes)
    for got, want in zip(batched, direct):
        assert [r["score"] for r in got] == pytest.approx(want["scores"].tolist(), rel=1e-5, abs=1e-6)
        assert [r["box"]["xmin"] for r in got] == pytest.approx(want["boxes"][:, 0].tolist(), abs=1.0)


def test_pipeline_options_are_checked(detector_dir):
    with pytest.raises(ValueError, match="threshold must be a score in"):
        pvtkit.pipeline("object-detection", model=str(detector_dir), threshold=1.5)
    with pytest.raises(ValueError, match="top_k must be a positive"):
        pvtkit.pipeline("detection", model=str(detector_dir), top_k=0)


def test_a_detection_checkpoint_is_no_classifier(detector_dir, tmp_path):
    with pytest.raises(ValueError, match="is not a image classification model"):
        pvtkit.pipeline("image-classification", model=pvtkit.AutoModelForObjectDetection.from_pretrained(detector_dir))
    with pytest.raises(ValueError, match="AutoModelForImageClassification has no 'deformable_detr' model"):
        pvtkit.AutoModelForImageClassification.from_pretrained(detector_dir)
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code, _, stderr = run_cli("classify", str(tmp_path / "a.png"), "--model", str(detector_dir))
    assert code == 2 and "has no 'deformable_detr' model" in stderr


def test_pad_batch_puts_images_top_left_and_masks_the_rest():
    a, b = torch.ones(3, 2, 5), torch.full((3, 4, 3), 2.0)
    pixels, mask = pad_batch([a, b])
    assert pixels.shape == (2, 3, 4, 5) and mask.shape == (2, 4, 5) and mask.dtype == torch.int64
    assert pixels[0, :, :2, :5].eq(1).all() and pixels[0, :, 2:].eq(0).all()
    assert pixels[1, :, :, :3].eq(2).all() and pixels[1, :, :, 3:].eq(0).all()
    assert mask[0].sum() == 10 and mask[1].sum() == 12 and mask[1, :, 3:].eq(0).all()
    with pytest.raises(ValueError, match=r"image 0 has shape \(2, 5\)"):
        pad_batch([torch.ones(2, 5)])


def test_draw_boxes_outlines_each_box_in_its_class_colour():
    image = PIL.Image.new("RGB", (120, 40), "white")
    drawn = np.asarray(draw_boxes(image, [[10, 15, 30, 35]], ["cat"], [0.9], class_ids=[0]))
    colour = drawn[35, 20]  # the bottom edge
    assert tuple(colour) != (255, 255, 255) and (drawn[25, 20] == 255).all()  # inside stays
    assert (drawn[:, 90:] == 255).all()  # far from the box and its caption, nothing is drawn


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_detect_writes_records_and_pictures_and_reports_bad_inputs(detector_dir, photos, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    photos["astronaut"].save(folder / "astronaut.jpg")
    photos["camera"].save(folder / "sub" / "camera.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "detect", str(folder), "-m", str(detector_dir), "-o", str(out), "--threshold", "0.3", "--format", "json",
        "--batch-size", "1",
    )  # fmt: skip
    assert code == 1, stderr  # one input failed, the others are done
    records = {Path(r["path"]).name: r for r in map(json.loads, stdout.splitlines())}
    assert set(records) == {"astronaut.jpg", "broken.png", "camera.png"}
    assert "broken.png" in records["broken.png"]["error"] or "cannot identify" in records["broken.png"]["error"]
    pipe = pvtkit.pipeline("object-detection", model=str(detector_dir), threshold=0.3)
    for name, image in (("astronaut.jpg", folder / "astronaut.jpg"), ("camera.png", folder / "sub" / "camera.png")):
        record = records[name]
        assert record["detections"] == pipe(str(image))
        picture = PIL.Image.open(record["picture"])
        assert picture.size == PIL.Image.open(image).size and record["size"] == [picture.height, picture.width]
    assert (out / "sub" / "camera_boxes.jpg").is_file() and (out / "astronaut_boxes.jpg").is_file()

    code, stdout, _ = run_cli("detect", str(folder / "astronaut.jpg"), "-m", str(detector_dir), "-o", str(out))
    assert code == 0 and "object(s)" in stdout
    code, _, stderr = run_cli("detect", str(folder), "-m", str(detector_dir), "-o", str(out), "--threshold", "2")
    assert code == 2 and "--threshold must be a score in [0, 1]" in stderr


def test_eval_map_equals_pycocotools_on_its_saved_detections(detector_dir, tmp_path):
    """`pvtkit eval` on COCO-format data: its mAP, AP50 and per-class AP are what pycocotools says of the detections
    it saved (`--detections`), scored against the data's own annotation file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = detection_dataset(tmp_path / "data", n_train=2, n_val=5, size=(80, 112), seed=3)
    saved, report_file = tmp_path / "detections.json", tmp_path / "report.json"
    code, _, stderr = run_cli(
        "eval",
        "--model",
        str(detector_dir),
        "--data",
        str(data),
        "--format",
        "json",
        "-o",
        str(report_file),
        "--detections",
        str(saved),
        "--quiet",
    )
    assert code == 0, stderr
    report = json.loads(report_file.read_text())
    detections = json.loads(saved.read_text())
    assert report["num_images"] == 5 and report["num_detections"] == len(detections) > 0
    categories = {
        c["id"]: c["name"] for c in json.loads((data / "annotations/instances_val.json").read_text())["categories"]
    }
    assert {d["category_id"] for d in detections} <= set(categories)

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(data / "annotations/instances_val.json"))
        scored = COCOeval(truth, truth.loadRes(str(saved)), "bbox")
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    assert report["AP"] == pytest.approx(max(scored.stats[0], 0.0), abs=1e-9)
    assert report["AP50"] == pytest.approx(max(scored.stats[1], 0.0), abs=1e-9)
    assert report["AR100"] == pytest.approx(max(scored.stats[8], 0.0), abs=1e-9)
    names = sorted(report["per_class"])
    assert names == sorted(categories.values())

    code, table, _ = run_cli("eval", "-m", str(detector_dir), "-d", str(data), "--quiet")
    assert code == 0 and "AP @[.50:.95]" in table and "AP @.50" in table
    code, _, stderr = run_cli("eval", "-m", str(detector_dir), "-d", str(data), "--confusion", str(tmp_path / "c.png"))
    assert code != 0 and "per-class AP" in stderr


@pytest.mark.slow
def test_export_onnx_matches_in_onnx_runtime_at_other_sizes_and_batches(detector_dir, tmp_path, photos):
    """`pvtkit export onnx` writes a file with dynamic batch and size (GridSample for the deformable sampling),
    checked in ONNX Runtime against the eager model; the file answers a real photo like the model."""
    import onnxruntime as ort

    path = tmp_path / "detr.onnx"
    code, stdout, stderr = run_cli("export", "onnx", "--model", str(detector_dir), "-o", str(path), "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["verified"] and report["max_rel_diff"] < 1e-4 and len(report["checks"]) == 3
    assert {tuple(c["shape"][:1]) for c in report["checks"]} == {(1,), (2,), (3,)}  # other batches and sizes
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "pred_boxes"]
    model = pvtkit.AutoModelForObjectDetection.from_pretrained(detector_dir).eval()
    processor = pvtkit.AutoImageProcessor.from_pretrained(detector_dir)
    pixels = processor(photos["coffee"], return_tensors="pt")["pixel_values"]
    logits, boxes = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    with torch.inference_mode():
        expected = model(pixel_values=pixels)
    np.testing.assert_allclose(logits, expected.logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(boxes, expected.pred_boxes.numpy(), rtol=1e-4, atol=1e-5)


def test_train_refuses_bad_detection_data_naming_the_file(tmp_path, caplog):
    """Annotation files that cannot be trained on stop `pvtkit train` before it starts, naming the file and what
    is wrong; boxes that can be mended are reported and the run goes on."""
    data = detection_dataset(tmp_path / "data", n_train=2, n_val=1, size=(48, 64))
    broken = data / "annotations" / "instances_train.json"
    broken.write_text(broken.read_text()[:-20])
    code, _, stderr = run_cli(
        "train", "--task", "detection", "--data", str(data), "--arch", "deformable_detr_pvt_v2_b0", "-o",
        str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert code != 0 and "instances_train.json" in stderr


def test_eval_logs_its_result(detector_dir, tmp_path, caplog):
    data = detection_dataset(tmp_path / "data", n_train=1, n_val=2, size=(48, 64), seed=1)
    with caplog.at_level(logging.INFO, logger="pvtkit"):
        result = pvtkit.evaluate_detection(str(detector_dir), str(data), progress=False)
    assert result.num_images == 2 and "mAP" in caplog.text


@pytest.mark.slow
def test_detect_under_torchrun_shards_and_matches_one_process(detector_dir, photos, tmp_path):
    """Two processes split the inputs, each writes its pictures, rank 0 the records in input order: the same
    records as one process (batch 1: no padding between images)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, image in photos.items():
        image.save(folder / f"{name}.png")
    common = ["detect", str(folder), "-m", str(detector_dir), "--threshold", "0.3", "--format", "json"]
    common += ["--batch-size", "1", "--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    records = tmp_path / "dist.jsonl"
    command = [*TORCHRUN_PVTKIT, *common, "-o", str(tmp_path / "dist"), "--records", str(records)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    code, stdout, _ = run_cli(*common, "-o", str(tmp_path / "one"))
    assert code == 0
    distributed = [json.loads(line) for line in records.read_text().splitlines()]
    single = [json.loads(line) for line in stdout.splitlines()]
    assert [Path(r["path"]).name for r in distributed] == [Path(r["path"]).name for r in single]
    for a, b in zip(distributed, single):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        for x, y in zip(a["detections"], b["detections"]):  # other thread counts: integer pixels may truncate apart
            assert all(abs(x["box"][k] - y["box"][k]) <= 1 for k in y["box"]), (x, y)
        assert [d["score"] for d in a["detections"]] == pytest.approx([d["score"] for d in b["detections"]], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_info_describes_a_detector(detector_dir):
    """`pvtkit info` counts a detector's parameters and compute (meta device) at its task's size or a given one."""
    code, stdout, _ = run_cli("info", "--model", str(detector_dir), "--format", "json", "--image-size", "96x160")
    assert code == 0
    info = json.loads(stdout)
    model = pvtkit.AutoModelForObjectDetection.from_pretrained(detector_dir)
    assert info["class"] == "DeformableDetrForObjectDetection" and info["input"] == [3, 96, 160]
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) and info["macs"] > 0
    code, stdout, _ = run_cli("info", "--variant", "deformable_detr_pvt_v2_b0", "--format", "json")
    assert code == 0 and json.loads(stdout)["input"] == [3, 800, 800] and json.loads(stdout)["num_labels"] == 91
