"""PVTv2: parity with transformers (same random weights), the variant table, save/load both ways, bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

import pvtkit
from pvtkit import PvtV2Backbone, PvtV2Config, PvtV2ForImageClassification, PvtV2Model
from pvtkit.models.pvt_v2 import VARIANTS

from helpers import assert_close, rel_err

# Parameter counts (millions, 1000-class head) published in the PVTv2 paper's Table 1 / the seed's model table.
PUBLISHED_PARAMS_M = {"b0": 3.7, "b1": 14.0, "b2": 25.4, "b2_linear": 22.6, "b3": 45.2, "b4": 62.6, "b5": 82.0}

HF_CLASSES = {
    PvtV2Model: transformers.PvtV2Model,
    PvtV2ForImageClassification: transformers.PvtV2ForImageClassification,
    PvtV2Backbone: transformers.PvtV2Backbone,
}


def small_config(**overrides) -> PvtV2Config:
    """A tiny 4-stage PVTv2 that still exercises every code path (SR ratios 8..1, several heads)."""
    fields = dict(
        depths=(1, 2, 1, 1),
        hidden_sizes=(16, 24, 40, 48),
        num_attention_heads=(1, 2, 5, 4),
        mlp_ratios=(2, 2, 2, 2),
        num_labels=5,
    )
    fields.update(overrides)
    return PvtV2Config(**fields)


def pair(cls, config: PvtV2Config):
    """The pvtkit model and transformers' twin holding exactly the same weights, both in eval mode."""
    ours = cls(config).eval()
    theirs = HF_CLASSES[cls](transformers.PvtV2Config.from_dict(config.to_dict())).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names, same shapes: no conversion
    return ours, theirs


def compare_encoder_outputs(a, b, attentions: bool = True) -> None:
    assert len(a.hidden_states) == len(b.hidden_states)
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        assert_close(x, y, what=f"hidden state {i}")
    if attentions:
        assert len(a.attentions) == len(b.attentions)
        for s, (xs, ys) in enumerate(zip(a.attentions, b.attentions)):
            assert len(xs) == len(ys)
            for j, (x, y) in enumerate(zip(xs, ys)):
                assert_close(x, y, what=f"attention stage {s} block {j}")


# ---- the variant table --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_parameter_count_matches_published_table(name):
    with torch.device("meta"):  # shapes only: no memory, no init
        model = PvtV2ForImageClassification(PvtV2Config.from_variant(name))
    assert round(model.num_parameters() / 1e6, 1) == PUBLISHED_PARAMS_M[name]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_matches_transformers_at_224(name):
    ours, theirs = pair(PvtV2ForImageClassification, PvtV2Config.from_variant(name))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a = ours(x, output_hidden_states=True, output_attentions=True)
        b = theirs(x, output_hidden_states=True, output_attentions=True)
    assert a.logits.shape == (1, 1000)
    assert_close(a.logits, b.logits, what="logits")
    compare_encoder_outputs(a, b)


@pytest.mark.parametrize("name", ["b0", "b2_linear"])
def test_real_variants_match_transformers_at_odd_sizes_as_backbones(name):
    config = PvtV2Config.from_variant(name, out_indices=[0, 1, 2, 3])
    ours, theirs = pair(PvtV2Backbone, config)
    x = torch.randn(2, 3, 231, 173)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    for i, (p, q) in enumerate(zip(a.feature_maps, b.feature_maps)):
        assert_close(p, q, what=f"{name} feature map {i}")
    assert [m.shape[-2:] for m in a.feature_maps] == [(58, 44), (29, 22), (15, 11), (8, 6)]


