"""transformers 5's loading and checkpointing API, run as the same user code on transformers' classes and on
pvtkit's: `output_loading_info`'s types, the activation-checkpointing signatures, a config that asks for
checkpointing, and transformers 5.25's in-memory state dicts (SegFormer's and ViT's renamed modules) through each
family's layouts, with a load that would leave the encoder random refused by the layout's name."""

from __future__ import annotations

import inspect
import json
import re
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file

import pvtkit

from helpers import assert_close

VIT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
)
PYRAMID = dict(
    depths=[1, 1, 1, 1],
    hidden_sizes=[8, 16, 24, 32],
    num_attention_heads=[1, 2, 1, 2],
    mlp_ratios=[2, 2, 2, 2],
    decoder_hidden_size=16,
)
# (transformers' class, pvtkit's, config fields, input size): every family whose models load a state dict
FAMILIES = {
    "vit-model": ("ViTModel", "ViTModel", VIT, 16),
    "vit-classifier": ("ViTForImageClassification", "ViTForImageClassification", {**VIT, "num_labels": 3}, 16),
    "vit-masked": ("ViTForMaskedImageModeling", "ViTForMaskedImageModeling", {**VIT, "encoder_stride": 4}, 16),
    "segformer-model": ("SegformerModel", "SegformerModel", PYRAMID, 64),
    "segformer-classifier": (
        "SegformerForImageClassification",
        "SegformerForImageClassification",
        {**PYRAMID, "num_labels": 3},
        64,
    ),
    "segformer-segmenter": (
        "SegformerForSemanticSegmentation",
        "SegformerForSemanticSegmentation",
        {**PYRAMID, "num_labels": 3},
        64,
    ),
    "glpn-depth": ("GLPNForDepthEstimation", "GLPNForDepthEstimation", PYRAMID, 64),
    "pvt_v2-classifier": (
        "PvtV2ForImageClassification",
        "PvtV2ForImageClassification",
        {**PYRAMID, "num_labels": 3},
        64,
    ),
}
OUTPUTS = ("last_hidden_state", "logits", "predicted_depth", "reconstruction")


def twins(case: str, **fields):
    """transformers' model with random weights (every parameter and buffer, so nothing passes by being at its
    init), and pvtkit's class and config for the same architecture."""
    theirs_name, ours_name, base, size = FAMILIES[case]
    theirs_cls, ours_cls = getattr(transformers, theirs_name), getattr(pvtkit, ours_name)
    config = theirs_cls.config_class(**{**base, **fields})
    theirs = theirs_cls(config).eval()
    with torch.no_grad():
        for name, tensor in theirs.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5 if name.endswith("running_var") else torch.randn_like(tensor)
                )
                if not name.endswith("running_var"):
                    tensor.mul_(0.2)
    ours_config = ours_cls.config_class.from_dict(config.to_dict())
    return theirs, ours_cls, ours_config, torch.randn(2, 3, size, size)


def first_output(out) -> torch.Tensor:
    return next(getattr(out, name) for name in OUTPUTS if getattr(out, name, None) is not None)


# ---- 1. output_loading_info: transformers 5's types -------------------------------------------------------------


