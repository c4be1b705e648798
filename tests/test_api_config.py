"""transformers 5's public config and image-processor API on pvtkit's classes: `to_diff_dict`, `to_json_file(use_diff)`,
the common `PretrainedConfig` fields and methods, processors' `to_json_file` / `from_json_file`, and
`AutoImageProcessor.from_pretrained(backend=...)`. Each test runs the same user code on transformers' class and on
pvtkit's and compares the results (types included); the surface tests enumerate transformers' public names and
hold pvtkit to them, less a written list of deliberate omissions."""

from __future__ import annotations

import importlib
import json
import logging

import numpy as np
import pytest
import transformers

import pvtkit
from pvtkit.processing import _BaseImageProcessor

pytestmark = pytest.mark.integration  # against the real transformers

VIT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
)
PYRAMID = dict(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 1, 2], depths=[1, 1, 1, 1])
CONFIGS = {
    "ViTConfig": VIT,
    "SegformerConfig": PYRAMID,
    "GLPNConfig": PYRAMID,
    "PvtV2Config": dict(PYRAMID, image_size=[64, 64], out_indices=[1, 3]),
}
# common fields set away from `PretrainedConfig()`'s defaults, so a diff must keep them
CHANGED = dict(num_labels=3, output_hidden_states=True, return_dict=False, problem_type="multi_label_classification")

# transformers' public `PretrainedConfig` names pvtkit's config base leaves out, and why (README's migration table)
CONFIG_LEFT_OUT = {
    "allow_global_per_layer_attribute_access": "per-layer (heterogeneous) configs: no pvtkit model varies by layer",
    "attribute_map": "aliases of other models' field names; pvtkit's configs use the HF names themselves",
    "base_config_key": "composite (multi-model) configs only",
    "base_model_ep_plan": "expert/tensor/pipeline/FSDP parallel plans: transformers' distributed runtime",
    "base_model_fsdp_plan": "expert/tensor/pipeline/FSDP parallel plans: transformers' distributed runtime",
    "base_model_pp_plan": "expert/tensor/pipeline/FSDP parallel plans: transformers' distributed runtime",
    "base_model_tp_plan": "expert/tensor/pipeline/FSDP parallel plans: transformers' distributed runtime",
    "convert_rope_params_to_dict": "rotary embeddings: none in these vision models",
    "default_config_fields": "a dataclass helper of transformers' `to_diff_dict`; pvtkit's diff needs none",
    "default_rope_type": "rotary embeddings: none in these vision models",
    "default_theta": "rotary embeddings: none in these vision models",
    "dict_dtype_to_str": "pvtkit's configs hold dtypes by name already (no torch in configs)",
    "extra_config_files": "experimental decision-head side files of LLM checkpoints",
    "extra_files": "experimental decision-head side files of LLM checkpoints",
    "get_mtp_config": "multi-token-prediction (text generation) only",
    "get_text_config": "text sub-configs of multimodal models; these models have no text",
    "ignore_keys_at_rope_validation": "rotary embeddings: none in these vision models",
    "is_custom_code": "remote (trust_remote_code) code: pvtkit runs only its own classes",
    "is_heterogeneous": "per-layer (heterogeneous) configs: no pvtkit model varies by layer",
    "is_remote_code": "remote (trust_remote_code) code: pvtkit runs only its own classes",
    "nested_rope_parameter_keys": "rotary embeddings: none in these vision models",
    "per_layer_attributes": "per-layer (heterogeneous) configs: no pvtkit model varies by layer",
    "per_layer_config": "per-layer (heterogeneous) configs: no pvtkit model varies by layer",
    "push_to_hub": "pvtkit never uploads; save_pretrained then `hf upload`",
    "register_for_auto_class": "registers remote code with transformers' Auto classes",
    "rope_scaling": "rotary embeddings: none in these vision models",
    "serialize_explicit_per_layer_config": "per-layer (heterogeneous) configs: no pvtkit model varies by layer",
    "standardize_rope_params": "rotary embeddings: none in these vision models",
    "sub_configs": "composite configs; Deformable DETR's `backbone_config` is a plain field",
    "sub_configs_defaults": "composite configs; Deformable DETR's `backbone_config` is a plain field",
    "validate": "pvtkit validates at construction (an invalid config is refused when built)",
    "validate_architecture": "pvtkit validates at construction (an invalid config is refused when built)",
    "validate_layer_type": "per-layer attention types of LLMs",
    "validate_output_attentions": "pvtkit returns attentions from its eager path whatever the attention kernel",
    "validate_rope": "rotary embeddings: none in these vision models",
    "validate_token_ids": "text tokens: none in these vision models",
}

