"""Export: ONNX files (run in ONNX Runtime) and torch.export programs equal PyTorch at other batch sizes and
resolutions; metadata; int8 quantization; the CLI end to end; bad input leaves no file behind.

Tiny random models keep this quick; the real B0 / B2-Linear exports are measured in benchmarks/bench_export.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pvtkit
from pvtkit import export as exporting
from pvtkit.cli import main
from pvtkit.export import ExportError, MissingDependencyError, export_onnx, export_torch, read_onnx_metadata
from pvtkit.models.family import family_of

from helpers import REPO, rel_err

pytestmark = pytest.mark.integration  # with the real ONNX Runtime

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")

TOL = 1e-4  # max |exported - torch| / max |torch|


def tiny_pvt(linear: bool = False, stages: int = 4, **overrides) -> pvtkit.PvtV2Config:
    """Four stages as published (SR ratios 8, 4, 2, 1), or the first two only: tracing with symbolic sizes costs
    seconds per stage, and two stages still cover SRA with and without zero-padding and the stage hand-over."""
    fields = dict(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 2, 1, 2],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[2, 2, 2, 2],
    )
    fields = {k: v[:stages] for k, v in fields.items()}
    fields.update(num_encoder_blocks=stages, num_labels=3, linear_attention=linear, image_size=64)
    return pvtkit.PvtV2Config(**{**fields, **overrides})


def tiny_vit(**overrides) -> pvtkit.ViTConfig:
    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        encoder_stride=8,
        num_labels=4,
    )
    return pvtkit.ViTConfig(**{**fields, **overrides})


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, x: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    s = session(path)
    array = x.numpy() if isinstance(x, torch.Tensor) else x
    return s.run(None, {s.get_inputs()[0].name: array})


@pytest.fixture(scope="module")
def pvt_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = pvtkit.PvtV2ForImageClassification(tiny_pvt()).eval()
    path = tmp_path_factory.mktemp("pvt") / "pvt.onnx"
    return model, path, export_onnx(model, path)


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = pvtkit.ViTForImageClassification(tiny_vit()).eval()
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    return model, path, export_onnx(model, path)


# ------------------------------------------------------------------------------------------- ONNX parity


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 61, 97), (2, 17, 23), (1, 250, 33)])
def test_pvt_onnx_matches_pytorch_at_any_batch_and_size(pvt_onnx, shape):
    """One file, exported at 2x64x64, runs at other batch sizes and odd, non-square sizes (17x23: maps smaller
    than the reduction window, which SRA zero-pads)."""
    model, path, _ = pvt_onnx
    b, h, w = shape
    x = torch.randn(b, 3, h, w)
    (logits,) = run_onnx(path, x)
    with torch.no_grad():
        expected = model(x).logits
    assert rel_err(torch.from_numpy(logits), expected) <= TOL


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 48, 40), (2, 16, 64)])
def test_vit_onnx_interpolates_position_embeddings(vit_onnx, shape):
    """Exported at the nominal 32x32 and still correct at other multiples of the patch (the shortcut that
    skips interpolation at the nominal size must not be baked in)."""
    model, path, _ = vit_onnx
    b, h, w = shape
    x = torch.randn(b, 3, h, w)
    (logits,) = run_onnx(path, x)
    with torch.no_grad():
        expected = model(x, interpolate_pos_encoding=True).logits
    assert rel_err(torch.from_numpy(logits), expected) <= TOL


def test_linear_sra_backbone_onnx_keeps_adaptive_pooling_dynamic(tmp_path):
    """Linear SRA pools to 7x7 from any map size: a plain trace fixes the pooling window at the example size, so
    at 61x97 it would be silently wrong. A backbone's stage maps are outputs, by stage name."""
    torch.manual_seed(1)
    config = tiny_pvt(linear=True, stages=2, out_features=["stage1", "stage2"])
    model = pvtkit.PvtV2Backbone(config).eval()
    report = export_onnx(model, tmp_path / "backbone.onnx", image_size=56)
    assert report.output_names == ["stage1", "stage2"]
    s = session(tmp_path / "backbone.onnx")
    assert [o.name for o in s.get_outputs()] == report.output_names
    for b, h, w in [(1, 56, 56), (2, 61, 97), (1, 9, 13)]:
        x = torch.randn(b, 3, h, w)
        got = s.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            expected = model(x).feature_maps
        for g, e in zip(got, expected, strict=True):
            assert g.shape == tuple(e.shape)
            assert rel_err(torch.from_numpy(g), e) <= TOL