def test_loading_info_has_transformers_types_and_the_same_keys(tmp_path):
    """An encoder with a pooler into a classifier (missing and unexpected keys), then a classifier into one with
    more classes (mismatched keys): the same user code on both libraries gives equal info, type for type."""
    transformers.ViTModel(transformers.ViTConfig(**VIT)).save_pretrained(tmp_path / "encoder")
    transformers.ViTForImageClassification(transformers.ViTConfig(**VIT, num_labels=3)).save_pretrained(
        tmp_path / "cls"
    )

    def user_code(cls):
        _, encoder_info = cls.from_pretrained(tmp_path / "encoder", num_labels=5, output_loading_info=True)
        _, resized_info = cls.from_pretrained(
            tmp_path / "cls", num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True
        )
        assert encoder_info["missing_keys"].isdisjoint({"vit.embeddings.cls_token"})  # set methods work
        return encoder_info, resized_info

    theirs, ours = user_code(transformers.ViTForImageClassification), user_code(pvtkit.ViTForImageClassification)
    for their_info, our_info in zip(theirs, ours):
        assert set(our_info) == set(their_info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
        for key, value in their_info.items():
            assert type(our_info[key]) is type(value), (key, type(our_info[key]), type(value))
        assert our_info["missing_keys"] == their_info["missing_keys"]
        assert our_info["unexpected_keys"] == their_info["unexpected_keys"]
        assert our_info["error_msgs"] == their_info["error_msgs"] == []
        for ours_entry, theirs_entry in zip(sorted(our_info["mismatched_keys"]), sorted(their_info["mismatched_keys"])):
            assert [type(v) for v in ours_entry] == [type(v) for v in theirs_entry]
        as_tuples = lambda entries: {(k, tuple(a), tuple(b)) for k, a, b in entries}  # noqa: E731
        assert as_tuples(our_info["mismatched_keys"]) == as_tuples(their_info["mismatched_keys"])
    assert theirs[0]["missing_keys"] == {"classifier.weight", "classifier.bias"}
    assert theirs[0]["unexpected_keys"] == {"pooler.dense.weight", "pooler.dense.bias"}  # the checkpoint's names
    assert {k for k, _, _ in theirs[1]["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}


# ---- 2 and 3. activation checkpointing: transformers 5's signatures, and a config that asks for it --------------

CHECKPOINTING = (
    "activation_checkpointing_enable",
    "activation_checkpointing_disable",
    "gradient_checkpointing_enable",
    "gradient_checkpointing_disable",
)


def test_checkpointing_methods_take_transformers_arguments():
    for name in CHECKPOINTING:
        theirs = inspect.signature(getattr(transformers.PreTrainedModel, name)).parameters
        ours = inspect.signature(getattr(pvtkit.PreTrainedModel, name)).parameters
        assert list(ours) == list(theirs), name
        assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()], name
        assert [p.default for p in ours.values()] == [p.default for p in theirs.values()], name


@pytest.mark.parametrize("case", ["vit-classifier", "segformer-segmenter"])
def test_checkpointing_calls_behave_as_in_transformers(case):
    """The same calls on both: the 5.x names and the 4.x names turn checkpointing on and off, the kwargs reach
    `torch.utils.checkpoint.checkpoint` (an argument it does not take fails the backward alike), and the gradients
    are those of the plain model for both reentrant modes and with the saved activations offloaded."""
    no_dropout = {"drop_path_rate": 0.0, "classifier_dropout_prob": 0.0} if case.startswith("segformer") else {}
    theirs, ours_cls, ours_config, x = twins(case, **no_dropout)
    ours = ours_cls.from_pretrained(None, state_dict=theirs.state_dict(), config=ours_config)
    theirs.train(), ours.train()

    def gradients() -> list[torch.Tensor]:
        ours.zero_grad()
        first_output(ours(x)).square().sum().backward()  # not autograd.grad: reentrant checkpointing refuses it
        return torch.cat([p.grad.flatten() for p in ours.parameters()])

    plain = gradients()

    def user_code(model):
        seen = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecates the 4.x names
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            seen += [model.is_activation_checkpointing, model.is_gradient_checkpointing]
            model.activation_checkpointing_disable()
            seen += [model.is_activation_checkpointing]
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            seen += [model.is_gradient_checkpointing]
            model.gradient_checkpointing_disable()
            seen += [model.is_gradient_checkpointing]
            warnings.simplefilter("ignore", UserWarning)  # torch: use_reentrant left out (the call fails anyway)
            model.activation_checkpointing_enable({"no_such_argument": 1})
            with pytest.raises(ValueError, match="no_such_argument"):
                first_output(model(x)).sum().backward()
            model.zero_grad()
            return seen

    assert user_code(theirs) == user_code(ours) == [True, True, False, True, False]
    for kwargs, offload in (({"use_reentrant": False}, False), ({"use_reentrant": True}, False), (None, True)):
        ours.activation_checkpointing_enable(kwargs, offload=offload)
        assert_close(gradients(), plain, what=f"gradients with {kwargs}, offload={offload}")


def test_a_config_with_gradient_checkpointing_builds_a_checkpointed_model(tmp_path):
    """Older Hub configs carry `"gradient_checkpointing": true`: transformers builds the model with checkpointing
    on and drops the key, so it is not saved again; pvtkit the same, from a config and from a directory."""
    theirs = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT, num_labels=3))
    theirs.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**config, "gradient_checkpointing": True}))

    def user_code(lib):
        model = lib.ViTForImageClassification.from_pretrained(tmp_path / "old")
        built = lib.ViTForImageClassification(lib.ViTConfig(**VIT, gradient_checkpointing=True))
        off = lib.ViTForImageClassification(lib.ViTConfig(**VIT, gradient_checkpointing=False))
        model.save_pretrained(tmp_path / lib.__name__)
        saved = json.loads((tmp_path / lib.__name__ / "config.json").read_text())
        return [
            model.is_activation_checkpointing,
            built.is_activation_checkpointing,
            off.is_activation_checkpointing,
            hasattr(model.config, "gradient_checkpointing"),
            "gradient_checkpointing" in saved,
        ]

    assert user_code(transformers) == user_code(pvtkit) == [True, True, False, False, False]


