"""Deformable DETR: parity with transformers (same random weights, checkpoints read both ways) on a small PVTv2 and
on ResNet-50, box refinement and two-stage, padding, learned position embeddings, gradients and the loss; the
checkpoint layouts (transformers' files, its in-memory names, timm's ResNet names); the CPU sampling path; torch.export;
the config (transformers' fields and defaults, the legacy backbone keys, validation) and the variant table."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from safetensors.torch import load_file

import pvtkit
from pvtkit import (
    AutoConfig,
    AutoModel,
    AutoModelForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrModel,
    cpu_kernels,
)
from pvtkit.layers import multi_scale_deformable_attention
from pvtkit.models.resnet import TimmBackboneConfig, TimmResNet

from helpers import FIXTURES, TINY_PVT_BACKBONE, assert_close, gradients_by_disk_name

# heads 1, 2, 3, 4: the published rule (head width 16), so that a config can be read off the tensors
PVT = TINY_PVT_BACKBONE
TINY = dict(
    d_model=32,
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=48,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=5,
    num_labels=3,
    dropout=0.0,
    two_stage_num_proposals=7,
)
CASES = {
    "plain": {},
    "box_refine": {"with_box_refine": True},
    "two_stage": {"with_box_refine": True, "two_stage": True},
}
COMPARED = ("logits", "pred_boxes", "encoder_last_hidden_state", "last_hidden_state", "intermediate_reference_points")


def config(backbone=PVT, **overrides) -> DeformableDetrConfig:
    return DeformableDetrConfig(backbone_config=backbone, **{**TINY, **overrides})


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (the inits leave attention weights and box offsets zero); norm weights and
    BatchNorm variances near 1, so the numbers stay in range."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            near_one = name.endswith(("running_var", "norm.weight", "layer_norm.weight")) or re.search(
                r"(normalization|bn\d|norm_\d|downsample\.1|input_proj\.\d+\.1)\.weight$", name
            )
            t.copy_(1.0 + 0.1 * torch.rand_like(t) if near_one else 0.1 * torch.randn_like(t))
    return model.eval()


def inputs(batch: int = 2, size: tuple[int, int] = (97, 131)) -> tuple[torch.Tensor, torch.Tensor]:
    """Odd-sized images, the second padded at the bottom and the right (pixel_mask 0 there)."""
    torch.manual_seed(1)
    x = torch.randn(batch, 3, *size)
    mask = torch.ones(batch, *size, dtype=torch.long)
    if batch > 1:
        mask[1, size[0] * 2 // 3 :] = 0
        mask[1, :, size[1] * 3 // 4 :] = 0
    return x, mask


def hf_twin(ours: DeformableDetrConfig) -> transformers.DeformableDetrForObjectDetection:
    return transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig.from_dict(ours.to_dict()))


def compare(a, b, fields=COMPARED) -> None:
    for name in fields:
        assert_close(a[name], b[name], what=name)
    for i, (x, y) in enumerate(zip(a.decoder_hidden_states or (), b.decoder_hidden_states or ())):
        assert_close(x, y, what=f"decoder hidden state {i}")
    if b.enc_outputs_class is not None:  # two-stage: every token's proposal, inf where masked
        assert_close(a.enc_outputs_class, b.enc_outputs_class, what="enc_outputs_class")
        finite = b.enc_outputs_coord_logits.isfinite()
        assert torch.equal(a.enc_outputs_coord_logits.isfinite(), finite)
        assert_close(a.enc_outputs_coord_logits[finite], b.enc_outputs_coord_logits[finite], what="proposals")


def run(model, x, mask, **flags):
    with torch.no_grad():
        return model(x, pixel_mask=mask, output_hidden_states=True, **flags)


# ---- parity with transformers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [*CASES, "learned"])
def test_loads_transformers_checkpoint_and_matches_it(tmp_path, case):
    fields = {"position_embedding_type": "learned"} if case == "learned" else CASES[case]
    theirs = randomize(hf_twin(config(**fields)))
    theirs.save_pretrained(tmp_path)
    ours, info = DeformableDetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    x, mask = inputs()
    expected = run(theirs, x, mask, output_attentions=True)
    got = run(ours, x, mask, output_attentions=True)
    compare(got, expected)
    for i, (a, b) in enumerate(zip(got.cross_attentions, expected.cross_attentions)):
        assert_close(a, b, what=f"cross attention {i}")
    with cpu_kernels.flags(enabled=False):  # the grid_sample path, as exported
        compare(run(ours, x, mask), expected)


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_our_checkpoint_and_matches_it(tmp_path, case):
    ours = randomize(DeformableDetrForObjectDetection(config(**CASES[case])))
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = transformers.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path / "ours", output_loading_info=True
    )
    assert not any(info.values()), info
    compare(run(ours, *inputs()), run(theirs.eval(), *inputs()))
    # the names on disk are transformers': its own save of the same model writes the same keys (box refinement's
    # class heads, one per layer here, it writes once: it ties them while they are equal)
    theirs.save_pretrained(tmp_path / "theirs")
    written, rewritten = (
        set(load_file(tmp_path / "ours" / "model.safetensors")),
        set(load_file(tmp_path / "theirs" / "model.safetensors")),
    )
    assert rewritten <= written
    assert all(re.match(r"class_embed\.[1-9]", k) for k in written - rewritten)


@pytest.mark.parametrize("case", ["plain", "box_refine"])
def test_transformers_in_memory_state_dict_loads_without_a_config(case):
    """transformers 5 renames keys in memory (`backbone.model`, `mlp.fc1`, `o_proj`) and holds tied heads under
    every name; its `state_dict()` alone (the config read off the tensors) gives the same model."""
    theirs = randomize(hf_twin(config(**CASES[case])))
    ours = DeformableDetrForObjectDetection.from_pretrained(None, state_dict=theirs.state_dict())
    assert ours.config.with_box_refine == (case == "box_refine")
    compare(run(ours, *inputs()), run(theirs, *inputs()))
    auto = AutoModelForObjectDetection.from_pretrained(None, state_dict=theirs.state_dict())
    assert type(auto) is DeformableDetrForObjectDetection


def hf_resnet_to_timm(key: str) -> str:
    """transformers' ResNet names -> timm's (`embedder.embedder.convolution` -> `conv1`, `encoder.stages.1.layers.0.
    layer.2.normalization` -> `layer2.0.bn3`, `...shortcut.convolution` -> `...downsample.0`)."""
    rules = [
        (r"embedder\.embedder\.convolution\.", lambda m: "conv1."),
        (r"embedder\.embedder\.normalization\.", lambda m: "bn1."),
        (
            r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{int(m[3] == 'normalization')}.",
        ),
        (
            r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.",
        ),
        (
            r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.",
        ),
    ]
    for pattern, make in rules:
        key = re.sub(pattern, make, key)
    return key


def test_timm_resnet50_backbone_matches_transformers_resnet(tmp_path):
    """transformers runs timm only with torchvision, so its own ResNet-50 stands in: the same network under other
    names. Its weights, renamed to timm's, run in pvtkit's timm ResNet to the same detections."""
    backbone = transformers.ResNetConfig(out_features=["stage2", "stage3", "stage4"])
    hf_config = transformers.DeformableDetrConfig(backbone_config=backbone, use_timm_backbone=False, **TINY)
    theirs = randomize(transformers.DeformableDetrForObjectDetection(hf_config))
    theirs.save_pretrained(tmp_path)
    state = {hf_resnet_to_timm(k): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    ours = config({"model_type": "timm_backbone", "backbone": "resnet50", "out_indices": [2, 3, 4]})
    ours, info = DeformableDetrForObjectDetection.from_pretrained(
        None, state_dict=state, config=ours, output_loading_info=True
    )
    assert not any(info.values()), info
    x, mask = inputs(size=(96, 128))
    compare(run(ours, x, mask), run(theirs, x, mask))
    # what trains is transformers' rule for its timm backbone: `layer2`..`layer4`. (Its rule for its own ResNet looks
    # for "stage.1" in names that read "stages.1", and so freezes that whole backbone.)
    prefix = "model.backbone.conv_encoder.model."
    trainable = {n for n, p in DeformableDetrForObjectDetection(ours.config).named_parameters() if p.requires_grad}
    assert {n.split(".")[4] for n in trainable if n.startswith(prefix)} == {"layer2", "layer3", "layer4"}
    assert all(
        n.startswith(prefix + "layer")
        for n in state
        if n.startswith(prefix) and n.split(".")[4] in ("layer2", "layer3", "layer4")
    )


@pytest.mark.parametrize("name", ["resnet50", "resnet50_dc5", "resnet101"])
def test_timm_resnet_names_shapes_and_convolutions_are_timms(name):
    """Against timm itself (`tests/fixtures/make_timm_fixtures.py`): every state-dict key and shape (timm's
    BatchNorm counters aside), every convolution's stride, padding and dilation (DC5's dilated last stage), and the
    maps' shapes."""
    reference = json.loads((FIXTURES / "timm_resnet_shapes.json").read_text())[name]
    arguments = reference["arguments"]
    backbone = TimmBackboneConfig(backbone=name.split("_")[0], **arguments)
    with torch.device("meta"):
        model = TimmResNet(backbone)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {
        k: v for k, v in reference["state"].items() if not k.endswith("num_batches_tracked")
    }
    convs = {
        n: [list(m.stride), list(m.padding), list(m.dilation)]
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    }
    assert convs == reference["convs"]
    strides = backbone.stage_strides
    assert [
        [1, c, -(-64 // s), -(-96 // s)] for c, s in zip(model.channels, [strides[i] for i in backbone.out_indices])
    ] == reference["maps"]


@pytest.mark.parametrize("case", ["plain", "two_stage"])
def test_gradients_match_transformers(tmp_path, case):
    """Train mode (dropout 0): every parameter's gradient, by its name on disk, equals transformers'."""
    theirs = randomize(hf_twin(config(**CASES[case]))).train()
    theirs.save_pretrained(tmp_path / "model")
    ours = DeformableDetrForObjectDetection.from_pretrained(tmp_path / "model").train()
    if case == "plain":  # and the layers' activations recomputed in the backward
        ours.gradient_checkpointing_enable()
    x, mask = inputs()
    for model in (ours, theirs):
        out = model(x, pixel_mask=mask)
        weights = [
            torch.randn(t.shape, generator=torch.Generator().manual_seed(2)) for t in (out.logits, out.pred_boxes)
        ]
        ((out.logits * weights[0]).sum() + (out.pred_boxes * weights[1]).sum()).backward()
    for p in theirs.parameters():  # what this loss does not reach (the proposals' heads) has no gradient
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    expected = gradients_by_disk_name(theirs, tmp_path / "grads")
    got = {n: p.grad for n, p in ours.named_parameters()}
    assert set(got) == set(expected)
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        mine = got[name] if got[name] is not None else torch.zeros_like(grad)
        assert_close(mine, grad, what=f"gradient of {name}", floor=1e-3 * scale)


def test_labelled_loss_matches_transformers(tmp_path):
    """With labels: the loss and every term of `loss_dict` (auxiliary losses of every decoder layer included)."""
    pytest.importorskip("scipy")
    hf_model = randomize(hf_twin(config(with_box_refine=True, auxiliary_loss=True)))
    hf_model.save_pretrained(tmp_path)
    ours = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    torch.manual_seed(3)
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.4, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])},
    ]
    x, mask = inputs()
    with torch.no_grad():
        a = ours(x, pixel_mask=mask, labels=labels)
        b = hf_model(x, pixel_mask=mask, labels=labels)
    assert_close(a.loss, b.loss, what="loss")
    assert set(a.loss_dict) == set(b.loss_dict)
    for name, value in b.loss_dict.items():
        assert_close(a.loss_dict[name], value, what=name, floor=1e-6)
    assert len(a.auxiliary_outputs) == TINY["decoder_layers"] - 1