def test_variant_names_and_overrides():
    assert PvtV2Config.from_variant("B2-Linear").linear_attention
    assert PvtV2Config.from_variant("pvt_v2_b2_li").linear_attention
    config = PvtV2Config.from_variant("b1", num_labels=10, drop_path_rate=0.1)
    assert config.num_labels == 10 and config.drop_path_rate == 0.1 and config.hidden_sizes == [64, 128, 320, 512]
    with pytest.raises(ValueError, match="unknown PVTv2 variant 'b9'.*b0, b1, b2"):
        PvtV2Config.from_variant("b9")


# ---- parity at odd sizes, batches, both attention kinds, train and eval ------------------------------------------


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 57, 83), (2, 3, 130, 35)])
def test_classifier_parity_odd_sizes(linear, shape):
    ours, theirs = pair(PvtV2ForImageClassification, small_config(linear_attention=linear))
    x = torch.randn(shape)
    with torch.no_grad():
        a = ours(x, output_hidden_states=True, output_attentions=True)
        b = theirs(x, output_hidden_states=True, output_attentions=True)
    assert_close(a.logits, b.logits, what="logits")
    compare_encoder_outputs(a, b)
    # the SDPA path (no weights asked for) gives the same numbers as the explicit one
    with torch.no_grad():
        assert_close(ours(x).logits, b.logits, what="SDPA logits")


def test_model_last_hidden_state_is_nchw_and_matches():
    ours, theirs = pair(PvtV2Model, small_config())
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.last_hidden_state.shape == (2, 48, 3, 5)
    assert_close(a.last_hidden_state, b.last_hidden_state, what="last_hidden_state")
    assert a.hidden_states is None and a.attentions is None
    tuple_out = ours(x, return_dict=False)
    assert isinstance(tuple_out, tuple) and len(tuple_out) == 1
    assert_close(tuple_out[0], b.last_hidden_state)


