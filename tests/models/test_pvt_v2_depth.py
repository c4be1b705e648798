"""PVTv2 + GLPN's decoder and depth head: the decoder and head compute GLPN's (pvtkit's and transformers') on the
same encoder outputs, the encoder computes PvtV2Model's, checkpoints round-trip and an ImageNet classifier starts it,
any size, gradients, the loss; fine-tuned from a PVTv2 classifier by `pvtkit train --task depth`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from safetensors.torch import load_file

import pvtkit
from pvtkit import AutoModelForDepthEstimation, GLPNConfig, GLPNForDepthEstimation, PvtV2Config, PvtV2ForDepthEstimation
from pvtkit.cli import main
from pvtkit.losses import silog_loss
from pvtkit.outputs import BaseModelOutput

from helpers import FIXTURES, assert_close, stereo_depth_dataset

ENCODER = dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4])


def tiny(**overrides) -> PvtV2Config:
    return PvtV2Config(
        **{**ENCODER, "mlp_ratios": [2, 2, 2, 2], "decoder_hidden_size": 16, "max_depth": 8, **overrides}
    )


def stage_maps(batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Random encoder outputs at the sizes PVTv2's stages give for a `height x width` input."""
    g = torch.Generator().manual_seed(height * width + batch)
    sizes, h, w = [], height, width
    for k, s in ((7, 4), (3, 2), (3, 2), (3, 2)):
        h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
        sizes.append((h, w))
    return tuple(torch.randn(batch, c, *hw, generator=g) for c, hw in zip(ENCODER["hidden_sizes"], sizes))


def with_encoder_output(model, maps) -> None:
    """Make `model`'s encoder return `maps` (whatever its input): both models then run their heads on the same
    encoder outputs."""
    out = BaseModelOutput(last_hidden_state=maps[-1], hidden_states=maps, attentions=((),) * len(maps))
    model._encoder().forward = lambda pixel_values, need_weights=False: out


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 64, 96)])
def test_decoder_and_head_equal_glpns_on_the_same_encoder_outputs(tmp_path, shape, train):
    """The same decoder and head weights, the same encoder outputs: the depth and loss of pvtkit's GLPN, and of
    transformers' GLPN decoder and head (at multiples of 32, where transformers' decoder runs), to 1e-6."""
    torch.manual_seed(0)
    ours = PvtV2ForDepthEstimation(tiny())
    glpn = GLPNForDepthEstimation(GLPNConfig(**ENCODER, decoder_hidden_size=16, max_depth=8))
    missing = glpn.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if k.startswith(("decoder.", "head."))}, strict=False
    )
    assert not missing.unexpected_keys and all(k.startswith("glpn.") for k in missing.missing_keys)
    glpn.save_pretrained(tmp_path / "glpn")
    theirs = transformers.GLPNForDepthEstimation.from_pretrained(tmp_path / "glpn")
    for model in (ours, glpn, theirs):
        model.train(train)
    maps = stage_maps(shape[0], *shape[2:])
    labels = torch.rand(shape[0], *shape[2:]) * 8
    labels[0, :7] = 0  # no ground truth there
    with_encoder_output(ours, maps), with_encoder_output(glpn, maps)
    x = torch.zeros(shape)
    a, b = ours(x, labels=labels), glpn(x, labels=labels)
    depth = theirs.head(theirs.decoder(list(maps)))
    assert a.predicted_depth.shape == (shape[0], *shape[2:])
    assert_close(a.predicted_depth, b.predicted_depth, tol=1e-6, what="depth against pvtkit's GLPN")
    assert_close(a.loss, b.loss, tol=1e-6, what="loss against pvtkit's GLPN")
    assert_close(a.predicted_depth, depth, tol=1e-6, what="depth against transformers' GLPN")
    assert_close(a.loss, silog_loss(depth, labels), tol=1e-6, what="loss against transformers' GLPN")


