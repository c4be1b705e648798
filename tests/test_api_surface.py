"""transformers' public model surface, name by name: the backbone API (`BackboneMixin`) and `PreTrainedModel`'s
methods and attributes, run the same way on transformers' PVTv2 and on pvtkit's with the same config and weights;
and pvtkit's three deliberate differences (a foreign checkpoint, an invalid config, loading under a meta device), each
shown beside what transformers does."""

from __future__ import annotations

import inspect
import json
import logging

import pytest
import torch
import transformers
from safetensors.torch import save_file

import pvtkit

pytestmark = pytest.mark.integration  # against the real transformers

PVT = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 1, 2], mlp_ratios=[2, 2, 2, 2])

# transformers' public `PreTrainedModel` names (beyond torch's `nn.Module`) that pvtkit's model base leaves out, and
# why. Every other public name must be present in pvtkit and behave the same (`test_pretrained_model_surface`); the
# README's migration table is this list.
LEFT_OUT = {
    # adapters: peft's own `get_peft_model` works on pvtkit's models (tests/test_drop_in.py); the integration on the
    # model class is transformers' wrapper around it
    **dict.fromkeys(
        "active_adapters add_adapter delete_adapter disable_adapters enable_adapters enable_peft_hotswap "
        "get_adapter_state_dict load_adapter set_adapter".split(),
        "peft integration: use peft.get_peft_model",
    ),
    # distributed and parallel plans: pvtkit models are small enough for data parallelism (accelerate, DDP, FSDP)
    **dict.fromkeys(
        "barrier_after_gathered_checkpoint_save ep_plan fsdp_plan fsdp_size gather_sharded_state_dict_for_save "
        "init_parallel_plans is_distributed_loading_by_transformers maybe_distribute_model pp_plan "
        "prepare_distribute_model save_distributed_checkpoint should_save_on_this_rank supports_context_parallel "
        "supports_pp_plan supports_tp_plan tp_plan tp_size".split(),
        "tensor/pipeline/expert parallel plans: not needed for models of this size",
    ),
    # language-model and multimodal machinery
    **dict.fromkeys(
        "generation_config_class get_decoder set_decoder set_encoder resize_token_embeddings "
        "set_input_embeddings set_output_embeddings warn_if_padding_and_no_attention_mask dummy_inputs "
        "get_position_embeddings resize_position_embeddings loss_function loss_type".split(),
        "language-model machinery (token embeddings, decoders, text dummy inputs, LM losses)",
    ),
    # kernels, attention back ends, quantisation
    **dict.fromkeys(
        "kernel_config kernels_mode reset_kernels set_use_kernels use_kernels get_correct_attn_implementation "
        "get_correct_experts_implementation get_experts_implementation set_attn_implementation "
        "set_experts_implementation is_backend_compatible dequantize get_compiled_call".split(),
        "Hub kernels, attention/expert back ends, quantisation: pvtkit always runs PyTorch SDPA; pvtkit.optimize compiles",
    ),
    # transformers-internal loading and hooks
    **dict.fromkeys(
        "all_tied_weights_keys get_expanded_tied_weights_keys mark_tied_weights_as_initialized get_init_context "
        "initialize_weights retrieve_modules_from_names can_record_outputs named_non_persistent_buffers".split(),
        "transformers' loading internals (pvtkit: init_weights, from_pretrained)",
    ),
    # Hub upload and remote code
    **dict.fromkeys(
        "push_to_hub add_model_tags model_tags register_for_auto_class is_custom_code is_remote_code".split(),
        "Hub upload and remote code: save_pretrained then huggingface_hub's upload_folder",
    ),
}


