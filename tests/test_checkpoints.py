"""Every checkpoint a user has: timm and whai362/PVT layouts, wrappers and prefixes, config inference, the Hub
(its cache and a local stand-in server), Auto classes, `pvtkit convert`, and hostile or broken files.

timm's reference outputs come from committed fixtures made by `tests/fixtures/make_timm_fixtures.py` (timm needs
torchvision, which does not import beside CI's CPU torch).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import pvtkit
from pvtkit import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model
from pvtkit.auto import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    convert_checkpoint,
)
from pvtkit.convert import imagenet_labels
from pvtkit.models.family import infer_config, to_transformers
from pvtkit.models.vit.modeling import ViTForImageClassification

from helpers import FIXTURES, assert_close, lay_out_hub_cache
from helpers import HUB_COMMIT as COMMIT

# timm (like the authors' code) uses LayerNorm eps 1e-5 in the patch-embedding and spatial-reduction norms, while
# transformers (and so pvtkit) uses layer_norm_eps = 1e-6 everywhere: the same weights then differ slightly.
# Measured on these fixtures: 5e-6 (SRA) and 2.4e-5 (linear SRA) relative.
TIMM_EPS_DRIFT = 1e-4


def fixture(name: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(state dict in the source layout, input, the reference library's logits)."""
    f = load_file(FIXTURES / f"{name}.safetensors")
    state = {k.removeprefix("model."): v for k, v in f.items() if k.startswith("model.")}
    return state, f["input.pixel_values"], f["output.logits"]


@pytest.mark.parametrize("name", ["timm_pvt_v2_tiny", "timm_pvt_v2_tiny_linear", "original_pvt_v2_tiny"])
@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module."])
def test_timm_and_original_pvt_weights_reproduce_timm(tmp_path, name, wrap):
    state, x, expected = fixture(name)
    if wrap == "module.":
        payload = {"module." + k: v for k, v in state.items()}  # saved from DistributedDataParallel
    elif wrap == "plain":
        payload = state
    else:
        payload = {wrap: state, "epoch": 7, "args": {"lr": 1e-3}}
    torch.save(payload, tmp_path / "weights.pth")
    model = PvtV2ForImageClassification.from_pretrained(tmp_path / "weights.pth")  # no config: inferred
    assert model.config.linear_attention == name.endswith("linear")
    assert model.config.depths == [2, 1, 1, 1] and model.config.num_attention_heads == [1, 2, 3, 4]
    assert model.config.num_labels == 10
    with torch.no_grad():
        assert_close(model(x).logits, expected, tol=TIMM_EPS_DRIFT, what=f"{name} logits vs timm")


def test_timm_vit_weights_reproduce_timm(tmp_path):
    state, x, expected = fixture("timm_vit_tiny")
    save_file(state, tmp_path / "vit.safetensors")
    # 32 wide with 4 heads is no published width, so the head count is given; the rest is inferred
    model = ViTForImageClassification.from_pretrained(tmp_path / "vit.safetensors", num_attention_heads=4)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size) == (32, 2, 8)
    assert model.config.layer_norm_eps == 1e-6 and model.config.image_size in (32, [32, 32])
    with torch.no_grad():
        assert_close(model(x).logits, expected, what="ViT logits vs timm")  # same eps: no drift


@pytest.mark.parametrize(
    "timm_name,variant",
    [
        ("pvt_v2_b0", "b0"),
        ("pvt_v2_b1", "b1"),
        ("pvt_v2_b2", "b2"),
        ("pvt_v2_b2_li", "b2_linear"),
        ("pvt_v2_b3", "b3"),
        ("pvt_v2_b4", "b4"),
        ("pvt_v2_b5", "b5"),
    ],
)
def test_config_inference_and_key_mapping_for_every_published_variant(timm_name, variant):
    shapes = json.loads((FIXTURES / "timm_pvt_v2_shapes.json").read_text())[timm_name]
    state = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    converted, layout = to_transformers(state, "pvt_v2")
    assert layout.name == "timm"
    inferred = PvtV2Config(**infer_config(converted, layout))
    published = PvtV2Config.from_variant(variant)
    for field in (
        "depths",
        "hidden_sizes",
        "num_attention_heads",
        "sr_ratios",
        "mlp_ratios",
        "patch_sizes",
        "strides",
        "linear_attention",
        "num_labels",
        "qkv_bias",
    ):
        assert getattr(inferred, field) == getattr(published, field), field
    assert inferred.id2label[1] == "goldfish, Carassius auratus"  # a 1000-class head is ImageNet-1k
    with torch.device("meta"):
        ours = PvtV2ForImageClassification(published).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_imagenet_classifier_from_timm_gets_class_names(tmp_path):
    shapes = json.loads((FIXTURES / "timm_pvt_v2_shapes.json").read_text())["pvt_v2_b0"]
    save_file({k: torch.randn(s) * 0.02 for k, s in shapes.items()}, tmp_path / "pvt_v2_b0.safetensors")
    model = pvtkit.PvtV2ForImageClassification.from_pretrained(tmp_path / "pvt_v2_b0.safetensors")
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) >= 998
    assert model.config.id2label[0] == "tench, Tinca tinca" and model.config.label2id["tench, Tinca tinca"] == 0