# ---- checkpoints, the sampling paths, export ------------------------------------------------------------------------


def test_checkpoint_round_trip_and_state_dict(tmp_path):
    model = randomize(DeformableDetrForObjectDetection(config(with_box_refine=True)))
    model.save_pretrained(tmp_path)
    again = DeformableDetrForObjectDetection.from_pretrained(tmp_path)
    assert again.config == model.config
    state, loaded = model.state_dict(), again.state_dict()
    assert list(state) == list(loaded) and all(torch.equal(state[k], loaded[k]) for k in state)
    fresh = DeformableDetrForObjectDetection(model.config)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(run(fresh.eval(), *inputs()).logits, run(model, *inputs()).logits)
    # box refinement's box heads are the decoder's: once, under its name
    assert any(k.startswith("model.decoder.bbox_embed.1.") for k in state) and not any(
        k.startswith("bbox_embed") for k in state
    )
    # the detector's encoder-decoder alone: without the heads there is no refinement after the first decoder layer
    bare, full = run(DeformableDetrModel.from_pretrained(tmp_path), *inputs()), run(model, *inputs())
    assert_close(bare.encoder_last_hidden_state, full.encoder_last_hidden_state)
    assert_close(bare.intermediate_hidden_states[:, 0], full.intermediate_hidden_states[:, 0])