# transformers' public image-processor names pvtkit's processors leave out, and why
PAD = (
    "only Deformable DETR's processor pads (`do_pad`, `pad_size`, `pixel_mask`); the classification and dense ones "
    "resize to one size, and refuse do_pad=True"
)
PROCESSOR_LEFT_OUT = {
    "backend": "AutoImageProcessor's choice of class, not a processor's option: pvtkit's class says it (`...Fast`)",
    "center_crop": "no center crop: the vision checkpoints here are resized, not cropped (do_center_crop=True raises)",
    "crop_size": "no center crop: the vision checkpoints here are resized, not cropped (do_center_crop=True raises)",
    "do_center_crop": "no center crop: the vision checkpoints here are resized, not cropped (do_center_crop=True raises)",
    "convert_to_rgb": "a module function, `pvtkit.processing.convert_to_rgb`, and the `do_convert_rgb` option",
    "data_format": "output is always channels-first, as every model here takes it",
    "input_data_format": "a `preprocess` argument rather than a stored option",
    "default_to_square": "sizes are explicit dicts: {height, width} or {shortest_edge}",
    "device": "a `preprocess` argument of the tensor back end rather than a stored option",
    "return_tensors": "a `preprocess` argument rather than a stored option",
    "disable_grouping": "torchvision back end's batching switch; pvtkit's tensor back end always stacks equal sizes",
    "do_pad": PAD,
    "pad": PAD,
    "pad_size": PAD,
    "fetch_images": "pvtkit does no network I/O for images; `pvtkit.processing.load_image` reads files",
    "get_image_processor_dict": "Hub resolution lives in `pvtkit.AutoImageProcessor.from_pretrained`",
    "image_seq_length": "token counts of multimodal language models",
    "normalize": "the steps are one pipeline in `preprocess` (rescale and normalize fused on the tensor back end)",
    "rescale": "the steps are one pipeline in `preprocess` (rescale and normalize fused on the tensor back end)",
    "resize": "the steps are one pipeline in `preprocess` (rescale and normalize fused on the tensor back end)",
    "process_image": "the steps are one pipeline in `preprocess` (rescale and normalize fused on the tensor back end)",
    "push_to_hub": "pvtkit never uploads; save_pretrained then `hf upload`",
    "register_for_auto_class": "registers remote code with transformers' Auto classes",
    "valid_kwargs": "transformers' typed-kwargs declaration; pvtkit's constructors list their options",
}


def public_names(cls: type, instance: object) -> set[str]:
    return {n for n in set(dir(cls)) | set(vars(instance)) if not n.startswith("_")}


def pil_class(name: str) -> type:
    """transformers' PIL processor: `XPil` since 5.x made `X` the torchvision one, `X` before."""
    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)


# transformers releases whose AutoImageProcessor takes `backend=` (older 5.x only know `use_fast`)
HAS_BACKEND = hasattr(importlib.import_module("transformers.models.auto.image_processing_auto"), "_resolve_backend")


def pair(name: str, **changes):
    fields = {**CONFIGS[name], **changes}
    return getattr(transformers, name)(**fields), getattr(pvtkit, name)(**fields)


# ---- config: to_dict / to_diff_dict / to_json_file -------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("changes", [{}, CHANGED], ids=["defaults", "changed"])
def test_to_dict_and_to_diff_dict_hold_what_transformers_holds(name, changes):
    theirs, ours = pair(name, **changes)
    full_t, full_o = theirs.to_dict(), ours.to_dict()
    # transformers adds its own version, and the load path (removed from its diff); pvtkit writes neither
    assert set(full_t) - set(full_o) == {"transformers_version", "_name_or_path"}
    assert set(full_o) - set(full_t) <= {"interpolate_pos_encoding"}  # ViT's pvtkit-only field
    shared = set(full_t) & set(full_o)
    assert {k: full_o[k] for k in shared} == {k: full_t[k] for k in shared}
    assert all(type(k) is int for k in full_o["id2label"])  # as transformers' to_dict, before JSON
    diff_t, diff_o = theirs.to_diff_dict(), ours.to_diff_dict()
    assert set(diff_t) - set(diff_o) == {"transformers_version"}
    assert set(diff_o) - set(diff_t) <= {"interpolate_pos_encoding"}
    assert {k: diff_o[k] for k in diff_t if k in diff_o} == {k: v for k, v in diff_t.items() if k in diff_o}
    assert diff_o["model_type"] == theirs.model_type
    common = set(transformers.PretrainedConfig().to_dict())
    expected = {k for k in CHANGED if k != "num_labels"} | {"id2label", "label2id"} if changes else set()
    assert {k for k in diff_o if k in common and k != "model_type"} == expected