def test_detection_backbone_checkpoint_loads_into_backbone_and_classifier(tmp_path, caplog):
    state, x, _ = fixture("original_pvt_v2_tiny")
    detection = {"backbone." + k: v for k, v in state.items() if not k.startswith("head.")}
    detection["neck.lateral_convs.0.conv.weight"] = torch.zeros(4, 8, 1, 1)  # the detector's own parts
    torch.save({"state_dict": detection, "meta": {"epoch": 12}}, tmp_path / "mask_rcnn_pvt_v2.pth")
    backbone = PvtV2Backbone.from_pretrained(tmp_path / "mask_rcnn_pvt_v2.pth", out_indices=[0, 1, 2, 3])
    reference = PvtV2ForImageClassification.from_pretrained(
        FIXTURES / "original_pvt_v2_tiny.safetensors", state_dict=state
    )
    with torch.no_grad():
        maps = backbone(x).feature_maps
        assert torch.equal(maps[-1], reference.pvt_v2(x).last_hidden_state)
    assert backbone.channels == [8, 16, 24, 32]
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        classifier = PvtV2ForImageClassification.from_pretrained(tmp_path / "mask_rcnn_pvt_v2.pth", num_labels=3)
    assert classifier.classifier.out_features == 3 and "newly initialised" in caplog.text


def test_hostile_truncated_and_foreign_files_get_clear_errors(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"weight": Exploit()}))
    with pytest.raises(ValueError, match=r"cannot read weights from .*evil\.pth"):
        PvtV2Model.from_pretrained(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()

    good = (FIXTURES / "timm_pvt_v2_tiny.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cannot read weights from .*cut\.safetensors"):
        PvtV2Model.from_pretrained(tmp_path / "cut.safetensors")

    save_file({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, tmp_path / "resnet.safetensors")
    # the message names every registered family ("a PVTv2, ViT, ... or GLPN checkpoint")
    with pytest.raises(ValueError, match=r"resnet\.safetensors is not a PVTv2, ViT, .*GLPN.* checkpoint.*fc\.weight"):
        PvtV2Model.from_pretrained(tmp_path / "resnet.safetensors")

    state, _, _ = fixture("timm_vit_tiny")
    save_file(state, tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match=r"is a ViT checkpoint \(timm layout\), not a PVTv2 one"):
        PvtV2Model.from_pretrained(tmp_path / "vit.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a weights file"):
        PvtV2Model.from_pretrained(tmp_path / "notes.txt")


# ---- Auto classes -----------------------------------------------------------------------------------------------


def test_auto_classes_dispatch_on_model_type_and_on_tensors(tmp_path):
    config = PvtV2Config(
        depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4), num_labels=4
    )
    PvtV2ForImageClassification(config).save_pretrained(tmp_path / "pvt")
    pvtkit.PvtImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "pvt")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "pvt"), PvtV2Config)
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path / "pvt"), PvtV2ForImageClassification)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "pvt"), PvtV2Model)
    assert isinstance(AutoBackbone.from_pretrained(tmp_path / "pvt"), PvtV2Backbone)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "pvt")
    assert type(processor) is pvtkit.PvtImageProcessor and processor.size == {"height": 64, "width": 64}
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "pvt", use_fast=True)) is pvtkit.PvtImageProcessorFast
    state, _, _ = fixture("timm_vit_tiny")
    save_file(state, tmp_path / "vit.safetensors")  # no config at all: the family comes from the tensors
    vit = AutoModelForImageClassification.from_pretrained(tmp_path / "vit.safetensors", num_attention_heads=4)
    assert isinstance(vit, ViTForImageClassification)
    with pytest.raises(ValueError, match="AutoBackbone has no 'vit' model"):
        AutoBackbone.from_pretrained(tmp_path / "vit.safetensors", num_attention_heads=4)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not one of pvtkit's"):
        AutoConfig.from_pretrained(tmp_path / "bert")


# ---- pvtkit convert ---------------------------------------------------------------------------------------------