def test_fast_sampling_path_matches_transformers_sampling():
    """CPU inference samples with one embedding bag; it equals transformers' grid_sample sampling (and pvtkit's,
    which the export runs), samples outside the maps and on their edges included."""
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    torch.manual_seed(4)
    shapes = [(13, 17), (7, 9), (4, 5), (1, 3)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8)
    locations = torch.rand(2, 11, 4, len(shapes), 3, 2) * 1.4 - 0.2
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0])  # exactly on the edges
    weights = torch.rand(2, 11, 4, len(shapes), 3).softmax(-1)
    size = torch.tensor(shapes)
    start = torch.cat([size.new_zeros(1), size.prod(1).cumsum(0)[:-1]])
    expected = MultiScaleDeformableAttention()(value, size, shapes, start, locations, weights, 64)
    with torch.no_grad(), cpu_kernels.record() as ran:
        fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert ran["deformable_gather"] == 1
    with cpu_kernels.flags(enabled=False):
        plain = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert_close(fast, expected, tol=1e-6, what="embedding-bag sampling")
    assert_close(plain, expected, tol=1e-6, what="grid_sample sampling")


def test_torch_export_with_dynamic_batch_and_size():
    model = randomize(DeformableDetrForObjectDetection(config(with_box_refine=True)))
    x, mask = inputs(2, (128, 160))
    dims = {
        0: torch.export.Dim("batch", max=16),
        2: torch.export.Dim("h", min=128, max=2048),
        3: torch.export.Dim("w", min=128, max=2048),
    }
    program = torch.export.export(
        model,
        (x,),
        {"pixel_mask": mask},
        dynamic_shapes={"pixel_values": dims, "pixel_mask": {0: dims[0], 1: dims[2], 2: dims[3]}},
    )
    x, mask = inputs(3, (197, 231))
    with torch.no_grad():
        got, expected = program.module()(x, pixel_mask=mask), model(x, pixel_mask=mask)
    compare(got, expected, ("logits", "pred_boxes"))