def _pair(cls_name: str, **config: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers' `cls_name` and pvtkit's, same config, same weights (pvtkit's read from transformers')."""
    torch.manual_seed(0)
    ours_cls = getattr(pvtkit, cls_name)
    theirs = getattr(transformers, cls_name)(transformers.PvtV2Config(**PVT, **config)).eval()
    return theirs, ours_cls.from_transformers(theirs)


def _same(a: object, b: object, what: str) -> None:
    assert type(a) is type(b) and a == b, f"{what}: transformers {a!r}, pvtkit {b!r}"


# ---- BackboneMixin ------------------------------------------------------------------------------------------------


# `BackboneMixin` names left out: transformers 4's (and early 5's) `to_dict` on a backbone calls the nn.Module's
# missing `to_dict` and fails; the config's `to_dict` is the one to use.
BACKBONE_LEFT_OUT = {"to_dict"}


def _backbone_names() -> list[str]:
    """transformers' public `BackboneMixin` surface: its class's names plus what its __init__ sets."""
    mixin = next(c for c in transformers.PvtV2Backbone.__mro__ if c.__name__ == "BackboneMixin")
    names = {n for n in vars(mixin) if not n.startswith("_")} | {"stage_names", "num_features"}
    return sorted(names - BACKBONE_LEFT_OUT)


def test_backbone_public_surface_matches_transformers():
    theirs, ours = _pair("PvtV2Backbone", out_indices=[1, 3])
    names = _backbone_names()
    assert {"out_feature_channels", "channels", "out_features", "out_indices", "forward_with_filtered_kwargs"} <= set(
        names
    )
    for name in names:
        assert hasattr(ours, name), f"pvtkit's PvtV2Backbone lacks {name}"
        a, b = getattr(theirs, name), getattr(ours, name)
        if inspect.ismethod(a):
            continue  # run below
        if name == "backbone_type":  # an enum of each library, same names and values
            assert (type(a).__name__, a.name, a.value) == (type(b).__name__, b.name, b.value)
        else:
            _same(a, b, name)
    assert ours.out_feature_channels == {"stage1": 8, "stage2": 16, "stage3": 24, "stage4": 32}

    # the setters re-pick the stages on both, and the next forward returns those maps
    x = torch.randn(2, 3, 40, 48)
    for model in (theirs, ours):
        model.out_features = ["stage1", "stage3"]
    for name in ("out_features", "out_indices", "channels", "out_feature_channels"):
        _same(getattr(theirs, name), getattr(ours, name), f"{name} after the setter")
    assert ours.out_indices == [0, 2] and ours.channels == [8, 24]
    with torch.no_grad():
        for kwargs in ({}, {"output_attentions": True}):
            a, b = theirs.forward_with_filtered_kwargs(x, **kwargs), ours.forward_with_filtered_kwargs(x, **kwargs)
            assert [m.shape for m in a.feature_maps] == [m.shape for m in b.feature_maps]
            assert [m.shape[1] for m in b.feature_maps] == ours.channels
            for ma, mb in zip(a.feature_maps, b.feature_maps):
                torch.testing.assert_close(mb, ma, rtol=1e-4, atol=1e-5)
            # transformers' PvtV2Backbone drops the attention maps it computes; pvtkit's returns them, one per block
            assert a.attentions is None
            assert (b.attentions is None) == (not kwargs) and (not kwargs or len(b.attentions) == 4)
        # a backbone without attention maps: the flag is dropped instead of passed on
        for model in (theirs, ours):
            model.has_attentions = False
        a, b = (
            theirs.forward_with_filtered_kwargs(x, output_attentions=True),
            ours.forward_with_filtered_kwargs(x, output_attentions=True),
        )
        assert a.attentions is None and b.attentions is None


# ---- PreTrainedModel ----------------------------------------------------------------------------------------------


def test_pretrained_model_surface(tmp_path):
    public = sorted(
        n for n in dir(transformers.PreTrainedModel) if not n.startswith("_") and n not in dir(torch.nn.Module)
    )
    present = [n for n in public if n not in LEFT_OUT]
    missing = [n for n in present if not hasattr(pvtkit.PvtV2ForImageClassification, n)]
    assert not missing, f"transformers' PreTrainedModel has {missing}: add them to pvtkit or to LEFT_OUT with a reason"

    theirs, ours = _pair("PvtV2ForImageClassification", num_labels=3)
    for name in ("main_input_name", "base_model_prefix", "supports_gradient_checkpointing", "input_modalities"):
        if hasattr(theirs, name):  # input_modalities: newer 5.x
            _same(getattr(theirs, name), getattr(ours, name), name)
    _same(theirs.can_generate(), ours.can_generate(), "can_generate()")
    _same(theirs.get_output_embeddings(), ours.get_output_embeddings(), "get_output_embeddings()")
    assert type(theirs.base_model).__name__ == type(ours.base_model).__name__ == "PvtV2Model"
    assert type(theirs.get_encoder()).__name__ == type(ours.get_encoder()).__name__ == "PvtV2Encoder"
    assert ours.get_encoder() is ours.pvt_v2.encoder and ours.pvt_v2.get_encoder() is ours.pvt_v2.encoder
    assert theirs.config_class.__name__ == ours.config_class.__name__ == "PvtV2Config"
    _same(theirs.device, ours.device, "device")
    _same(theirs.dtype, ours.dtype, "dtype")
    torch.testing.assert_close(
        ours.get_parameter_or_buffer("classifier.weight"), theirs.get_parameter_or_buffer("classifier.weight")
    )
    for model in (theirs, ours):
        with pytest.raises(AttributeError):
            model.get_parameter_or_buffer("classifier.nothing")

    # counts, by an independent sum over the state dict (no buffers in PVTv2)
    expected = sum(v.numel() for v in theirs.state_dict().values())
    for only_trainable in (False, True):
        _same(theirs.num_parameters(only_trainable), ours.num_parameters(only_trainable), "num_parameters")
    assert ours.num_parameters() == expected
    for model in (theirs, ours):
        model.pvt_v2.requires_grad_(False)
    _same(theirs.num_parameters(only_trainable=True), ours.num_parameters(only_trainable=True), "trainable")
    assert ours.num_parameters(only_trainable=True) == 3 * 32 + 3
    _same(theirs.get_memory_footprint(), ours.get_memory_footprint(), "get_memory_footprint()")
    assert ours.get_memory_footprint() == 4 * expected

    # checkpointing flags, and the name a loaded model remembers
    for model in (theirs, ours):
        model.activation_checkpointing_enable()
    _same(theirs.is_activation_checkpointing, ours.is_activation_checkpointing, "is_activation_checkpointing")
    for model in (theirs, ours):
        model.activation_checkpointing_disable()
    _same(theirs.is_activation_checkpointing, ours.is_activation_checkpointing, "after disable")
    theirs.save_pretrained(tmp_path)
    a = transformers.PvtV2ForImageClassification.from_pretrained(tmp_path)
    b = pvtkit.PvtV2ForImageClassification.from_pretrained(tmp_path)
    _same(a.name_or_path, b.name_or_path, "name_or_path")
    theirs.tie_weights()
    ours.tie_weights()


# ---- pvtkit's deliberate differences ------------------------------------------------------------------------------


def test_a_checkpoint_sharing_no_weight_is_refused_by_name(tmp_path, caplog):
    """transformers builds a randomly initialised model from a file of foreign tensors (with a load report);
    pvtkit refuses it, naming the file and the keys it found."""
    directory = tmp_path / "foreign"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(transformers.PvtV2Config(**PVT).to_dict()))
    save_file(
        {"backbone.conv1.weight": torch.zeros(4, 3, 3, 3), "head.fc.bias": torch.zeros(4)},
        directory / "model.safetensors",
    )
    with caplog.at_level(logging.ERROR):
        transformers.PvtV2Model.from_pretrained(directory)  # no error: every weight random
    with pytest.raises(ValueError, match="backbone.conv1.weight") as error:
        pvtkit.PvtV2Model.from_pretrained(directory)
    assert "foreign" in str(error.value)


def test_an_invalid_config_is_refused_at_construction():
    """transformers accepts the config and fails later, inside the model (an IndexError); pvtkit refuses the config
    itself, naming the field."""
    bad = {**PVT, "hidden_sizes": [8, 16]}
    config = transformers.PvtV2Config(**bad)
    with pytest.raises(IndexError):
        transformers.PvtV2Model(config)
    with pytest.raises(ValueError, match="hidden_sizes"):
        pvtkit.PvtV2Config(**bad)


def test_loading_under_a_meta_device_context_loads_real_weights(tmp_path):
    """transformers refuses `from_pretrained` under `torch.device("meta")`; pvtkit loads the real weights on the
    CPU (code that wraps model building in a meta context for speed keeps working)."""
    torch.manual_seed(0)
    saved = transformers.PvtV2Model(transformers.PvtV2Config(**PVT))
    saved.save_pretrained(tmp_path)
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta"):
        transformers.PvtV2Model.from_pretrained(tmp_path)
    with torch.device("meta"):
        model = pvtkit.PvtV2Model.from_pretrained(tmp_path)
    assert model.device == torch.device("cpu")
    expected = saved.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