def test_convert_cli_timm_to_transformers_directory(tmp_path):
    state, x, expected = fixture("timm_pvt_v2_tiny_linear")
    torch.save(state, tmp_path / "pvt_v2_tiny_li.pth")
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "pvtkit", "convert", str(tmp_path / "pvt_v2_tiny_li.pth"), str(out), "--dtype", "bf16"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "PvtV2ForImageClassification" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    theirs = transformers.PvtV2ForImageClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert theirs.config.linear_attention
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]
    with torch.no_grad():
        assert_close(theirs(x).logits, expected, tol=2e-2, what="bf16-converted weights in transformers vs timm")
    bad = subprocess.run(
        [sys.executable, "-m", "pvtkit", "convert", str(tmp_path / "missing.pth"), str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "missing.pth" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "pvtkit", "convert"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_convert_with_variant_and_backbone_only(tmp_path):
    shapes = json.loads((FIXTURES / "timm_pvt_v2_shapes.json").read_text())["pvt_v2_b0"]
    torch.save({k: torch.randn(s) * 0.02 for k, s in shapes.items() if not k.startswith("head.")}, tmp_path / "b0.pth")
    model = convert_checkpoint(tmp_path / "b0.pth", tmp_path / "out", variant="b0")
    assert type(model) is PvtV2Model
    assert isinstance(transformers.AutoModel.from_pretrained(tmp_path / "out"), transformers.PvtV2Model)
    with pytest.raises(ValueError, match="unknown PVTv2 variant"):
        convert_checkpoint(tmp_path / "b0.pth", tmp_path / "out2", variant="b7")


# ---- the Hub: its cache, offline mode and a local stand-in server ------------------------------------------------


def make_repo(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    config = PvtV2Config(
        depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4), num_labels=3
    )
    model = PvtV2ForImageClassification(config).eval()
    repo = tmp_path / "repo"
    model.save_pretrained(repo)
    pvtkit.PvtImageProcessor().save_pretrained(repo)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return repo, x, model(x).logits


def test_hub_cache_layout_offline(tmp_path, monkeypatch):
    """A cache laid out as huggingface_hub lays it out is found with HF_HUB_OFFLINE and no network."""
    repo, x, expected = make_repo(tmp_path)
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "OpenGVLab/pvt_v2_tiny", repo)
    model = PvtV2ForImageClassification.from_pretrained("OpenGVLab/pvt_v2_tiny", cache_dir=cache, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected)
    assert (
        type(AutoImageProcessor.from_pretrained("OpenGVLab/pvt_v2_tiny", cache_dir=cache)) is pvtkit.PvtImageProcessor
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"OpenGVLab/pvt_v2_b9: config.json is not in the local cache.*Run "
        r"once with network access",
    ):
        PvtV2ForImageClassification.from_pretrained("OpenGVLab/pvt_v2_b9", cache_dir=cache)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Serves `/{repo}/resolve/{revision}/{file}` from a directory, with the headers huggingface_hub reads."""

    files: dict[str, dict[str, bytes]] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _answer(self, body: bool) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        if repo not in self.files:
            self.send_response(401)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return
        data = self.files[repo].get(filename)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)


def test_hub_download_through_a_local_stand_in_server(tmp_path):
    """The real huggingface_hub download code runs against a server on 127.0.0.1 given as HF_ENDPOINT."""
    repo, x, expected = make_repo(tmp_path)
    _FakeHub.files = {"OpenGVLab/pvt_v2_tiny": {p.name: p.read_bytes() for p in repo.iterdir()}}
    _FakeHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **os.environ,
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_DISABLE_XET": "1",
        }
        script = (
            "import sys, torch, pvtkit; from pvtkit.auto import AutoModelForImageClassification as A; "
            "m = A.from_pretrained(sys.argv[1]); torch.set_grad_enabled(False); "  # the same code path as `expected`
            "torch.save(m(torch.load(sys.argv[2])).logits, sys.argv[3])"
        )
        torch.save(x, tmp_path / "x.pt")
        run = subprocess.run(
            [sys.executable, "-c", script, "OpenGVLab/pvt_v2_tiny", str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
        assert any("model.safetensors" in r for r in _FakeHub.requests)
        missing = subprocess.run(
            [sys.executable, "-m", "pvtkit", "convert", "nobody/nothing", str(tmp_path / "o")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert missing.returncode == 1 and "nobody/nothing: no such model on the Hub" in missing.stderr
    finally:
        server.shutdown()
    # what was downloaded is in the cache, and loads with the network gone
    cached = PvtV2ForImageClassification.from_pretrained(
        "OpenGVLab/pvt_v2_tiny", cache_dir=tmp_path / "hf_home" / "hub", local_files_only=True
    )
    with torch.no_grad():
        assert torch.equal(cached(x).logits, expected)