@pytest.mark.parametrize(
    "num_labels,labels,problem",
    [
        (5, torch.tensor([0, 4, 2]), "single_label_classification"),
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]), "multi_label_classification"),
        (4, torch.randn(3, 4), "regression"),  # explicit problem_type with several outputs
    ],
)
def test_losses_and_gradients_match_transformers(num_labels, labels, problem):
    explicit = problem if num_labels == 4 else None
    config = small_config(num_labels=num_labels, problem_type=explicit, linear_attention=num_labels == 3)
    ours, theirs = pair(PvtV2ForImageClassification, config)
    ours.train(), theirs.train()
    x = torch.randn(3, 3, 72, 56)
    a, b = ours(x, labels=labels), theirs(x, labels=labels)
    assert ours.config.problem_type == problem
    assert_close(a.loss, b.loss, what="loss")
    a.loss.backward(), b.loss.backward()
    theirs_params = dict(theirs.named_parameters())
    scale = max(p.grad.abs().max().item() for p in theirs.parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        expected = theirs_params[name].grad
        if name.endswith("attention.key.bias"):  # softmax cancels a key bias: both gradients are rounding noise
            assert max(p.grad.abs().max(), expected.abs().max()) <= 1e-6 * scale
            continue
        assert_close(p.grad, expected, floor=1e-6 * scale, what=f"gradient of {name}")


def test_backbone_parity_and_metadata():
    config = small_config(out_features=["stage1", "stage2", "stage3", "stage4"])
    ours, theirs = pair(PvtV2Backbone, config)
    assert ours.channels == [16, 24, 40, 48] == list(theirs.channels)
    assert ours.strides == [4, 8, 16, 32]
    x = torch.randn(2, 3, 100, 77)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert len(a.feature_maps) == 4
    for i, (p, q) in enumerate(zip(a.feature_maps, b.feature_maps)):
        assert_close(p, q, what=f"feature map {i}")
    assert a.feature_maps[0].shape == (2, 16, 25, 20)  # stride 4 included


@pytest.mark.parametrize(
    "kwargs,features,indices",
    [
        ({}, ["stage4"], [3]),
        ({"out_indices": [0, 2]}, ["stage1", "stage3"], [0, 2]),
        ({"out_features": ["stage2", "stage4"]}, ["stage2", "stage4"], [1, 3]),
        ({"out_indices": [-1]}, ["stage4"], [3]),
    ],
)
def test_backbone_stage_selection_matches_transformers(kwargs, features, indices):
    config = small_config(**kwargs)
    reference = transformers.PvtV2Config(**{k: v for k, v in config.to_dict().items() if k not in kwargs}, **kwargs)
    assert config.out_features == features == list(reference.out_features)
    assert config.out_indices == indices == [i % 4 for i in reference.out_indices]  # we normalise -1 to 3
    backbone = PvtV2Backbone(config).eval()
    maps = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    assert [m.shape[1] for m in maps] == backbone.channels


def test_backbone_bad_stage_names():
    with pytest.raises(ValueError, match="stage7"):
        small_config(out_features=["stage7"])
    with pytest.raises(ValueError, match="out of range"):
        small_config(out_indices=[4])
    with pytest.raises(ValueError, match="disagree"):
        small_config(out_features=["stage1"], out_indices=[2])


# ---- training features ------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_same_gradients_to_every_parameter():
    config = small_config()
    plain = PvtV2ForImageClassification(config).train()
    ckpt = PvtV2ForImageClassification(config).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.gradient_checkpointing_enable()
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    plain(x, labels=y).loss.backward()
    ckpt(x, labels=y).loss.backward()
    grads = dict(plain.named_parameters())
    scale = max(p.grad.abs().max().item() for p in plain.parameters())
    for name, p in ckpt.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        if name.endswith("attention.key.bias"):  # softmax cancels a key bias: its gradient is rounding noise
            assert p.grad.abs().max() <= 1e-6 * scale
            continue
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"
        assert_close(p.grad, grads[name].grad, floor=1e-6 * scale, what=f"checkpointed gradient of {name}")


def test_drop_path_and_dropout_are_active_only_in_training():
    config = small_config(drop_path_rate=0.5, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    model = PvtV2ForImageClassification(config)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    assert rel_err(model(x).logits, model(x).logits) > 1e-3
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
    drop_paths = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.pvt_v2.encoder.layers for b in s.blocks]
    assert drop_paths[0] == 0.0
    assert drop_paths[-1] == pytest.approx(0.5) and drop_paths == sorted(drop_paths)


# ---- save / load, both ways -------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe", [True, False])
def test_checkpoints_move_both_ways_between_pvtkit_and_transformers(tmp_path, safe):
    config = small_config(linear_attention=safe, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fish"})
    ours = PvtV2ForImageClassification(config).eval()
    x = torch.randn(2, 3, 64, 80)
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe)
    weights = "model.safetensors" if safe else "pytorch_model.bin"
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(["config.json", weights])
    theirs = transformers.PvtV2ForImageClassification.from_pretrained(tmp_path / "ours").eval()
    assert theirs.config.id2label == {0: "cat", 1: "dog", 2: "fish"}
    with torch.no_grad():
        expected = ours(x).logits
        assert_close(theirs(x).logits, expected, what="transformers loading pvtkit's save")
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=safe)
    back = PvtV2ForImageClassification.from_pretrained(tmp_path / "theirs")
    assert back.config.id2label == config.id2label and back.config.linear_attention == safe
    with torch.no_grad():
        assert_close(back(x).logits, expected, what="pvtkit loading transformers' save")
    assert not back.training


def test_config_json_round_trips_with_transformers(tmp_path):
    config = small_config(out_indices=[1, 3], problem_type="multi_label_classification", layer_norm_eps=1e-5)
    config.some_future_field = {"kept": True}  # keys pvtkit does not know survive
    config.save_pretrained(tmp_path)
    reference = transformers.PvtV2Config.from_pretrained(tmp_path)
    for key in (
        "depths",
        "hidden_sizes",
        "num_attention_heads",
        "sr_ratios",
        "mlp_ratios",
        "out_features",
        "out_indices",
        "layer_norm_eps",
        "problem_type",
        "linear_attention",
        "id2label",
    ):
        assert list_or_value(getattr(reference, key)) == list_or_value(getattr(config, key)), key
    reference.save_pretrained(tmp_path / "hf")
    back = PvtV2Config.from_pretrained(tmp_path / "hf")
    assert back.to_dict() | {"dtype": None} == config.to_dict() | {"dtype": None, "image_size": [224, 224]}
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "pvt_v2"