@pytest.mark.parametrize("use_diff", [True, False])
def test_to_json_file_is_read_back_by_both(tmp_path, use_diff):
    theirs, ours = pair("SegformerConfig", **CHANGED)
    theirs.to_json_file(tmp_path / "t.json", use_diff=use_diff)
    ours.to_json_file(tmp_path / "o.json", use_diff=use_diff)
    written_t = json.loads((tmp_path / "t.json").read_text())
    written_o = json.loads((tmp_path / "o.json").read_text())
    assert set(written_t) - set(written_o) == {"transformers_version"} | ({"_name_or_path"} if not use_diff else set())
    assert {k: written_t[k] for k in written_o} == written_o
    assert (tmp_path / "o.json").read_text() == ours.to_json_string(use_diff=use_diff)
    for file in ("t.json", "o.json"):
        back_t = transformers.SegformerConfig.from_json_file(tmp_path / file)
        back_o = pvtkit.SegformerConfig.from_json_file(tmp_path / file)
        assert back_o == ours
        assert {k: v for k, v in back_t.to_dict().items() if k in back_o.to_dict()} == back_o.to_dict()
    assert ours.to_json_string() == ours.to_json_string(use_diff=True) != ours.to_json_string(use_diff=False)


# ---- config: the common fields and methods --------------------------------------------------------------------


def use(config, tmp_path) -> dict:
    """User code written for transformers' configs; returns what it read."""
    out = {
        "is_encoder_decoder": config.is_encoder_decoder,
        "chunk_size_feed_forward": config.chunk_size_feed_forward,
        "architectures": config.architectures,
        "use_return_dict": config.use_return_dict,
        "output_hidden_states": config.output_hidden_states,
        "output_attentions": config.output_attentions,
        "return_dict": config.return_dict,
        "name_or_path": config.name_or_path,
        "transformers_version": config.transformers_version,
        "dtype": str(config.dtype).removeprefix("torch."),  # torch.float16 in transformers, "float16" in pvtkit
        "torch_dtype": str(config.torch_dtype).removeprefix("torch."),
    }
    config.num_labels = 4
    out["labels"] = (config.num_labels, dict(config.id2label), dict(config.label2id))
    config.update({"problem_type": "regression", "architectures": ["X"]})
    config.update_from_string("output_hidden_states=true,initializer_range=0.5,hidden_act=relu")
    out["updated"] = (config.problem_type, config.architectures, config.output_hidden_states)
    out["from_string"] = (config.initializer_range, config.hidden_act)
    with pytest.raises(ValueError):
        config.update_from_string("no_such_field=1")
    config.name_or_path = tmp_path
    out["name_or_path set"] = config.name_or_path
    config.save_pretrained(tmp_path)
    data, unused = type(config).get_config_dict(tmp_path, foo=1)
    out["config dict"] = ({k: data[k] for k in ("model_type", "problem_type", "architectures", "id2label")}, unused)
    out["saved path"] = "_name_or_path" in data or str(tmp_path) in (tmp_path / "config.json").read_text()
    return out


@pytest.mark.parametrize("name", ["ViTConfig", "SegformerConfig"])
def test_common_fields_and_methods_read_as_in_transformers(tmp_path, name, caplog):
    theirs, ours = pair(name, dtype="float16")
    with caplog.at_level(logging.ERROR):  # transformers' deprecation notes for torch_dtype / use_return_dict
        got_t = use(theirs, tmp_path / "t")
    got_o = use(ours, tmp_path / "o")
    assert got_o.pop("name_or_path set") == str(tmp_path / "o")
    assert got_t.pop("name_or_path set") == str(tmp_path / "t")
    assert got_o == got_t
    assert {k: type(v) for k, v in got_o.items()} == {k: type(v) for k, v in got_t.items()}
    assert got_o["is_encoder_decoder"] is False and got_o["saved path"] is False
    assert pvtkit.DeformableDetrConfig().is_encoder_decoder is transformers.DeformableDetrConfig().is_encoder_decoder
    # a file transformers wrote: its version is readable (transformers' Trainer reads it), never written back
    theirs.save_pretrained(tmp_path / "from_t")
    read = type(ours).from_pretrained(tmp_path / "from_t")
    assert read.transformers_version == transformers.__version__
    assert "transformers_version" not in read.to_dict() and str(read.dtype) == "float16"