@pytest.mark.slow
@pytest.mark.integration
def test_onnx_export_samples_with_grid_sample_at_any_batch_and_size(tmp_path):
    """pvtkit's ONNX export of the detector: GridSample in the graph, checked in ONNX Runtime at several batches and
    sizes against the model (`export_onnx` verifies, and fails, past 1e-4)."""
    pytest.importorskip("onnxruntime")
    import onnx

    from pvtkit.export import export_onnx

    model = randomize(DeformableDetrForObjectDetection(config(decoder_layers=1, num_feature_levels=3)))
    report = export_onnx(model, tmp_path / "detr.onnx", image_size=(128, 160))
    assert report.verified and report.output_names == ["logits", "pred_boxes"] and report.max_rel_diff < 1e-5
    assert "GridSample" in {node.op_type for node in onnx.load(tmp_path / "detr.onnx").graph.node}


# ---- the config ------------------------------------------------------------------------------------------------


def test_config_fields_and_defaults_are_transformers():
    ours, theirs = DeformableDetrConfig().to_dict(), json.loads(transformers.DeformableDetrConfig().to_json_string())
    skip = {
        "transformers_version",
        "architectures",
        "chunk_size_feed_forward",
        "_name_or_path",
        "dtype",
        "backbone_config",
    }
    assert {k: ours.get(k, "missing") for k in theirs if k not in skip} == {
        k: v for k, v in theirs.items() if k not in skip
    }
    ours_backbone, theirs_backbone = ours["backbone_config"], theirs["backbone_config"]
    for key in (
        "model_type",
        "backbone",
        "num_channels",
        "features_only",
        "out_indices",
        "output_stride",
        "use_pretrained_backbone",
    ):
        assert ours_backbone[key] == theirs_backbone[key], key
    # ours loads in transformers, and back: every field kept (transformers adds its generic keys, kept too)
    again = DeformableDetrConfig.from_dict(transformers.DeformableDetrConfig.from_dict(ours).to_dict()).to_dict()
    generic = {"architectures", "chunk_size_feed_forward", "dtype", "is_encoder_decoder"}
    strip = lambda d: {k: v for k, v in d.items() if k not in generic}  # noqa: E731
    assert strip({**again, "backbone_config": None}) == strip({**ours, "backbone_config": None})
    assert strip(again["backbone_config"]) == strip(ours["backbone_config"])
    assert DeformableDetrConfig(d_model=64).hidden_size == 64