def list_or_value(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def test_load_dtype_device_and_auto(tmp_path):
    model = PvtV2Model(small_config())
    model.save_pretrained(tmp_path)
    assert PvtV2Model.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert PvtV2Model.from_pretrained(tmp_path, dtype="float16", device="cpu").dtype == torch.float16
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert PvtV2Model.from_pretrained(tmp_path / "bf16", torch_dtype="auto").dtype == torch.bfloat16
    assert PvtV2Model.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16  # as stored
    with pytest.raises(ValueError, match="unknown dtype 'float7'"):
        PvtV2Model.from_pretrained(tmp_path, torch_dtype="float7")


def test_single_weights_file_and_mismatches_are_named(tmp_path, caplog):
    config = small_config()
    model = PvtV2ForImageClassification(config)
    model.save_pretrained(tmp_path)
    # a new head size: the encoder is kept, the head is new, and the user is told
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        ten = PvtV2ForImageClassification.from_pretrained(tmp_path, num_labels=10)
    assert ten.classifier.out_features == 10 and "classifier.weight" in caplog.text
    assert torch.equal(
        ten.pvt_v2.encoder.layers[0].blocks[0].attention.query.weight,
        model.pvt_v2.encoder.layers[0].blocks[0].attention.query.weight,
    )
    # a config that disagrees with the weights: every bad key is named
    other = tmp_path / "other"
    PvtV2ForImageClassification(
        small_config(hidden_sizes=(16, 24, 40, 64), num_attention_heads=(1, 2, 5, 8))
    ).save_pretrained(other)
    (other / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(pvtkit.LoadingError, match=r"encoder\.layers\.3\.blocks\.0\.attention\.query\.weight"):
        PvtV2ForImageClassification.from_pretrained(other)
    loaded = PvtV2ForImageClassification.from_pretrained(other, ignore_mismatched_sizes=True)
    assert loaded.classifier.in_features == 48
    # a weights file alone, with the config passed in
    alone = PvtV2ForImageClassification.from_pretrained(tmp_path / "model.safetensors", config=config)
    assert torch.equal(alone.classifier.weight, model.classifier.weight)


def test_missing_and_unexpected_keys_are_reported_and_strict_makes_them_errors(tmp_path, caplog):
    """transformers' semantics: a weight the checkpoint lacks is initialised and named, one the model does not use
    is skipped and named; `strict=True` makes either an error that names every key."""
    from safetensors.torch import save_file

    model = PvtV2Model(small_config())
    model.config.save_pretrained(tmp_path)
    state = dict(model.state_dict())
    state.pop("encoder.layers.1.blocks.0.mlp.dense1.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        loaded, info = PvtV2Model.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"encoder.layers.1.blocks.0.mlp.dense1.bias"}
    assert info["unexpected_keys"] == {"encoder.extra.weight"} and info["mismatched_keys"] == set()
    assert "encoder.layers.1.blocks.0.mlp.dense1.bias" in caplog.text and "encoder.extra.weight" in caplog.text
    assert torch.equal(
        loaded.encoder.layers[0].blocks[0].attention.query.weight,
        model.encoder.layers[0].blocks[0].attention.query.weight,
    )
    with pytest.raises(pvtkit.LoadingError) as e:
        PvtV2Model.from_pretrained(tmp_path, strict=True)
    assert "encoder.layers.1.blocks.0.mlp.dense1.bias" in str(e.value) and "encoder.extra.weight" in str(e.value)


def test_encoder_and_task_checkpoints_load_across_model_kinds(tmp_path, caplog):
    classifier = PvtV2ForImageClassification(small_config()).eval()
    classifier.save_pretrained(tmp_path / "cls")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.pvt_v2(x).last_hidden_state
        for cls in (PvtV2Model, PvtV2Backbone):  # the head is dropped, the encoder loads
            loaded = cls.from_pretrained(tmp_path / "cls")
            out = loaded(x)
            got = out.last_hidden_state if cls is PvtV2Model else out.feature_maps[-1]
            assert torch.equal(got, expected)
    encoder = PvtV2Model(small_config())
    encoder.save_pretrained(tmp_path / "enc")
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        fresh = PvtV2ForImageClassification.from_pretrained(tmp_path / "enc")
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    assert torch.equal(fresh.pvt_v2.encoder.layers[2].layer_norm.weight, encoder.encoder.layers[2].layer_norm.weight)


def test_save_killed_half_way_leaves_previous_checkpoint_loadable(tmp_path):
    """A process killed (os._exit) while writing the weights must leave the old directory as it was."""
    target = tmp_path / "model"
    first = PvtV2ForImageClassification(small_config()).eval()
    first.save_pretrained(target)
    (target / "preprocessor_config.json").write_text("{}")
    script = textwrap.dedent(f"""
        import os, safetensors.torch, pvtkit
        def dying_save(state, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"partial")
            os._exit(9)
        safetensors.torch.save_file = dying_save
        model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config.from_variant("b0", num_labels=3))
        model.save_pretrained({str(target)!r})
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    again = PvtV2ForImageClassification.from_pretrained(target)
    assert torch.equal(again.classifier.weight, first.classifier.weight)
    assert (target / "preprocessor_config.json").exists()
    # and an ordinary re-save over it works, keeps unrelated files, and drops a stale weights format
    first.save_pretrained(target, safe_serialization=False)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "preprocessor_config.json", "pytorch_model.bin"]


def test_missing_paths_and_corrupt_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory or file"):
        PvtV2Model.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        PvtV2Model.from_pretrained(tmp_path / "empty")
    PvtV2Model(small_config()).save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read weights from .*model.safetensors"):
        PvtV2Model.from_pretrained(tmp_path / "bad")
    PvtV2Model(small_config()).save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        PvtV2Model.from_pretrained(tmp_path / "bad")


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"hidden_sizes": (16, 24, 40, 50)}, "stage 4 hidden size 50 is not divisible by 4 heads"),
        ({"depths": (1, 1, 1)}, "depths has 3"),
        ({"num_encoder_blocks": 3}, "must have 3 entries"),
        ({"hidden_act": "nope"}, "unknown hidden_act 'nope'"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"problem_type": "ranking"}, "problem_type must be one of"),
    ],
)
def test_bad_configs_raise_early(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_bad_pixel_values_and_robust_inputs():
    model = PvtV2ForImageClassification(small_config()).eval()
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\), got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))
    with torch.no_grad():
        tiny = model(torch.randn(2, 3, 8, 8), output_hidden_states=True)
        nan = model(torch.full((1, 3, 32, 32), float("nan")))
        one = model(torch.randn(1, 3, 1, 1))
    assert tiny.logits.shape == (2, 5) and torch.isfinite(tiny.logits).all()
    assert [h.shape[-1] for h in tiny.hidden_states] == [2, 1, 1, 1]
    assert nan.logits.shape == (1, 5)
    assert one.logits.shape == (1, 5) and torch.isfinite(one.logits).all()


def test_outputs_read_like_transformers():
    model = PvtV2ForImageClassification(small_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), labels=torch.tensor([1]))
    assert out[0] is out.loss and out["logits"] is out.logits and out.keys() == ["loss", "logits"]
    assert torch.equal(out.to_tuple()[1], out.logits)
