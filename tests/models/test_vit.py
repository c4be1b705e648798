"""ViT: parity with transformers (same weights), checkpoints both ways, config round trips, gradients, bad input.

The many cases run on a tiny random config (hidden 32, 2 layers, 4 heads, 32x32 images, 8x8 patches); the variant
table is checked for shapes against transformers on the meta device, and ViT-B/16 is built and run once.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from safetensors import safe_open

from pvtkit.models.vit.modeling import (
    VARIANTS,
    ViTConfig,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
    resize_position_embeddings,
)

TOL = 1e-5  # fp32: max|a - b| / max|b|
HEADS = {
    ViTModel: transformers.ViTModel,
    ViTForImageClassification: transformers.ViTForImageClassification,
    ViTForMaskedImageModeling: transformers.ViTForMaskedImageModeling,
}
# transformers 5 keeps the legacy names on disk (which pvtkit's modules carry) and renames them in memory.
_HF_MEMORY_NAMES = [
    (r"encoder\.layer\.", "layers."),
    (r"attention\.attention\.(query|key|value)", lambda m: f"attention.{m.group(1)[0]}_proj"),
    (r"attention\.output\.dense", "attention.o_proj"),
    (r"intermediate\.dense", "mlp.fc1"),
    (r"output\.dense", "mlp.fc2"),
]


def hf_name(key: str) -> str:
    for pattern, repl in _HF_MEMORY_NAMES:
        key = re.sub(pattern, repl, key)
    return key


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def tiny(**overrides) -> ViTConfig:
    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        encoder_stride=8,
        num_labels=3,
    )
    return ViTConfig(**{**fields, **overrides})


def hf_twin(model: torch.nn.Module, attn: str = "eager") -> torch.nn.Module:
    """The transformers model of the same class, built from our config, holding our weights."""
    config = transformers.ViTConfig(**model.config.to_dict(), attn_implementation=attn)
    twin = HEADS[type(model)](config)
    twin.load_state_dict({hf_name(k): v for k, v in model.state_dict().items()}, strict=True)
    return twin.train(model.training)


def make(cls, **overrides):
    torch.manual_seed(0)
    return cls(tiny(**overrides)).eval()


def mask_for(batch: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(batch, h * w, generator=torch.Generator().manual_seed(1)) > 0.5


def assert_outputs_match(ours, theirs, attentions: bool) -> None:
    names = [k for k in ("last_hidden_state", "pooler_output", "logits", "loss", "reconstruction") if k in theirs]
    assert names, "nothing compared"
    for name in names:
        assert rel(ours[name], theirs[name]) <= TOL, name
    assert len(ours.hidden_states) == len(theirs.hidden_states) == ours_layers(ours) + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        assert rel(a, b) <= TOL
    if attentions:
        assert len(ours.attentions) == len(theirs.attentions) == ours_layers(ours)
        for a, b in zip(ours.attentions, theirs.attentions):
            assert a.shape == b.shape and rel(a, b) <= TOL


def ours_layers(out) -> int:
    return len(out.hidden_states) - 1


# ---- config --------------------------------------------------------------------------------------------------


def test_config_defaults_match_transformers():
    ours = ViTConfig().to_dict()
    theirs = json.loads(transformers.ViTConfig().to_json_string())
    arch = [k for k in theirs if k in ours and k not in ("transformers_version", "dtype", "architectures")]
    assert {"hidden_size", "pooler_output_size", "encoder_stride", "layer_norm_eps", "qkv_bias"} <= set(arch)
    assert {k: ours[k] for k in arch} == {k: theirs[k] for k in arch}
    assert ours["interpolate_pos_encoding"] is False and "attn_implementation" not in ours


def test_config_json_round_trip_both_ways(tmp_path):
    ours = tiny(
        num_labels=None,
        id2label={0: "cat", 1: "dog"},
        problem_type="single_label_classification",
        interpolate_pos_encoding=True,
        attn_implementation="eager",
        layer_norm_eps=1e-6,
    )
    ours.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["model_type"] == "vit" and "attn_implementation" not in saved
    theirs = transformers.ViTConfig.from_pretrained(tmp_path / "a")
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "patch_size",
        "encoder_stride",
        "layer_norm_eps",
        "problem_type",
        "pooler_output_size",
        "num_labels",
    ):
        assert getattr(theirs, key) == getattr(ours, key), key
    assert theirs.id2label == ours.id2label and theirs.interpolate_pos_encoding is True  # unknown key kept, ignored
    theirs.save_pretrained(tmp_path / "b")
    back = ViTConfig.from_pretrained(tmp_path / "b")
    assert back.to_dict() == ViTConfig.from_pretrained(tmp_path / "a").to_dict()
    assert back.attn_implementation == "sdpa"  # a run-time choice, not part of the file


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_shapes_match_transformers(name):
    config = ViTConfig.from_variant(name)
    assert f"patch{config.patch_size}_{config.image_size}" in name and config.encoder_stride == config.patch_size
    with torch.device("meta"):
        ours = ViTForImageClassification(config)
        theirs = transformers.ViTForImageClassification(transformers.ViTConfig(**config.to_dict()))
    assert {hf_name(k): v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_from_variant_overrides_and_unknown_names():
    assert ViTConfig.from_variant("ViT-Large-Patch16-384", num_labels=10).num_labels == 10
    with pytest.raises(ValueError, match="base_patch16_224.*huge_patch14_224"):
        ViTConfig.from_variant("gigantic_patch16_224")


# ---- parity with transformers --------------------------------------------------------------------------------

SIZES = {"nominal": (32, 32), "square": (48, 48), "non_square": (32, 56)}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("cls", [ViTModel, ViTForImageClassification, ViTForMaskedImageModeling])
def test_parity_with_transformers(cls, attn, size):
    if cls is ViTForMaskedImageModeling and size == "non_square":
        size = "square"  # transformers folds the tokens into a square grid; pvtkit's non-square MIM is tested below
    model = make(cls, attn_implementation=attn)
    twin = hf_twin(model, attn)
    x = torch.randn(2, 3, *SIZES[size])
    kwargs = dict(interpolate_pos_encoding=size != "nominal", output_hidden_states=True)
    if cls is ViTForMaskedImageModeling and size == "nominal":
        kwargs["bool_masked_pos"] = mask_for(2, 4, 4)
    if cls is ViTForImageClassification:
        kwargs["labels"] = torch.tensor([0, 2])
    with torch.no_grad():
        ours = model(x, output_attentions=attn == "eager", **kwargs)
        theirs = twin(x, output_attentions=attn == "eager", **kwargs)
    assert_outputs_match(ours, theirs, attentions=attn == "eager")


def test_non_square_nominal_image_size_matches_transformers():
    model = make(ViTModel, image_size=[24, 40])
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        ours, theirs = model(x, output_hidden_states=True), hf_twin(model)(x, output_hidden_states=True)
    assert_outputs_match(ours, theirs, attentions=False)


@pytest.mark.parametrize("problem_type", ["regression", "single_label_classification", "multi_label_classification"])
def test_classification_losses_match(problem_type):
    num_labels = 1 if problem_type == "regression" else 3
    model = make(ViTForImageClassification, num_labels=num_labels, problem_type=problem_type)
    twin = hf_twin(model, "sdpa")
    labels = {
        "regression": torch.randn(2),
        "single_label_classification": torch.tensor([1, 2]),
        "multi_label_classification": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
    }[problem_type]
    x = torch.randn(2, 3, 32, 32)
    ours, theirs = model(x, labels=labels), twin(x, labels=labels)
    assert rel(ours.logits, theirs.logits) <= TOL and rel(ours.loss, theirs.loss) <= TOL


def test_train_mode_gradients_match_transformers():
    model = make(ViTForMaskedImageModeling).train()
    twin = hf_twin(model, "sdpa")
    x, mask = torch.randn(2, 3, 32, 32), mask_for(2, 4, 4)
    model(x, bool_masked_pos=mask).loss.backward()
    twin(x, bool_masked_pos=mask).loss.backward()
    theirs = {name: p.grad for name, p in twin.named_parameters()}
    largest = max(g.abs().max().item() for g in theirs.values())
    for name, p in model.named_parameters():
        if name.endswith("key.bias"):  # zero in exact arithmetic (softmax ignores a shift): only rounding is left
            assert (p.grad - theirs[hf_name(name)]).abs().max() <= 1e-6 * largest, name
        else:
            assert rel(p.grad, theirs[hf_name(name)]) <= TOL, name


def test_eager_and_sdpa_agree():
    sdpa, eager = make(ViTModel), make(ViTModel, attn_implementation="eager")
    x = torch.randn(2, 3, 32, 32)
    a, b = sdpa(x), eager(x)
    assert rel(a.last_hidden_state, b.last_hidden_state) <= TOL and rel(a.pooler_output, b.pooler_output) <= TOL
    weights = sdpa(x, output_attentions=True).attentions  # weights asked for: eager is used automatically
    assert len(weights) == 2 and weights[0].shape == (2, 4, 17, 17)
    assert torch.allclose(weights[0].sum(-1), torch.ones(2, 4, 17))


# ---- checkpoints ---------------------------------------------------------------------------------------------


def _keys(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("cls", [ViTModel, ViTForImageClassification, ViTForMaskedImageModeling])
def test_checkpoints_load_both_ways(cls, tmp_path):
    model, x = make(cls), torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path / "ours")
    theirs = HEADS[cls].from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert rel(model(x)[0], theirs(x)[0]) <= TOL
        torch.manual_seed(1)
        fresh = HEADS[cls](theirs.config).eval()
        fresh.save_pretrained(tmp_path / "theirs")
        assert _keys(tmp_path / "theirs") == _keys(tmp_path / "ours")  # the same names on disk
        back = cls.from_pretrained(tmp_path / "theirs", attn_implementation="eager")
        assert back.config.attn_implementation == "eager"
        assert rel(back(x)[0], fresh(x)[0]) <= TOL


def test_encoder_checkpoint_into_classifier_gets_fresh_head(tmp_path):
    make(ViTModel).save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path, num_labels=5, strict=False)
    assert model.classifier.out_features == 5


# ---- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("cls", [ViTModel, ViTForImageClassification, ViTForMaskedImageModeling])
def test_every_parameter_gets_a_gradient(cls, checkpointing):
    model = make(cls).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
    x = torch.randn(2, 3, 32, 32)
    if cls is ViTModel:
        out = model(x)
        loss = out.pooler_output.sum() + out.last_hidden_state.square().mean()
    elif cls is ViTForImageClassification:
        loss = model(x, labels=torch.tensor([0, 1])).loss
    else:
        loss = model(x, bool_masked_pos=mask_for(2, 4, 4)).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # The key bias shifts every score of a query equally, which softmax ignores: its gradient is zero by design.
    dead = [n for n, p in model.named_parameters() if not n.endswith("key.bias") and not p.grad.abs().sum() > 0]
    assert not dead


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = make(ViTForImageClassification).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(torch.ones(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert rel(grads[1][name], g) <= TOL, name


def test_init():
    config = tiny(initializer_range=0.05)
    model = ViTForMaskedImageModeling(config)
    emb = model.vit.embeddings
    assert torch.count_nonzero(emb.mask_token) == 0
    for p in (emb.position_embeddings, model.vit.encoder.layer[0].attention.attention.query.weight):
        assert 0.04 < p.std().item() < 0.06
    assert torch.count_nonzero(model.vit.encoder.layer[0].output.dense.bias) == 0


# ---- interpolation -------------------------------------------------------------------------------------------


def test_interpolation_from_config_equals_forward_flag():
    model = make(ViTForImageClassification)
    x = torch.randn(1, 3, 40, 24)
    expected = model(x, interpolate_pos_encoding=True).logits
    model.config.interpolate_pos_encoding = True
    assert torch.equal(model(x).logits, expected)


def test_non_square_masked_image_modeling():
    model = make(ViTForMaskedImageModeling, interpolate_pos_encoding=True)
    x, mask = torch.randn(2, 3, 24, 40), mask_for(2, 3, 5)
    out = model(x, bool_masked_pos=mask)
    assert out.reconstruction.shape == x.shape and torch.isfinite(out.loss)
    patches = mask.reshape(2, 1, 3, 5).repeat_interleave(8, 2).repeat_interleave(8, 3).float()
    manual = ((x - out.reconstruction).abs() * patches).sum() / (patches.sum() + 1e-5) / 3
    assert rel(out.loss, manual) <= TOL


def test_bf16_autocast_interpolation_stays_finite_and_close():
    model = make(ViTForImageClassification)
    x = torch.randn(2, 3, 48, 40)
    reference = model(x, interpolate_pos_encoding=True).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pos = resize_position_embeddings(model.vit.embeddings.position_embeddings, (4, 4), (6, 5))
        low = model(x, interpolate_pos_encoding=True).logits
    assert pos.dtype == torch.float32  # resampled in fp32, cast back to the parameter's dtype
    exact = resize_position_embeddings(model.vit.embeddings.position_embeddings, (4, 4), (6, 5))
    assert torch.equal(pos, exact)
    assert torch.isfinite(low).all() and rel(low, reference) < 0.05
    bf16 = resize_position_embeddings(model.vit.embeddings.position_embeddings.bfloat16(), (4, 4), (6, 5))
    assert bf16.dtype == torch.bfloat16 and rel(bf16, exact) < 1e-2


# ---- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(hidden_size=30), "hidden_size 30 is not divisible by num_attention_heads 4"),
        (dict(image_size=36), "patch_size 8 must divide image_size 36"),
        (dict(attn_implementation="flash"), "attn_implementation must be one of"),
        (dict(hidden_act="nope"), "unknown hidden_act"),
    ],
)
def test_bad_configs(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny(**fields)


def test_masked_image_modeling_needs_encoder_stride_equal_to_patch_size():
    with pytest.raises(ValueError, match=r"encoder_stride \(16\) must equal patch_size \(8\)"):
        ViTForMaskedImageModeling(tiny(encoder_stride=16))


def test_bad_inputs():
    model, mim = make(ViTModel), make(ViTForMaskedImageModeling)
    with pytest.raises(ValueError, match=r"shape \(batch, 3, height, width\), got \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(48\*32\) doesn't match model \(32\*32\).*interpolate_pos_encoding"):
        model(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"\(36\*32\) is not a multiple of the patch size \(8\*8\)"):
        model(torch.randn(1, 3, 36, 32), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"\(batch, num_patches\) = \(2, 16\), got \(2, 9\)"):
        mim(torch.randn(2, 3, 32, 32), bool_masked_pos=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="use_mask_token=True"):
        model(torch.randn(2, 3, 32, 32), bool_masked_pos=mask_for(2, 4, 4))


# ---- the real size -------------------------------------------------------------------------------------------


def test_vit_base_patch16_224_runs():
    config = ViTConfig.from_variant("base_patch16_224")
    with torch.device("meta"):
        reference = transformers.ViTForImageClassification(transformers.ViTConfig(**config.to_dict()))
    model = ViTForImageClassification(config).eval()
    assert model.num_parameters() == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224)).logits
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
