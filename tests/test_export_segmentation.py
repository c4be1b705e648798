"""Segmentation exports that keep their accuracy: post-processing (upsampling + argmax) in the ONNX graph equals
`pvtkit segment`; `--verify-data` measures the file's mIoU against PyTorch's and refuses a file that loses too much;
static and dynamic int8 report a bounded mIoU delta on digit mosaics.

One tiny SegFormer is trained for a few seconds on digit canvases whose strokes are tinted by class, so that it
really segments them (mIoU around 0.6 on unseen digits) and an int8 delta means something.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

import pvtkit
from pvtkit import export_accuracy
from pvtkit.cli import main
from pvtkit.evaluation import evaluate_segmentation
from pvtkit.export import export_onnx, read_onnx_metadata

from helpers import CLASSES, digit_canvases, write_pairs

pytestmark = pytest.mark.integration  # with the real ONNX Runtime

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")

# one colour per class: a stroke's colour tells its class, so a model trained for seconds segments unseen digits
TINTS = np.array(
    [
        [0, 0, 0],
        [255, 64, 64],
        [64, 255, 64],
        [64, 64, 255],
        [255, 255, 64],
        [255, 64, 255],
        [64, 255, 255],
        [255, 160, 64],
        [160, 64, 255],
        [64, 160, 255],
        [200, 200, 200],
    ]
)


def tinted(pairs):
    """Digit canvases with each stroke pixel coloured by its class (background pixels stay dim gray)."""
    out = []
    for image, mask in pairs:
        gray = np.asarray(image, dtype=np.float64)[..., None] / 255
        labels = np.asarray(mask)
        rgb = np.where(labels[..., None] > 0, gray * TINTS[labels], gray * 128)
        out.append((PIL.Image.fromarray(rgb.astype(np.uint8)), mask))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model folder, dataset folder, model): a SegFormer trained 300 steps on 128 tinted 32x32 canvases; the
    validation split holds 16 canvases of digits training never saw."""
    root = tmp_path_factory.mktemp("export-seg")
    data = root / "digits"
    train = tinted(digit_canvases(128, 32, seed=1))
    write_pairs(data / "train" / "images", data / "train" / "masks", train)
    write_pairs(data / "val" / "images", data / "val" / "masks", tinted(digit_canvases(16, 32, seed=2, first=256)), 128)
    torch.manual_seed(0)
    config = pvtkit.SegformerConfig(
        hidden_sizes=[16, 32, 32, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
    )
    model = pvtkit.SegformerForSemanticSegmentation(config)
    processor = pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32})
    pixels = processor([image for image, _ in train], return_tensors="pt")["pixel_values"]
    labels = torch.from_numpy(np.stack([np.asarray(mask) for _, mask in train])).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(300):
        batch = torch.randint(0, len(pixels), (16,), generator=generator)
        loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folder = root / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, data, model


@pytest.fixture(scope="module")
def reference_miou(trained):
    """The PyTorch model's mIoU on the validation split, by the evaluator (`pvtkit eval`'s code path)."""
    folder, data, _ = trained
    result = evaluate_segmentation(str(folder), data, progress=False)  # the model and processor pvtkit eval loads
    assert result.mean_iou > 0.4  # the model segments: the int8 deltas below are measured on something real
    return result.mean_iou


class OnnxLogits(torch.nn.Module):
    """An ONNX file of segmentation logits as a model `evaluate_segmentation` can drive (independent of the
    exporter's own mIoU loop)."""

    def __init__(self, path: Path, config) -> None:
        super().__init__()
        self.session, self.config = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), config

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        (logits,) = self.session.run(["logits"], {"pixel_values": pixel_values.numpy()})
        return SimpleNamespace(logits=torch.from_numpy(logits))


def quantized_inputs(path: Path) -> tuple[dict[str, bool], bool]:
    """(per op type, whether any node of that type reads int8-rounded values: a DequantizeLinear output, directly
    or through reshapes; whether the last Conv, the classifier, does)."""
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def rounded(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"):
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    kinds: dict[str, bool] = {}
    for node in graph.node:
        kinds[node.op_type] = kinds.get(node.op_type, False) or any(rounded(name) for name in node.input)
    classifier = [node for node in graph.node if node.op_type == "Conv"][-1]
    return kinds, any(rounded(name) for name in classifier.input)


@pytest.fixture(scope="module")
def labels_export(trained, tmp_path_factory, reference_miou):
    """`pvtkit export onnx --postprocess --verify-data` through the CLI: (file, JSON report)."""
    folder, data, _ = trained
    out = tmp_path_factory.mktemp("labels") / "seg.onnx"
    argv = ["export", "onnx", "--model", str(folder), "-o", str(out), "--postprocess", "--verify-data", str(data)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*argv, "--json"]) == 0
    return out, json.loads(stdout.getvalue())