def test_the_encoder_is_pvtv2s(tmp_path):
    """Under `pvt_v2.`, the encoder computes PvtV2Model's hidden states and attentions with its weights."""
    encoder = pvtkit.PvtV2Model(tiny()).eval()
    encoder.save_pretrained(tmp_path / "enc")
    model = PvtV2ForDepthEstimation.from_pretrained(tmp_path / "enc").eval()
    x = torch.randn(2, 3, 75, 53)
    with torch.no_grad():
        a = model(x, output_hidden_states=True, output_attentions=True)
        b = encoder(x, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == len(b.hidden_states) == 4
    for p, q in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(p, q)
    assert [len(s) for s in a.attentions] == ENCODER["depths"]  # PVTv2's: nested per stage
    for s, t in zip(a.attentions, b.attentions):
        for p, q in zip(s, t):
            assert torch.equal(p, q)


def test_round_trip_and_an_imagenet_classifier_starts_it(tmp_path, caplog):
    torch.manual_seed(0)
    model = PvtV2ForDepthEstimation(tiny(max_depth=12.5, decoder_hidden_size=8)).eval()
    model.save_pretrained(tmp_path / "depth")
    saved = json.loads((tmp_path / "depth" / "config.json").read_text())
    assert saved["max_depth"] == 12.5 and saved["decoder_hidden_size"] == 8
    assert saved["architectures"] == ["PvtV2ForDepthEstimation"]
    loaded, info = AutoModelForDepthEstimation.from_pretrained(tmp_path / "depth", output_loading_info=True)
    assert type(loaded) is PvtV2ForDepthEstimation and not any(info.values()), info
    assert loaded.config.max_depth == 12.5 and loaded.head.max_depth == 12.5
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(model(x).predicted_depth, loaded.eval()(x).predicted_depth)

    classifier = pvtkit.PvtV2ForImageClassification(PvtV2Config(**ENCODER, num_labels=10)).eval()
    classifier.save_pretrained(tmp_path / "imagenet")
    assert "max_depth" not in json.loads((tmp_path / "imagenet" / "config.json").read_text())  # no field added
    started = AutoModelForDepthEstimation.from_pretrained(tmp_path / "imagenet")
    assert type(started) is PvtV2ForDepthEstimation
    assert started.config.max_depth == 10 and started.config.decoder_hidden_size == 64  # GLPN's defaults
    fresh = set(started.newly_initialized_weights)
    head = {k for k in started.state_dict() if k.startswith(("decoder.", "head."))}
    assert fresh == head and head
    for name, value in classifier.pvt_v2.state_dict().items():
        assert torch.equal(started.pvt_v2.state_dict()[name], value), name
    processor = pvtkit.auto.default_image_processor(started)
    assert type(processor).__name__ == "GLPNImageProcessor" and processor.size is None


@pytest.mark.parametrize("name", ["timm_pvt_v2_tiny", "original_pvt_v2_tiny"])
def test_timm_and_the_authors_imagenet_weights_start_it(tmp_path, name):
    """A timm or whai362/PVT classifier file (no config.json: inferred) loads its encoder; the decoder and head are
    the only new weights."""
    f = load_file(FIXTURES / f"{name}.safetensors")
    torch.save({k.removeprefix("model."): v for k, v in f.items() if k.startswith("model.")}, tmp_path / "w.pth")
    model = AutoModelForDepthEstimation.from_pretrained(tmp_path / "w.pth")
    classifier = pvtkit.PvtV2ForImageClassification.from_pretrained(tmp_path / "w.pth")
    assert type(model) is PvtV2ForDepthEstimation and model.config.depths == [2, 1, 1, 1]
    assert model.newly_initialized_weights and all(
        k.startswith(("decoder.", "head.")) for k in model.newly_initialized_weights
    )
    for key, value in classifier.pvt_v2.state_dict().items():
        assert torch.equal(model.pvt_v2.state_dict()[key], value), key


@pytest.mark.parametrize("shape", [(1, 3, 69, 101), (3, 3, 33, 47), (2, 3, 64, 64)])
def test_any_size_and_batch_gradients_everywhere_and_the_loss(shape):
    torch.manual_seed(0)
    model = PvtV2ForDepthEstimation(tiny()).train()
    x = torch.randn(shape)
    labels = torch.rand(shape[0], *shape[2:]) * 8 + 0.1
    labels[-1, :3] = 0
    out = model(x, labels=labels)
    assert out.predicted_depth.shape == (shape[0], *shape[2:])
    assert 0 <= out.predicted_depth.min() and out.predicted_depth.max() <= 8
    assert torch.equal(out.loss, silog_loss(out.predicted_depth, labels))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # a key bias shifts every score of a query alike: softmax cancels it, its gradient is zero but for rounding
        assert name.endswith("key.bias") or p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"labels have shape"):
        model(x, labels=labels[..., :-1])


def test_bad_head_fields_are_named():
    with pytest.raises(ValueError, match="decoder_hidden_size must be an even int"):
        PvtV2ForDepthEstimation(tiny(decoder_hidden_size=15))
    with pytest.raises(ValueError, match="max_depth must be a positive number"):
        PvtV2ForDepthEstimation(tiny(max_depth=0))


@pytest.mark.slow
def test_fine_tunes_from_a_pvtv2_classifier_on_stereo_depth(tmp_path, capsys):
    """`pvtkit train --task depth --model <PVTv2 classifier>`: the encoder loads, the decoder and head start fresh,
    the loss falls; the result loads as a PVTv2 depth model and the depth pipeline runs it."""
    data = stereo_depth_dataset(tmp_path / "stereo")
    torch.manual_seed(0)
    start = tmp_path / "imagenet"
    pvtkit.PvtV2ForImageClassification(PvtV2Config(**ENCODER, num_labels=10)).save_pretrained(start)
    out = tmp_path / "run"
    args = ["train", "--task", "depth", "--data", str(data), "--model", str(start), "--output", str(out)]
    args += ["--epochs", "2", "--batch-size", "4", "--image-size", "64", "--lr", "2e-3", "--max-depth", "10"]
    code = main([*args, "--num-workers", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(math.isfinite(h["val_abs_rel"]) for h in history)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "GLPNImageProcessor"  # the task's default: no 224 squeeze
    model = AutoModelForDepthEstimation.from_pretrained(out)
    assert type(model) is PvtV2ForDepthEstimation
    depth = pvtkit.pipeline("depth", model=str(out))(str(data / "val" / "images" / "000.jpg"))
    assert depth["predicted_depth"].shape == (96, 96) and depth["depth"].size == (96, 96)
