"""The inference pipeline and the `pvtkit classify | features | info | attention` commands, end to end.

Real photos come from scikit-image; the reference for predictions is transformers' own image-classification
pipeline with the same (tiny, random) weights and its PIL image processor.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import transformers
from safetensors import safe_open

import pvtkit
from pvtkit.analysis import key_grid
from pvtkit.cli import main

from helpers import TORCHRUN_PVTKIT, lay_out_hub_cache

TINY_PVT = dict(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4))
LABELS = {0: "cat", 1: "dog", 2: "cup", 3: "rocket", 4: "coin", 5: "camera"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def png_claiming_size(path: Path, width: int, height: int) -> None:
    """A tiny, valid-looking PNG whose header claims width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """scikit-image's photos in several modes and formats, one nested, plus a corrupt JPEG, a text file named .png,
    a decompression bomb and an empty folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    PIL.Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.jpg", quality=92)
    PIL.Image.fromarray(skimage.data.chelsea()).save(root / "nested" / "chelsea.png")
    PIL.Image.fromarray(skimage.data.camera()).save(root / "camera.png")  # grayscale
    PIL.Image.fromarray(skimage.data.logo()).save(root / "logo.png")  # RGBA
    PIL.Image.fromarray(skimage.data.coffee()).convert("P").save(root / "coffee.gif")  # palette
    (root / "corrupt.jpg").write_bytes(PIL.Image.fromarray(skimage.data.coffee()).tobytes()[:5000])
    (root / "notes.png").write_text("not an image at all\n")
    png_claiming_size(root / "bomb.png", 40000, 40000)
    (root / "readme.txt").write_text("skipped: not an image extension\n")
    return root


GOOD = ["astronaut.jpg", "camera.png", "coffee.gif", "logo.png", "nested/chelsea.png"]
BAD = ["bomb.png", "corrupt.jpg", "notes.png"]


@pytest.fixture(scope="module")
def pvt_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pvt") / "model"
    torch.manual_seed(1)
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY_PVT, id2label=LABELS))
    model.save_pretrained(path)
    pvtkit.PvtImageProcessor().save_pretrained(path)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pvtkit", *args], capture_output=True, text=True, env=env or ENV, timeout=timeout
    )


def test_pipeline_equals_transformers_pipeline_on_real_photos(pvt_dir, photos):
    ours = pvtkit.pipeline("image-classification", model=pvt_dir, batch_size=2)
    processor = transformers.AutoImageProcessor.from_pretrained(pvt_dir, backend="pil")
    theirs = transformers.pipeline("image-classification", model=str(pvt_dir), image_processor=processor)
    paths = [str(photos / name) for name in GOOD]
    got = ours(paths, top_k=4)
    for path, predictions in zip(paths, got):
        expected = theirs(path, top_k=4)
        assert [p["label"] for p in predictions] == [p["label"] for p in expected], path
        np.testing.assert_allclose([p["score"] for p in predictions], [p["score"] for p in expected], rtol=1e-5)
    single = ours(PIL.Image.open(paths[0]))  # one image in, one list out; default top_k 5
    assert len(single) == 5 and single[0]["label"] == got[0][0]["label"]
    with pytest.raises(ValueError, match="corrupt.jpg"):
        ours([paths[0], str(photos / "corrupt.jpg")])


def test_classify_cli_end_to_end_json_equals_python_api(pvt_dir, photos):
    result = run_cli(
        "classify",
        str(photos),
        "--model",
        str(pvt_dir),
        "--format",
        "json",
        "--top-k",
        "3",
        "--batch-size",
        "2",
        "--num-workers",
        "2",
    )
    assert result.returncode == 1, result.stderr  # some inputs failed, the others were classified
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    names = sorted(GOOD + BAD)
    assert [Path(r["path"]).relative_to(photos).as_posix() for r in records] == names  # input order, recursive
    api = pvtkit.pipeline("image-classification", model=pvt_dir)
    for record in records:
        name = Path(record["path"]).name
        if Path(record["path"]).relative_to(photos).as_posix() in BAD:
            assert "predictions" not in record and name in record["error"]
            assert sum(name in line for line in result.stderr.splitlines()) == 1  # one line per bad input
            continue
        expected = api(record["path"], top_k=3)
        assert [p["label"] for p in record["predictions"]] == [p["label"] for p in expected]
        np.testing.assert_allclose(
            [p["score"] for p in record["predictions"]], [p["score"] for p in expected], rtol=1e-5
        )
    bomb = next(r for r in records if r["path"].endswith("bomb.png"))
    assert "refusing to decode an image this large" in bomb["error"]


def test_classify_csv_table_output_file_and_all_good_exit_zero(pvt_dir, photos, tmp_path, capsys):
    good = [str(photos / name) for name in GOOD[:3]]
    out = tmp_path / "out" / "predictions.csv"
    assert (
        main(
            [
                "classify",
                *good,
                "--model",
                str(pvt_dir),
                "--format",
                "csv",
                "--top-k",
                "2",
                "-o",
                str(out),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["path"] for r in rows] == [p for p in good for _ in range(2)]
    assert [int(r["rank"]) for r in rows] == [1, 2] * 3 and all(r["label"] in LABELS.values() for r in rows)
    assert [p.name for p in out.parent.iterdir()] == ["predictions.csv"]  # no temporary left behind
    assert main(["classify", good[0], "--model", str(pvt_dir), "--top-k", "1", "--num-workers", "0"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == good[0] and table[1].split()[0] == "1" and table[1].split()[2] in LABELS.values()


def test_classify_usage_errors_missing_inputs_and_empty_folder(pvt_dir, photos, tmp_path, capsys):
    assert main(["classify", str(photos / "camera.png"), "--model", str(tmp_path / "no-such-model")]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main(["classify", str(photos / "camera.png"), "--model", str(pvt_dir), "--top-k", "0"]) == 2
    with pytest.raises(SystemExit) as bad_flag:
        main(["classify", str(photos / "camera.png"), "--format", "xml"])
    assert bad_flag.value.code == 2
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "classify",
            str(tmp_path / "empty"),
            str(tmp_path / "missing.jpg"),
            str(photos / "camera.png"),
            "--model",
            str(pvt_dir),
            "--format",
            "json",
            "--num-workers",
            "0",
        ]
    )
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and len(records) == 3
    assert "no image files found" in records[0]["error"] and "no such file" in records[1]["error"]
    assert records[2]["path"].endswith("camera.png") and len(records[2]["predictions"]) == 5


def test_default_model_from_hub_cache_offline_and_missing_cache(pvt_dir, photos, tmp_path):
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "OpenGVLab/pvt_v2_b0", pvt_dir)
    env = {**ENV, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = run_cli("classify", str(photos / "camera.png"), "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    expected = pvtkit.pipeline("image-classification", model=pvt_dir)(str(photos / "camera.png"))
    assert [p["label"] for p in record["predictions"]] == [p["label"] for p in expected]
    result = run_cli("classify", str(photos / "camera.png"), env={**env, "HF_HUB_CACHE": str(tmp_path / "empty")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "OpenGVLab/pvt_v2_b0" in result.stderr and "not in the local cache" in result.stderr


def test_model_without_processor_config_falls_back_and_says_so(pvt_dir, photos, tmp_path, caplog):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((pvt_dir / name).read_bytes())
    with caplog.at_level("WARNING", logger="pvtkit"):
        ours = pvtkit.pipeline("image-classification", model=bare)
    assert "preprocessor_config.json" in caplog.text and "PvtImageProcessor" in caplog.text
    reference = pvtkit.pipeline("image-classification", model=pvt_dir)
    image = str(photos / "astronaut.jpg")
    assert ours(image) == reference(image)  # the family defaults are what the full checkpoint ships


def test_untrained_head_is_refused(tmp_path):
    encoder = tmp_path / "encoder"
    pvtkit.PvtV2Model(pvtkit.PvtV2Config(**TINY_PVT)).save_pretrained(encoder)
    with pytest.raises(ValueError, match="no trained classification head"):
        pvtkit.pipeline("image-classification", model=encoder)


@pytest.mark.slow
def test_classify_under_torchrun_shards_and_writes_one_ordered_output(pvt_dir, photos, tmp_path):
    out = tmp_path / "dist.jsonl"
    cmd = [
        *TORCHRUN_PVTKIT,
        "classify",
        str(photos),
        "--model",
        str(pvt_dir),
        "--format",
        "json",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "-o",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode != 0  # bad inputs among them: rank 0 exits 1, which torchrun passes on
    distributed = [json.loads(line) for line in out.read_text().splitlines()]
    single = run_cli("classify", str(photos), "--model", str(pvt_dir), "--format", "json", "--num-workers", "0")
    reference = [json.loads(line) for line in single.stdout.splitlines()]
    assert [r["path"] for r in distributed] == [r["path"] for r in reference]  # complete and in input order
    for ours, expected in zip(distributed, reference):
        assert ours.get("error") == expected.get("error")
        if "predictions" in expected:  # other batch compositions round differently
            assert [p["label"] for p in ours["predictions"]] == [p["label"] for p in expected["predictions"]]
            np.testing.assert_allclose(
                [p["score"] for p in ours["predictions"]], [p["score"] for p in expected["predictions"]], rtol=1e-5
            )


def test_features_maps_pooled_and_vit(pvt_dir, photos, tmp_path):
    images = [str(photos / name) for name in GOOD[:3]]
    out = tmp_path / "features.safetensors"
    assert (
        main(
            [
                "features",
                *images,
                str(photos / "notes.png"),
                "--model",
                str(pvt_dir),
                "-o",
                str(out),
                "--stages",
                "1,4",
                "--num-workers",
                "0",
            ]
        )
        == 1
    )
    with safe_open(out, "pt") as f:
        assert json.loads(f.metadata()["paths"]) == images  # the unreadable input is reported and left out
        maps = {k: f.get_tensor(k) for k in f.keys()}
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"stage1": (3, 8, 56, 56), "stage4": (3, 32, 7, 7)}
    backbone = pvtkit.PvtV2Backbone.from_pretrained(pvt_dir, out_features=["stage1", "stage4"], out_indices=[0, 3])
    pixels = pvtkit.PvtImageProcessor()(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = backbone(pixels).feature_maps
    torch.testing.assert_close(maps["stage4"], expected[1], rtol=1e-5, atol=1e-6)
    pooled = tmp_path / "pooled.safetensors"
    assert (
        main(["features", *images, "--model", str(pvt_dir), "-o", str(pooled), "--pooled", "--num-workers", "0"]) == 0
    )
    with safe_open(pooled, "pt") as f:
        torch.testing.assert_close(f.get_tensor("stage4"), expected[1].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
        assert sorted(f.keys()) == ["stage1", "stage2", "stage3", "stage4"]

    vit_dir = tmp_path / "vit"
    vit = pvtkit.ViTForImageClassification(
        pvtkit.ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            encoder_stride=8,
        )
    )
    vit.save_pretrained(vit_dir)
    pvtkit.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit_dir)
    assert main(["features", images[0], "--model", str(vit_dir), "-o", str(pooled), "--pooled"]) == 0
    with safe_open(pooled, "pt") as f:
        cls = f.get_tensor("pooled")
    pixels = pvtkit.ViTImageProcessor(size={"height": 32, "width": 32})(images[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(cls, vit.vit(pixels).last_hidden_state[:, 0], rtol=1e-5, atol=1e-6)
    assert main(["features", images[0], "--model", str(vit_dir), "-o", str(pooled), "--stages", "2"]) == 2
    assert main(["features", images[0], "--model", str(pvt_dir), "-o", str(pooled), "--stages", "5"]) == 2


def test_info_counts_match_transformers(capsys):
    assert main(["info", "--variant", "b2_linear", "--image-size", "256x320", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from torch.utils.flop_counter import FlopCounterMode

    config = transformers.PvtV2Config(**pvtkit.PvtV2Config.from_variant("b2_linear").to_dict())
    reference = transformers.PvtV2ForImageClassification(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = reference(torch.randn(1, 3, 256, 320), output_hidden_states=True)
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    assert info["variant"] == "b2_linear" and info["num_labels"] == 1000
    assert abs(info["flops"] - counter.get_total_flops()) / counter.get_total_flops() < 0.01
    assert [s["shape"] for s in info["stages"]] == [list(h.shape[2:]) for h in out.hidden_states]
    assert [s["stride"] for s in info["stages"]] == [4, 8, 16, 32]
    assert main(["info", "--variant", "base_patch16_224", "--image-size", "100"]) == 2
    assert "divisible by 16" in capsys.readouterr().err


def test_attention_picture_and_key_grid(pvt_dir, photos, tmp_path):
    # The key grid of SRA is the stage map reduced by the SR conv (stride sr, no padding).
    for (h, w), sr in [((58, 75), 8), ((29, 38), 4), ((15, 19), 2), ((8, 10), 1)]:
        reduced = torch.nn.Conv2d(1, 1, sr, sr)(torch.zeros(1, 1, h, w)).shape[-2:]
        assert key_grid(reduced[0] * reduced[1], h, w) == tuple(reduced)
    out = tmp_path / "attn.png"
    assert (
        main(
            [
                "attention",
                str(photos / "nested" / "chelsea.png"),
                "--model",
                str(pvt_dir),
                "-o",
                str(out),
                "--query",
                "0.5,0.4",
                "--height",
                "120",
            ]
        )
        == 0
    )
    picture = PIL.Image.open(out)
    assert picture.format == "PNG" and picture.height > 120 and picture.width > 5 * 120  # image + 4 stages
    missing = tmp_path / "none.png"
    assert main(["attention", str(photos / "corrupt.jpg"), "--model", str(pvt_dir), "-o", str(missing)]) == 1
    assert not missing.exists()
    assert (
        main(["attention", str(photos / "camera.png"), "--model", str(pvt_dir), "-o", str(missing), "--query", "2,3"])
        == 2
    )