def test_legacy_backbone_keys_of_old_hub_configs():
    """Configs written before transformers 5 name the backbone with top-level keys (DC5, single scale here)."""
    old = {
        "model_type": "deformable_detr",
        "backbone": "resnet50",
        "use_timm_backbone": True,
        "backbone_config": None,
        "use_pretrained_backbone": True,
        "backbone_kwargs": None,
        "dilation": True,
        "num_feature_levels": 1,
    }
    c = DeformableDetrConfig.from_dict(old)
    b = c.backbone_config
    assert (b.backbone, b.out_indices, b.output_stride, c.backbone_channels) == ("resnet50", [4], 16, [2048])
    assert not {"use_timm_backbone", "backbone", "backbone_kwargs", "use_pretrained_backbone"} & set(c.to_dict())
    t = transformers.DeformableDetrConfig.from_dict(old).to_dict()["backbone_config"]
    assert (t["out_indices"], t["output_stride"]) == (b.out_indices, b.output_stride)


def test_pvt_v2_docs_example_with_pvtkit_auto_classes(tmp_path):
    """PVTv2's docs: `AutoConfig.from_pretrained("SenseTime/deformable-detr", backbone_config=AutoConfig.
    from_pretrained("OpenGVLab/pvt_v2_b5"), use_timm_backbone=False)`, on local copies of the two configs."""
    (tmp_path / "detr").mkdir()
    (tmp_path / "pvt").mkdir()
    legacy = {
        "model_type": "deformable_detr",
        "backbone": "resnet50",
        "use_timm_backbone": True,
        "use_pretrained_backbone": True,
        "dilation": False,
        "num_labels": 91,
    }
    (tmp_path / "detr" / "config.json").write_text(json.dumps(legacy))
    pvtkit.PvtV2Config.from_variant("b5").save_pretrained(tmp_path / "pvt")
    c = AutoConfig.from_pretrained(
        tmp_path / "detr", backbone_config=AutoConfig.from_pretrained(tmp_path / "pvt"), use_timm_backbone=False
    )
    assert type(c.backbone_config).__name__ == "PvtV2Config" and c.backbone_channels == [512]
    with torch.device("meta"):
        model = DeformableDetrForObjectDetection(c)
    assert type(model.model.backbone.conv_encoder.model).__name__ == "PvtV2Backbone"
    assert [p[0].in_channels for p in model.model.input_proj] == [512, 512, 256, 256]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"two_stage": True}, "two_stage=True needs with_box_refine=True"),
        ({"backbone_config": {"model_type": "resnet"}}, r"model_type 'resnet' is not supported.*pvt_v2.*timm_backbone"),
        ({"backbone_config": {"model_type": "timm_backbone", "backbone": "vgg16"}}, "resnet50, resnet101, resnet152"),
        ({"use_timm_backbone": False}, "needs a backbone_config"),
        ({"d_model": 48}, "multiple of 32"),
        ({"num_feature_levels": 2}, "returns 3 feature maps"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
    ],
)
def test_config_errors_say_what_is_wrong(fields, message):
    with pytest.raises(ValueError, match=message):
        DeformableDetrConfig(**fields)