def test_postprocessed_labels_equal_pvtkit_segment_at_odd_sizes(labels_export, trained, tmp_path):
    """The graph's int64 label maps at each image's own (odd, non-square) size equal the label PNGs `pvtkit
    segment` writes for the same images."""
    out, report = labels_export
    folder, _, _ = trained
    assert report["postprocess"] == "labels" and report["output_names"] == ["labels"]
    assert all(c["label_agreement"] >= 0.999 for c in report["checks"])
    images = tmp_path / "images"
    images.mkdir()
    sizes = [(37, 53), (61, 29), (32, 32)]
    for i, ((image, _), (h, w)) in enumerate(zip(tinted(digit_canvases(3, 32, seed=5)), sizes)):
        image.resize((w, h), resample=PIL.Image.BILINEAR).save(images / f"{i}.png")
    assert main(["segment", str(images), "--model", str(folder), "-o", str(tmp_path / "seg"), "--no-overlay"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values", "target_size"]
    processor = pvtkit.SegformerImageProcessor.from_pretrained(folder)
    meta = read_onnx_metadata(out)
    assert meta["input_names"] == ["pixel_values", "target_size"] and meta["postprocess"].startswith("labels")
    for i, (h, w) in enumerate(sizes):
        image = PIL.Image.open(images / f"{i}.png").convert("RGB")
        pixels = processor(image, return_tensors="np")["pixel_values"].astype(np.float32)
        (labels,) = session.run(["labels"], {"pixel_values": pixels, "target_size": np.array([h, w])})
        expected = np.asarray(PIL.Image.open(tmp_path / "seg" / f"{i}.png"))
        assert labels.dtype == np.int64 and labels.shape == (1, h, w)
        # equal; a tie between two classes' upsampled scores within float rounding could differ on another CPU
        assert np.count_nonzero(labels[0] != expected) <= 2
        assert len(np.unique(expected)) > 2  # digits found, not a blank map


def test_verify_data_reports_both_mious(labels_export, reference_miou):
    """The report's PyTorch mIoU is the evaluator's; the fp32 post-processed file loses nothing."""
    _, report = labels_export
    accuracy = report["accuracy"]
    assert accuracy["images"] == 16 and accuracy["max_drop_points"] == 0.5
    assert accuracy["pytorch_miou"] == pytest.approx(reference_miou, abs=1e-9)
    assert accuracy["exported_miou"] == pytest.approx(reference_miou, abs=1e-3)
    assert accuracy["label_agreement"] >= 0.999
    assert accuracy["drop_points"] == pytest.approx(100 * (accuracy["pytorch_miou"] - accuracy["exported_miou"]))


def test_static_int8_keeps_layernorm_softmax_and_reports_a_bounded_delta(trained, reference_miou, tmp_path):
    """Static QDQ int8 calibrated on training images: LayerNorm, softmax and the classifier stay fp32, and the
    file's mIoU on unseen digits, measured by the evaluator itself, is within a point of PyTorch's and is the
    number the report gives."""
    folder, data, model = trained
    processor = pvtkit.SegformerImageProcessor.from_pretrained(folder)
    calibration = export_accuracy.calibration_files(data, 16)
    assert len(calibration) == 16 and all("train/images" in p.as_posix() for p in calibration)
    path = tmp_path / "int8.onnx"
    report = export_onnx(
        model, path, processor=processor, quantize="static", calibration_images=calibration, verify_data=data
    )
    accuracy = report.accuracy
    assert report.quantization["calibration_images"] == 16
    assert read_onnx_metadata(path)["quantization"] == "static-int8"
    kinds, classifier = quantized_inputs(path)
    assert kinds["MatMul"] and kinds["Conv"] and not kinds["LayerNormalization"] and not kinds["Softmax"]
    assert not classifier
    assert accuracy["pytorch_miou"] == pytest.approx(reference_miou, abs=1e-9)
    independent = evaluate_segmentation(OnnxLogits(path, model.config), data, processor=processor, progress=False)
    assert accuracy["exported_miou"] == pytest.approx(independent.mean_iou, abs=1e-9)
    assert abs(accuracy["drop_points"]) <= 1.0
    assert "mIoU on 16 images" in report.summary() and "static int8" in report.summary()


def test_dynamic_int8_reports_a_bounded_delta(trained, reference_miou, tmp_path):
    folder, data, model = trained
    processor = pvtkit.SegformerImageProcessor.from_pretrained(folder)
    path = tmp_path / "dyn.onnx"
    report = export_onnx(model, path, processor=processor, quantize="dynamic", verify_data=data, verify=False)
    assert report.quantization["images"] == 8
    assert report.accuracy["pytorch_miou"] == pytest.approx(reference_miou, abs=1e-9)
    assert abs(report.accuracy["drop_points"]) <= 1.0


def test_collapsed_int8_file_is_refused_and_nothing_written(trained, tmp_path, monkeypatch, capsys):
    """A quantizer that ruins the classifier (every pixel pushed to background) is caught by --verify-data: exit
    status 1, both mIoUs in the message, no file at --output and nothing left beside it."""
    folder, data, _ = trained
    quantization = pytest.importorskip("onnxruntime.quantization")
    real = quantization.quantize_static

    def ruinous(source, target, *args, **kwargs):
        real(source, target, *args, **kwargs)
        model = onnx.load(str(target))
        conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
        bias = next(i for i in model.graph.initializer if i.name == conv.input[2])
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += 1e3
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(target))

    monkeypatch.setattr(quantization, "quantize_static", ruinous)
    out = tmp_path / "out" / "seg.onnx"
    out.parent.mkdir()
    argv = ["export", "onnx", "--model", str(folder), "-o", str(out), "--quantize", "static", "--no-verify"]
    code = main([*argv, "--calibration", str(data), "--calibration-count", "8", "--verify-data", str(data)])
    err = capsys.readouterr().err
    assert code == 1
    assert "loses" in err and "mIoU points" in err and "PyTorch's" in err and "nothing was written" in err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--quantize", "static"], "--calibration DIR"),
        (["--calibration", "x"], "belongs to --quantize"),
        (["--verify-data", "/nonexistent"], "no such folder"),
        (["--max-miou-drop", "-1"], "0 or more"),
    ],
)
def test_bad_accuracy_options_are_usage_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "x.onnx"
    assert main(["export", "onnx", "--model", str(tmp_path), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_probabilities_are_softmax_of_the_bilinear_upsampled_logits(tmp_path):
    """`postprocess="probabilities"` on a random SegFormer: the graph's output equals softmax over classes of the
    logits upsampled by scikit-image's (half-pixel, order-1) resize, at a size given at run time."""
    transform = pytest.importorskip("skimage.transform")
    special = pytest.importorskip("scipy.special")
    torch.manual_seed(3)
    config = pvtkit.SegformerConfig(
        hidden_sizes=[8, 16],
        depths=[1, 1],
        num_attention_heads=[1, 1],
        sr_ratios=[2, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        num_encoder_blocks=2,
        decoder_hidden_size=16,
        num_labels=5,
    )
    model = pvtkit.SegformerForSemanticSegmentation(config).eval()
    processor = pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32})
    path = tmp_path / "probs.onnx"
    report = export_onnx(model, path, processor=processor, postprocess="probabilities")
    assert report.output_names == ["probabilities"] and report.max_rel_diff <= 1e-4
    pixels = torch.randn(2, 3, 40, 24)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixel_values": pixels.numpy(), "target_size": np.array([57, 43])})
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits.double().numpy()  # (2, 5, 10, 6)
    upsampled = transform.resize(logits, (2, 5, 57, 43), order=1, mode="edge", anti_aliasing=False)
    expected = special.softmax(upsampled, axis=1)
    assert got.shape == (2, 5, 57, 43)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_postprocess_needs_a_segmentation_model(tmp_path):
    model = pvtkit.PvtV2ForImageClassification(
        pvtkit.PvtV2Config(hidden_sizes=[8, 8, 8, 8], num_attention_heads=[1, 1, 1, 1], num_labels=3)
    )
    with pytest.raises(ValueError, match="semantic segmentation model"):
        export_onnx(model, tmp_path / "x.onnx", postprocess="labels")
    assert list(tmp_path.iterdir()) == []
