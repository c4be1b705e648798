"""GLPN: parity with transformers (same random weights, through the files transformers writes), depth and loss,
gradients, any input size, round trips, bad input."""

from __future__ import annotations

import pytest
import torch
import transformers

import pvtkit
from pvtkit import AutoModelForDepthEstimation, GLPNConfig, GLPNForDepthEstimation, GLPNModel
from pvtkit.models.glpn import VARIANTS

from helpers import assert_close, gradients_by_disk_name

HF = {GLPNModel: transformers.GLPNModel, GLPNForDepthEstimation: transformers.GLPNForDepthEstimation}
TINY = dict(
    depths=[1, 2, 1, 1],
    hidden_sizes=[16, 32, 48, 64],
    num_attention_heads=[1, 2, 3, 4],
    decoder_hidden_size=16,
    drop_path_rate=0.0,
    max_depth=8,
)


def transformers_twin(cls, tmp_path, **fields):
    theirs = HF[cls]._from_config(transformers.GLPNConfig(**fields), attn_implementation="eager").eval()
    folder = tmp_path / f"hf-{cls.__name__}"
    theirs.save_pretrained(folder)
    ours, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    return ours.eval(), theirs, folder


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 64, 96), (3, 3, 128, 32)])
def test_depth_and_loss_match_transformers(tmp_path, shape):
    ours, theirs, _ = transformers_twin(GLPNForDepthEstimation, tmp_path, **TINY)
    x = torch.randn(shape)
    labels = torch.rand(shape[0], *shape[2:]) * 8
    labels[0, :5] = 0  # pixels without ground truth
    with torch.no_grad():
        a = ours(x, labels=labels, output_hidden_states=True, output_attentions=True)
        b = theirs(x, labels=labels, output_hidden_states=True, output_attentions=True)
    assert a.predicted_depth.shape == (shape[0], *shape[2:])
    assert_close(a.predicted_depth, b.predicted_depth, what="depth")
    assert_close(a.loss, b.loss, what="loss")
    for name in ("hidden_states", "attentions"):
        assert len(a[name]) == len(b[name])
        for i, (p, q) in enumerate(zip(a[name], b[name])):
            assert_close(p, q, what=f"{name}[{i}]")


def test_encoder_matches_transformers(tmp_path):
    ours, theirs, _ = transformers_twin(GLPNModel, tmp_path, **TINY)
    x = torch.randn(2, 3, 75, 53)  # the encoder takes any size in both
    with torch.no_grad():
        a, b = ours(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
    assert_close(a.last_hidden_state, b.last_hidden_state)
    for p, q in zip(a.hidden_states, b.hidden_states):
        assert_close(p, q)


def test_any_input_size_where_transformers_needs_multiples_of_32(tmp_path):
    """transformers' decoder upsamples by exactly 2 and fails unless both sides are multiples of 32; ours aligns
    each stage to the next one's size, so any size gives a depth map of that size (and equals transformers where
    transformers runs, above)."""
    ours, theirs, _ = transformers_twin(GLPNForDepthEstimation, tmp_path, **TINY)
    x = torch.randn(1, 3, 69, 101)
    with pytest.raises(RuntimeError):
        theirs(x)
    with torch.no_grad():
        depth = ours(x).predicted_depth
    assert depth.shape == (1, 69, 101) and torch.isfinite(depth).all()
    assert 0 <= depth.min() and depth.max() <= 8.0  # sigmoid * max_depth
    # Cropping an image to the multiple of 32 below it and running it is what transformers would do there.
    with torch.no_grad():
        assert_close(ours(x[..., :64, :96]).predicted_depth, theirs(x[..., :64, :96]).predicted_depth)


def test_train_mode_gradients_match_transformers(tmp_path):
    ours, theirs, _ = transformers_twin(GLPNForDepthEstimation, tmp_path, **TINY)
    ours.train(), theirs.train()
    x, labels = torch.randn(2, 3, 64, 64), torch.rand(2, 64, 64) * 8 + 0.1
    a, b = ours(x, labels=labels), theirs(x, labels=labels)
    assert_close(a.loss, b.loss, what="loss")
    a.loss.backward(), b.loss.backward()
    expected = gradients_by_disk_name(theirs, tmp_path / "grads")
    scale = max(g.abs().max().item() for g in expected.values())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        if expected[name].abs().max() <= 1e-6 * scale:  # zero in exact arithmetic (a key bias): rounding noise
            assert p.grad.abs().max() <= 1e-6 * scale, name
            continue
        assert_close(p.grad, expected[name], floor=1e-6 * scale, what=f"gradient of {name}")


def test_published_variants_build_and_match_transformers_once(tmp_path):
    """GLPN-KITTI's architecture (MiT-B4, max depth 80), once, at a small non-square size."""
    fields = {
        k: v
        for k, v in GLPNConfig.from_variant("kitti").to_dict().items()
        if k not in ("model_type", "architectures", "transformers_version")
    }
    assert fields["max_depth"] == 80 and fields["depths"] == [3, 8, 27, 3]
    ours, theirs, _ = transformers_twin(GLPNForDepthEstimation, tmp_path, **fields)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert_close(ours(x).predicted_depth, theirs(x).predicted_depth)
    assert set(VARIANTS) == {"kitti", "nyu"} and GLPNConfig.from_variant("vinvino02/glpn-nyu").max_depth == 10


@pytest.mark.parametrize("cls", list(HF))
def test_checkpoints_written_by_pvtkit_load_in_transformers(tmp_path, cls):
    ours = cls(GLPNConfig(**TINY)).eval()
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = HF[cls].from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(x)[0], theirs.eval()(x)[0], what=cls.__name__)
    assert type(pvtkit.AutoModel.from_pretrained(tmp_path / "ours")) is GLPNModel
    if cls is GLPNForDepthEstimation:
        assert type(AutoModelForDepthEstimation.from_pretrained(tmp_path / "ours")) is cls


def test_bad_input_is_named():
    model = GLPNForDepthEstimation(GLPNConfig(**TINY)).eval()
    with pytest.raises(ValueError, match=r"labels have shape \(1, 32, 32\); expected .* \(1, 64, 64\)"):
        model(torch.randn(1, 3, 64, 64), labels=torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match="smaller than the first stage's stride 4"):
        model(torch.randn(1, 3, 64, 2))
    with pytest.raises(ValueError, match="decoder_hidden_size must be an even number"):
        GLPNConfig(decoder_hidden_size=15)
    with pytest.raises(ValueError, match="max_depth must be positive"):
        GLPNConfig(max_depth=0)
    with pytest.raises(ValueError, match="AutoModelForSemanticSegmentation has no 'glpn' model"):
        pvtkit.AutoModelForSemanticSegmentation.from_config(GLPNConfig(**TINY))