@pytest.mark.parametrize("name", list(DeformableDetrConfig.variants))
def test_variant_table_matches_transformers_architecture(name):
    """Every variant has transformers' architecture, by parameter count (its own ResNet stands in for timm's, the same
    network; DC5 changes no parameter); SenseTime's ResNet-50 models have the paper's 40M (34M single-scale)."""
    c = DeformableDetrConfig.from_variant(name)
    fields = c.to_dict()
    if isinstance(c.backbone_config, TimmBackboneConfig):
        out = [f"stage{i}" for i in c.backbone_config.out_indices]
        fields.update(
            backbone_config=transformers.ResNetConfig(out_features=out), use_timm_backbone=False, dilation=False
        )
    with torch.device("meta"):
        ours = DeformableDetrForObjectDetection(c)
        theirs = transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig.from_dict(fields))
    count = lambda m: sum(p.numel() for p in set(m.parameters()))  # noqa: E731
    # box refinement alone: transformers ties the class heads of all layers into one, pvtkit keeps one per layer
    untied = (c.decoder_layers - 1) * (c.d_model + 1) * c.num_labels if c.with_box_refine and not c.two_stage else 0
    assert count(ours) == count(theirs) + untied
    if name in ("deformable_detr", "deformable_detr_single_scale"):
        assert round(count(ours) / 1e6) == {"deformable_detr": 40, "deformable_detr_single_scale": 34}[name]


# ---- the rest of the API ---------------------------------------------------------------------------------------


def test_backbone_freezing_auto_classes_and_labels(tmp_path):
    model = DeformableDetrForObjectDetection(config())
    model.model.freeze_backbone()
    assert not any(p.requires_grad for p in model.model.backbone.parameters())
    model.model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())
    model.save_pretrained(tmp_path)
    assert type(AutoModelForObjectDetection.from_pretrained(tmp_path)) is DeformableDetrForObjectDetection
    assert type(AutoModel.from_pretrained(tmp_path)) is DeformableDetrModel
    assert "AutoModelForObjectDetection" in pvtkit.__all__
    model.set_labels(["cat", "dog"])  # another number of classes: new heads, the same structure and names
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.heads[0][0].out_features == 2
    assert run(model.eval(), *inputs()).logits.shape == (2, TINY["num_queries"], 2)
    with pytest.raises(ValueError, match="DeformableDetrForObjectDetection"):
        DeformableDetrModel(config(**CASES["two_stage"]))(*inputs())


def test_learned_position_embeddings_cover_50_by_50():
    model = DeformableDetrForObjectDetection(config(position_embedding_type="learned")).eval()
    with pytest.raises(ValueError, match="cover 50 x 50 pixels of a level, not 53 x 53"):
        model(torch.zeros(1, 3, 420, 420))  # the first level (stride 8) is 53 x 53