def test_config_surface_is_transformers_less_a_written_list():
    theirs = public_names(transformers.PretrainedConfig, transformers.PretrainedConfig())
    ours = pvtkit.ViTConfig()
    missing = {n for n in theirs if not hasattr(ours, n)}
    assert not missing - set(CONFIG_LEFT_OUT), f"undocumented: {missing - set(CONFIG_LEFT_OUT)}"
    # the list holds only what pvtkit lacks (names an older transformers 5.x lacks too may stay listed)
    assert not [n for n in CONFIG_LEFT_OUT if hasattr(ours, n)]


# ---- image processors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ViTImageProcessor", "SegformerImageProcessor"])
def test_processor_json_file_both_ways(tmp_path, name):
    theirs = pil_class(name)(size={"height": 48, "width": 40}, resample=3)
    ours = getattr(pvtkit, name)(size={"height": 48, "width": 40}, resample=3)
    theirs.to_json_file(tmp_path / "t.json")
    ours.to_json_file(tmp_path / "o.json")
    written_t, written_o = (json.loads((tmp_path / f).read_text()) for f in ("t.json", "o.json"))
    assert set(written_o) - set(written_t) <= {"do_convert_rgb"}  # transformers leaves its None out
    shared = (set(written_t) & set(written_o)) - {"image_processor_type"}
    assert {k: written_t[k] for k in shared} == {k: written_o[k] for k in shared}
    assert (tmp_path / "o.json").read_text() == ours.to_json_string()
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    expected = theirs(image, return_tensors="np")["pixel_values"]
    for file in ("t.json", "o.json"):
        back_t = pil_class(name).from_json_file(tmp_path / file)
        back_o = getattr(pvtkit, name).from_json_file(tmp_path / file)
        assert type(back_o) is getattr(pvtkit, name) and back_o.to_dict() == ours.to_dict()
        np.testing.assert_allclose(back_o(image, return_tensors="np")["pixel_values"], expected, atol=1e-5)
        np.testing.assert_allclose(back_t(image, return_tensors="np")["pixel_values"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="bad.json"):
        (tmp_path / "bad.json").write_text("[1, 2]")
        getattr(pvtkit, name).from_json_file(tmp_path / "bad.json")


@pytest.mark.parametrize("written", ["SegformerImageProcessor", "SegformerImageProcessorFast"])
def test_auto_image_processor_backend(tmp_path, written):
    saved = pvtkit.SegformerImageProcessor(size={"height": 32, "width": 32})
    saved.save_pretrained(tmp_path)
    file = tmp_path / "preprocessor_config.json"
    file.write_text(file.read_text().replace('"SegformerImageProcessor"', f'"{written}"'))
    auto = pvtkit.AutoImageProcessor.from_pretrained
    fast, pil = pvtkit.SegformerImageProcessorFast, pvtkit.SegformerImageProcessor
    assert type(auto(tmp_path, backend="torchvision")) is fast is type(auto(tmp_path, use_fast=True))
    assert type(auto(tmp_path, backend="pil")) is pil is type(auto(tmp_path, use_fast=False))
    assert type(auto(tmp_path)) is (fast if written.endswith("Fast") else pil)  # the class the file names
    assert type(auto(tmp_path, backend="pil", use_fast=True)) is pil  # backend wins, as in transformers
    with pytest.raises(ValueError, match="backend must be one of"):
        auto(tmp_path, backend="cv2")
    # `backend` is the choice of class, never an option: not kept, not written back (transformers: the same)
    for backend in ("torchvision", "pil"):
        ours = auto(tmp_path, backend=backend)
        theirs = transformers.AutoImageProcessor.from_pretrained(
            tmp_path, **({"backend": backend} if HAS_BACKEND else {})
        )
        assert "backend" not in ours.to_dict() and "backend" not in theirs.to_dict()
        ours.save_pretrained(tmp_path / backend)
        assert "backend" not in json.loads((tmp_path / backend / "preprocessor_config.json").read_text())
        assert ours.size == theirs.size == {"height": 32, "width": 32}
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    theirs = pil_class("SegformerImageProcessor").from_pretrained(tmp_path)
    expected = theirs(image, return_tensors="np")["pixel_values"]
    got = auto(tmp_path, backend="pil")(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_processor_surface_is_transformers_less_a_written_list():
    theirs = public_names(pil_class("ViTImageProcessor"), pil_class("ViTImageProcessor")())
    ours = pvtkit.ViTImageProcessor()
    assert isinstance(ours, _BaseImageProcessor)
    missing = {n for n in theirs if not hasattr(ours, n)}
    assert not missing - set(PROCESSOR_LEFT_OUT), f"undocumented: {missing - set(PROCESSOR_LEFT_OUT)}"
    # the list holds only what pvtkit lacks (names an older transformers 5.x lacks too may stay listed)
    assert not [n for n in PROCESSOR_LEFT_OUT if hasattr(ours, n)]