# ---- 7. transformers' in-memory state dicts ----------------------------------------------------------------------


@pytest.mark.parametrize("case", list(FAMILIES))
def test_transformers_in_memory_state_dict_loads_and_pvtkit_writes_the_on_disk_names(tmp_path, case):
    """`from_pretrained(None, state_dict=hf_model.state_dict())`: transformers 5.25 names SegFormer's and ViT's
    modules otherwise in memory than in its files; pvtkit reads either through the family's layouts, loads every
    weight, gives transformers' outputs, and saves the names transformers writes (and reads back)."""
    theirs, ours_cls, ours_config, x = twins(case)
    again = type(theirs).from_pretrained(None, state_dict=theirs.state_dict(), config=theirs.config).eval()
    ours, info = ours_cls.from_pretrained(
        None, state_dict=theirs.state_dict(), config=ours_config, output_loading_info=True
    )
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    with torch.no_grad():
        expected = first_output(theirs(x))
        assert torch.equal(first_output(again(x)), expected)  # transformers takes its own state dict
        assert_close(first_output(ours(x)), expected, tol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    assert set(load_file(tmp_path / "ours" / "model.safetensors")) == set(
        load_file(tmp_path / "theirs" / "model.safetensors")
    )
    back, their_info = type(theirs).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(their_info.values()), their_info
    with torch.no_grad():
        assert_close(first_output(back.eval()(x)), expected, tol=1e-5)


@pytest.mark.parametrize(
    ("case", "pattern", "replacement"),
    [  # a renaming transformers has not made: the embeddings still match the on-disk layout, the blocks do not
        ("vit-classifier", r"^vit\.layers\.", "vit.encoder.blocks."),
        (
            "segformer-segmenter",
            r"^segformer\.stages\.(\d)\.patch_embeddings\.",
            r"segformer.encoder.patch_embeddings.\1.",
        ),
    ],
)
def test_a_load_that_leaves_the_encoder_random_is_an_error_naming_the_layout(case, pattern, replacement):
    """A layout pvtkit does not know yet: loading it would keep a few weights (the embeddings, the heads) and leave
    the encoder's blocks random; pvtkit refuses and names the layout it saw, rather than warn as transformers does."""
    theirs, ours_cls, ours_config, _ = twins(case)
    state = {re.sub(pattern, replacement, k): v for k, v in theirs.state_dict().items()}
    with pytest.raises(pvtkit.LoadingError, match=r"\(transformers layout\) would leave \d+ of the \d+ encoder"):
        ours_cls.from_pretrained(None, state_dict=state, config=ours_config)