def test_report_and_signature(pvt_onnx):
    model, path, report = pvt_onnx
    assert report.verified and report.max_rel_diff <= TOL and len(report.checks) == 3
    assert {tuple(c.shape) for c in report.checks} == {(1, 3, 64, 64), (3, 3, 55, 73), (2, 3, 35, 37)}
    assert report.input_shape == ["batch", 3, "height", "width"]
    s = session(path)
    (inp,) = s.get_inputs()
    assert inp.name == "pixel_values" and inp.shape == ["batch", 3, "height", "width"]
    assert [o.name for o in s.get_outputs()] == ["logits"]
    assert path.stat().st_size == report.size_bytes
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_metadata_holds_what_a_server_needs(pvt_onnx, vit_onnx):
    model, path, _ = pvt_onnx
    meta = read_onnx_metadata(path)
    assert meta["model_type"] == "pvt_v2" and meta["architecture"] == "PvtV2ForImageClassification"
    assert meta["id2label"] == {str(k): v for k, v in model.config.id2label.items()}
    assert meta["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["image_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["size"] == {"height": 64, "width": 64} and meta["resample"] == 3
    assert meta["input_names"] == ["pixel_values"] and meta["output_names"] == ["logits"]
    assert meta["dynamic_batch"] is True and meta["config"]["hidden_sizes"] == [8, 16, 24, 32]
    vit_meta = read_onnx_metadata(vit_onnx[1])
    assert vit_meta["model_type"] == "vit" and vit_meta["patch_size"] == [8, 8]
    assert vit_meta["image_mean"] == [0.5, 0.5, 0.5] and vit_meta["size"] == {"height": 32, "width": 32}


def test_vit_encoder_fp16_with_fixed_batch_and_size(tmp_path):
    """ViTModel gives last_hidden_state and pooler_output; fp16 is checked against the fp32 model with its looser
    tolerance; a fixed batch and (non-nominal) size make fixed input dims."""
    torch.manual_seed(2)
    model = pvtkit.ViTModel(tiny_vit()).eval()
    report = export_onnx(
        model,
        tmp_path / "enc.onnx",
        dtype="fp16",
        dynamic_batch=False,
        batch_size=2,
        dynamic_size=False,
        image_size=(24, 40),
    )
    assert report.output_names == ["last_hidden_state", "pooler_output"]
    assert report.dtype == "fp16" and report.tolerance == exporting.FP16_TOLERANCE
    assert 0 < report.max_rel_diff <= exporting.FP16_TOLERANCE
    s = session(tmp_path / "enc.onnx")
    assert s.get_inputs()[0].shape == [2, 3, 24, 40]
    x = torch.randn(2, 3, 24, 40)
    got = s.run(None, {"pixel_values": x.half().numpy()})
    assert got[0].dtype == np.float16
    with torch.no_grad():
        out = model(x, interpolate_pos_encoding=True)
    assert rel_err(torch.from_numpy(got[0].astype(np.float32)), out.last_hidden_state) <= exporting.FP16_TOLERANCE
    assert rel_err(torch.from_numpy(got[1].astype(np.float32)), out.pooler_output) <= exporting.FP16_TOLERANCE


# ------------------------------------------------------------------------------------------- torch.export


@pytest.mark.slow
def test_torch_export_program_runs_at_other_shapes(tmp_path):
    torch.manual_seed(4)
    model = pvtkit.PvtV2ForImageClassification(tiny_pvt(stages=2)).eval()
    report = export_torch(model, tmp_path / "pvt.pt2")
    assert report.verified and report.max_rel_diff <= TOL
    assert report.dynamic_ranges == {"batch": [1, exporting.MAX_BATCH], "height": [61, None], "width": [61, None]}
    extra = {"pvtkit.json": ""}
    program = torch.export.load(tmp_path / "pvt.pt2", extra_files=extra).module()
    assert json.loads(extra["pvtkit.json"])["model_type"] == "pvt_v2"
    for b, h, w in [(1, 64, 64), (3, 61, 97), (2, 130, 75)]:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            assert rel_err(program(x)["logits"], model(x).logits) <= TOL


def test_torch_export_vit_takes_multiples_of_the_patch(tmp_path):
    torch.manual_seed(5)
    model = pvtkit.ViTForImageClassification(tiny_vit()).eval()
    export_torch(model, tmp_path / "vit.pt2")
    program = torch.export.load(tmp_path / "vit.pt2").module()
    for b, h, w in [(1, 32, 32), (3, 48, 16)]:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            assert rel_err(program(x)["logits"], model(x, interpolate_pos_encoding=True).logits) <= TOL
    with pytest.raises(Exception, match="size|Guard|Expected"):
        program(torch.randn(1, 3, 30, 32))  # not a multiple of the patch


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls, config",
    [
        (pvtkit.PvtV2Model, tiny_pvt()),
        (pvtkit.PvtV2ForImageClassification, tiny_pvt(linear=True)),
        (pvtkit.PvtV2Backbone, tiny_pvt(out_indices=[0, 1, 2, 3])),
        (pvtkit.ViTModel, tiny_vit()),
        (pvtkit.ViTForImageClassification, tiny_vit()),
        (pvtkit.ViTForMaskedImageModeling, tiny_vit()),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_torch_export_of_the_model_itself_is_dynamic(cls, config):
    """`torch.export.export(model, (x,), dynamic_shapes=...)` of the model's own forward, with its default outputs
    (pytree nodes): the program matches eager at other batch sizes and odd, non-square sizes, down to the smallest
    side the family says a program takes."""
    torch.manual_seed(9)
    model = cls(config).eval()
    family = family_of(model)
    low, (mh, mw) = family.min_export_side(config), family.size_multiple(config)
    dims = {0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    program = torch.export.export(model, (torch.randn(2, 3, 80, 96),), dynamic_shapes={"pixel_values": dims}).module()
    kwargs = {"interpolate_pos_encoding": True} if mh > 1 else {}  # ViT: eager interpolates only when told to
    odd = [(65, 97), (129, 75)] if mh == 1 else [(5 * mh, 7 * mw), (9 * mh, 3 * mw)]  # ViT: odd patch counts
    for b, h, w in [(1, low, low), (3, *odd[0]), (2, *odd[1])]:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            got, expected = program(x), model(x, **kwargs)
        assert type(got) is type(expected) and got.keys() == expected.keys()
        flat = lambda out: [t for v in out.to_tuple() for t in (v if isinstance(v, tuple) else (v,))]  # noqa: E731
        for g, e in zip(flat(got), flat(expected), strict=True):
            assert rel_err(g, e) <= TOL, (b, h, w)


# ------------------------------------------------------------------------------------------- quantization


def test_dynamic_int8_reports_drift_on_photos(tmp_path):
    pytest.importorskip("skimage")
    torch.manual_seed(6)
    model = pvtkit.ViTForImageClassification(tiny_vit()).eval()
    report = export_onnx(model, tmp_path / "int8.onnx", quantize="dynamic")
    q = report.quantization
    assert q["source"] == "scikit-image photos" and q["images"] == len(exporting.SAMPLE_PHOTOS)
    assert 0.0 <= q["top1_agreement"] <= 1.0 and 0.0 < q["max_logit_drift"] < 1.0
    graph = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.graph.node)
    assert read_onnx_metadata(tmp_path / "int8.onnx")["quantization"] == "dynamic-int8"
    assert report.max_rel_diff <= TOL  # the fp32 graph was checked before quantizing


# ------------------------------------------------------------------------------------------- bad input


def test_vit_size_off_the_patch_grid_is_refused(tmp_path):
    model = pvtkit.ViTForImageClassification(tiny_vit())
    with pytest.raises(ValueError, match=r"30x32.*multiples of the patch size 8x8"):
        export_onnx(model, tmp_path / "bad.onnx", image_size=(30, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opset": 12}, "opset 12 is not supported"),
        ({"dtype": "int4"}, "dtype 'int4'"),
        ({"quantize": "int4"}, "quantize 'int4'"),
        ({"quantize": "static"}, "calibration images"),
        ({"postprocess": "logits"}, "postprocess 'logits'"),
        ({"dtype": "fp16", "quantize": "dynamic"}, "fp32"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(pvtkit.PvtV2Model(tiny_pvt()), tmp_path / "x.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_model_class(tmp_path):
    with pytest.raises(ValueError, match="ViTForMaskedImageModeling: export supports"):
        export_onnx(pvtkit.ViTForMaskedImageModeling(tiny_vit()), tmp_path / "x.onnx")


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(MissingDependencyError, match=r'pip install "pvtkit\[export\]"'):
        export_onnx(pvtkit.PvtV2Model(tiny_pvt()), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_check_leaves_nothing(tmp_path, monkeypatch):
    """Out of tolerance: ExportError naming the difference, and neither the file nor the staging folder stays."""
    model = pvtkit.ViTForImageClassification(tiny_vit(num_hidden_layers=1))
    reference = exporting._reference
    monkeypatch.setattr(exporting, "_reference", lambda m, x: {k: v + 0.01 for k, v in reference(m, x).items()})
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="differs from PyTorch by .* above the tolerance 0.0001"):
        export_torch(model, tmp_path / "m.pt2", dynamic_size=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pvtkit", "export", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.mark.slow
def test_cli_onnx_with_preprocessing_end_to_end(tmp_path):
    """`python -m pvtkit export onnx --with-preprocessing --json` on a ViT checkpoint with its processor: the file
    takes uint8 NHWC images and gives what the model gives on the processor's output, at other batch sizes and
    other multiples of the patch."""
    torch.manual_seed(7)
    model = pvtkit.ViTForImageClassification(tiny_vit()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    processor = pvtkit.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6])
    processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out" / "model.onnx"
    result = cli("onnx", "--model", str(tmp_path / "ckpt"), "--output", str(out), "--with-preprocessing", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_name"] == "images" and report["input_shape"] == ["batch", "height", "width", 3]
    assert report["output_names"] == ["logits"] and report["verified"] and report["max_rel_diff"] <= TOL
    rng = np.random.default_rng(0)
    for b, h, w in [(1, 32, 32), (3, 40, 56)]:
        images = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        (logits,) = run_onnx(out, images)
        pixels = processor(list(images), return_tensors="pt", do_resize=False, input_data_format="channels_last")
        with torch.no_grad():
            expected = model(pixels["pixel_values"], interpolate_pos_encoding=True).logits
        assert rel_err(torch.from_numpy(logits), expected) <= TOL
    meta = read_onnx_metadata(out)
    assert meta["input_format"].startswith("uint8 RGB images") and meta["image_mean"] == [0.4, 0.5, 0.6]


def test_cli_failures_exit_nonzero_and_write_nothing(tmp_path, capsys):
    torch.manual_seed(8)
    pvtkit.ViTForImageClassification(tiny_vit()).save_pretrained(tmp_path / "vit")
    out = tmp_path / "out.onnx"
    result = cli("onnx", "--model", str(tmp_path / "vit"), "--output", str(out), "--size", "30x32")
    assert result.returncode == 2 and "multiples of the patch size 8x8" in result.stderr
    assert "Traceback" not in result.stderr
    # the same entry point in-process: an unwritable output (exit 1), an unsupported opset (exit 2)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", "onnx", "--model", str(tmp_path / "vit"), "--output", str(blocker / "x.onnx")]) == 1
    assert f"cannot write {blocker / 'x.onnx'}" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", str(tmp_path / "vit"), "--output", str(out), "--opset", "11"]) == 2
    assert "--opset 11 is not supported" in capsys.readouterr().err
    assert main(["export", "torch", "--model", str(tmp_path / "nothing"), "--output", str(out)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "vit"]
