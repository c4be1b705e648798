"""SegFormer and PVTv2 + SegFormer head: parity with transformers (same random weights, through the files
transformers writes), the MiT variant table, losses and gradients, round trips, the NVlabs and mmsegmentation
layouts, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

import pvtkit
from pvtkit import (
    AutoModelForSemanticSegmentation,
    PvtV2ForSemanticSegmentation,
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerModel,
)
from pvtkit.models.segformer import VARIANTS

from helpers import assert_close, gradients_by_disk_name

HF = {
    SegformerModel: transformers.SegformerModel,
    SegformerForImageClassification: transformers.SegformerForImageClassification,
    SegformerForSemanticSegmentation: transformers.SegformerForSemanticSegmentation,
}
TINY = dict(
    depths=[1, 2, 1, 1],
    hidden_sizes=[16, 32, 48, 64],
    num_attention_heads=[1, 2, 3, 4],
    decoder_hidden_size=32,
    num_labels=5,
    drop_path_rate=0.0,
    classifier_dropout_prob=0.0,
)
# Parameter counts (millions) of nvidia/segformer-b0..b5 with the 150-class ADE20k head, as the Hub lists them.
PUBLISHED_PARAMS_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


def transformers_twin(cls, tmp_path, **fields):
    """transformers' model (eager attention, so it returns attention maps) and ours, loaded from the files
    transformers wrote: its on-disk names are the contract."""
    theirs = HF[cls]._from_config(transformers.SegformerConfig(**fields), attn_implementation="eager").eval()
    folder = tmp_path / f"hf-{cls.__name__}"
    theirs.save_pretrained(folder)
    ours, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    return ours.eval(), theirs, folder


def compare(a, b, names):
    for name in names:
        x, y = a[name], b[name]
        if isinstance(x, tuple):
            assert len(x) == len(y), f"{name}: {len(x)} vs {len(y)} entries"
            for i, (p, q) in enumerate(zip(x, y)):
                assert_close(p, q, what=f"{name}[{i}]")
        else:
            assert_close(x, y, what=name)


# ---- parity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 67, 93), (3, 3, 97, 41)])
def test_encoder_matches_transformers_at_odd_sizes(tmp_path, shape):
    ours, theirs, _ = transformers_twin(SegformerModel, tmp_path, **TINY)
    x = torch.randn(shape)
    with torch.no_grad():
        a = ours(x, output_hidden_states=True, output_attentions=True)
        b = theirs(x, output_hidden_states=True, output_attentions=True)
    assert list(a.keys()) == list(b.keys()) == ["last_hidden_state", "hidden_states", "attentions"]
    compare(a, b, ["last_hidden_state", "hidden_states", "attentions"])
    assert a.last_hidden_state.is_contiguous() and a.hidden_states[0].is_contiguous()
    with torch.no_grad():
        plain = ours(x)
    assert plain.hidden_states is None and plain.attentions is None  # only when asked for, as there


def test_reshape_last_stage_false_gives_tokens_like_transformers(tmp_path):
    ours, theirs, _ = transformers_twin(SegformerModel, tmp_path, **TINY, reshape_last_stage=False)
    x = torch.randn(2, 3, 70, 52)
    with torch.no_grad():
        a, b = ours(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
    assert a.last_hidden_state.shape == (2, 3 * 2, 64)  # (B, N, C)
    compare(a, b, ["last_hidden_state", "hidden_states"])


def test_classifier_matches_transformers(tmp_path):
    ours, theirs, _ = transformers_twin(SegformerForImageClassification, tmp_path, **TINY)
    x, labels = torch.randn(3, 3, 75, 61), torch.tensor([0, 4, 2])
    with torch.no_grad():
        a, b = ours(x, labels=labels, output_hidden_states=True), theirs(x, labels=labels, output_hidden_states=True)
    compare(a, b, ["loss", "logits", "hidden_states"])


@pytest.mark.parametrize("ignored", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 64, 96), (1, 3, 83, 59)])
def test_segmentation_logits_and_loss_match_transformers(tmp_path, shape, ignored):
    ours, theirs, _ = transformers_twin(SegformerForSemanticSegmentation, tmp_path, **TINY)
    x = torch.randn(shape)
    labels = torch.randint(0, 5, (shape[0], *shape[2:]))
    if ignored:
        labels[:, : shape[2] // 3] = 255  # a third of every map is unlabelled
    with torch.no_grad():
        a = ours(x, labels=labels, output_attentions=True, output_hidden_states=True)
        b = theirs(x, labels=labels, output_attentions=True, output_hidden_states=True)
    assert a.logits.shape == (shape[0], 5, (shape[2] + 3) // 4, (shape[3] + 3) // 4)
    compare(a, b, ["loss", "logits", "hidden_states", "attentions"])


def test_binary_segmentation_loss_matches_transformers(tmp_path):
    ours, theirs, _ = transformers_twin(SegformerForSemanticSegmentation, tmp_path, **{**TINY, "num_labels": 1})
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    labels[0, :10] = 255
    with torch.no_grad():
        a, b = ours(x, labels=labels), theirs(x, labels=labels)
    compare(a, b, ["loss", "logits"])


def test_train_mode_loss_and_every_gradient_match_transformers(tmp_path):
    fields = {**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    ours, theirs, _ = transformers_twin(SegformerForSemanticSegmentation, tmp_path, **fields)
    ours.train(), theirs.train()  # BatchNorm on batch statistics, in both
    x = torch.randn(2, 3, 72, 88)
    labels = torch.randint(0, 5, (2, 72, 88))
    labels[1, 30:] = 255
    a, b = ours(x, labels=labels), theirs(x, labels=labels)
    assert_close(a.loss, b.loss, what="loss")
    a.loss.backward(), b.loss.backward()
    expected = gradients_by_disk_name(theirs, tmp_path / "grads")
    scale = max(g.abs().max().item() for g in expected.values())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        # Gradients that are zero in exact arithmetic hold only rounding noise: a key bias (softmax cancels it) and
        # every per-channel shift the decode head's train-mode BatchNorm subtracts again (the projections' biases,
        # the last stage's LayerNorm bias).
        if expected[name].abs().max() <= 1e-6 * scale:
            assert p.grad.abs().max() <= 1e-6 * scale, f"{name}: gradient {p.grad.abs().max():.3g} should be ~0"
            continue
        assert_close(p.grad, expected[name], floor=1e-6 * scale, what=f"gradient of {name}")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mit_variants_match_transformers(tmp_path, name):
    """Every published MiT size with its decode head, once, at an odd non-square size."""
    fields = {**SegformerConfig.from_variant(name).to_dict(), "num_labels": 7}
    fields = {k: v for k, v in fields.items() if k not in ("model_type", "architectures", "transformers_version")}
    ours, theirs, _ = transformers_twin(SegformerForSemanticSegmentation, tmp_path, **fields)
    x = torch.randn(1, 3, 75, 53)
    with torch.no_grad():
        a, b = ours(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
    compare(a, b, ["logits", "hidden_states"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_parameter_counts(name):
    with torch.device("meta"):
        model = SegformerForSemanticSegmentation(SegformerConfig.from_variant(name, num_labels=150))
    assert round(model.num_parameters() / 1e6, 1) == PUBLISHED_PARAMS_M[name]
    assert SegformerConfig.from_variant(f"mit_{name}").depths == list(VARIANTS[name]["depths"])


# ---- PVTv2 with the SegFormer head -----------------------------------------------------------------------------


def test_pvt_v2_segmentation_is_transformers_pvt_v2_under_transformers_segformer_head(tmp_path, caplog):
    """An ImageNet PVTv2 checkpoint starts a segmentation model: the encoder loads, the head starts fresh; the
    logits are transformers' SegformerDecodeHead applied to transformers' PvtV2Model's stage maps."""
    from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

    config = dict(
        depths=[1, 1, 2, 1],
        hidden_sizes=[16, 24, 40, 48],
        num_attention_heads=[1, 2, 5, 4],
        mlp_ratios=[2, 2, 2, 2],
        num_labels=6,
    )
    encoder = transformers.PvtV2ForImageClassification(transformers.PvtV2Config(**config)).eval()
    encoder.save_pretrained(tmp_path / "imagenet")
    ours = PvtV2ForSemanticSegmentation.from_pretrained(tmp_path / "imagenet", decoder_hidden_size=32).eval()
    assert all(k.startswith("decode_head.") for k in ours.newly_initialized_weights)
    head = SegformerDecodeHead(
        transformers.SegformerConfig(hidden_sizes=config["hidden_sizes"], decoder_hidden_size=32, num_labels=6)
    ).eval()
    state = {k.replace("linear_c.", "linear_projections."): v for k, v in ours.decode_head.state_dict().items()}
    head.load_state_dict(state, strict=True)
    x, labels = torch.randn(2, 3, 77, 90), torch.randint(0, 6, (2, 77, 90))
    with torch.no_grad():
        a = ours(x, labels=labels)
        maps = encoder.pvt_v2(x, output_hidden_states=True).hidden_states
        expected = head(maps)
    assert_close(a.logits, expected, what="logits")
    up = F.interpolate(expected, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    assert_close(a.loss, F.cross_entropy(up, labels, ignore_index=255), what="loss")
    ours.save_pretrained(tmp_path / "seg")
    again = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "seg")
    assert type(again) is PvtV2ForSemanticSegmentation and again.config.decoder_hidden_size == 32
    assert isinstance(pvtkit.auto.default_image_processor(again), pvtkit.SegformerImageProcessor)


# ---- checkpoints both ways -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(HF))
def test_checkpoints_written_by_pvtkit_load_in_transformers(tmp_path, cls):
    ours = cls(SegformerConfig(**TINY)).eval()
    ours.save_pretrained(tmp_path / "ours")
    theirs, info = HF[cls].from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        a, b = ours(x), theirs.eval()(x)
    assert_close(a[0], b[0], what=cls.__name__)
    again = pvtkit.AutoModel.from_pretrained(tmp_path / "ours")
    assert type(again) is SegformerModel  # the Auto classes dispatch on model_type


def test_config_round_trips_with_transformers(tmp_path):
    config = SegformerConfig(**TINY, semantic_loss_ignore_index=0, id2label={i: f"c{i}" for i in range(5)})
    config.save_pretrained(tmp_path)
    theirs = transformers.SegformerConfig.from_pretrained(tmp_path)
    for key in ("depths", "hidden_sizes", "decoder_hidden_size", "semantic_loss_ignore_index", "sr_ratios"):
        assert getattr(theirs, key) == getattr(config, key), key
    theirs.save_pretrained(tmp_path / "back")
    back = pvtkit.AutoConfig.from_pretrained(tmp_path / "back")
    assert isinstance(back, SegformerConfig) and back.id2label == config.id2label


def test_bare_weights_infer_the_architecture(tmp_path):
    ours = SegformerForSemanticSegmentation(SegformerConfig(**TINY)).eval()
    save_file(ours.state_dict(), tmp_path / "bare.safetensors")
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "bare.safetensors")
    c = loaded.config
    assert (c.depths, c.hidden_sizes, c.num_attention_heads, c.num_labels, c.decoder_hidden_size) == (
        [1, 2, 1, 1],
        [16, 32, 48, 64],
        [1, 2, 3, 4],
        5,
        32,
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(loaded.eval()(x).logits, ours(x).logits)


# ---- the NVlabs release and mmsegmentation ---------------------------------------------------------------------


def to_nvlabs(state):
    """Our (transformers') names -> the NVlabs/SegFormer release's (mmseg 0.x), written independently of pvtkit's
    converter: fused kv, 1-based stage names, ConvModule's conv/bn, the unused conv_seg of mmseg 0.x heads."""
    block = (
        ("layer_norm_1", "norm1"),
        ("layer_norm_2", "norm2"),
        ("attention.self.query", "attn.q"),
        ("attention.self.key", "attn.k"),
        ("attention.self.value", "attn.v"),
        ("attention.self.sr", "attn.sr"),
        ("attention.self.layer_norm", "attn.norm"),
        ("attention.output.dense", "attn.proj"),
        ("mlp.dense1", "mlp.fc1"),
        ("mlp.dense2", "mlp.fc2"),
    )
    head = (("linear_fuse.", "linear_fuse.conv."), ("batch_norm.", "linear_fuse.bn."), ("classifier.", "linear_pred."))
    out = {}
    for k, v in state.items():
        parts = k.removeprefix("segformer.encoder.").split(".")
        if parts[0] == "patch_embeddings":
            name = f"backbone.patch_embed{int(parts[1]) + 1}.{parts[2].replace('layer_norm', 'norm')}.{parts[3]}"
        elif parts[0] == "block":
            rest = ".".join(parts[3:])
            for a, b in block:
                rest = rest.replace(a, b)
            name = f"backbone.block{int(parts[1]) + 1}.{parts[2]}.{rest}"
        elif parts[0] == "layer_norm":
            name = f"backbone.norm{int(parts[1]) + 1}.{parts[2]}"
        elif k.startswith("decode_head.linear_c."):
            name = f"decode_head.linear_c{int(k.split('.')[2]) + 1}." + ".".join(k.split(".")[3:])
        else:
            name = k
            for a, b in head:
                name = name.replace("decode_head." + a, "decode_head." + b)
        out[name] = v
    for k in [k for k in out if ".attn.k." in k]:
        out[k.replace(".attn.k.", ".attn.kv.")] = torch.cat([out.pop(k), out.pop(k.replace(".attn.k.", ".attn.v."))])
    out["decode_head.conv_seg.weight"] = torch.zeros(5, 32, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.zeros(5)
    return out


def test_nvlabs_checkpoint_converts_and_loads_in_transformers(tmp_path):
    ours = SegformerForSemanticSegmentation(SegformerConfig(**TINY)).eval()
    nvlabs = to_nvlabs(ours.state_dict())
    assert "backbone.block1.0.attn.kv.weight" in nvlabs and "decode_head.linear_c1.proj.weight" in nvlabs
    torch.save({"state_dict": nvlabs, "meta": {"CLASSES": list("abcde")}}, tmp_path / "segformer.b0.pth")
    pvtkit.convert_checkpoint(tmp_path / "segformer.b0.pth", tmp_path / "converted")
    theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "converted").eval()
    x = torch.randn(1, 3, 96, 72)
    with torch.no_grad():
        assert_close(theirs(x).logits, ours(x).logits, what="converted logits")
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "converted")
    assert type(processor).__name__.startswith("SegformerImageProcessor")


def to_mmseg(state):
    """Our encoder names -> mmsegmentation 1.x's MixVisionTransformer (`backbone.layers.{i}.{0,1,2}`), written
    independently of pvtkit: q/k/v packed as nn.MultiheadAttention's in_proj, MixFFN's 1x1 convs."""
    out = {}
    for k, v in state.items():
        if not k.startswith("segformer.encoder."):
            continue
        parts = k.removeprefix("segformer.encoder.").split(".")
        kind, i = parts[0], parts[1]
        if kind == "patch_embeddings":
            name = f"layers.{i}.0." + ".".join(parts[2:]).replace("proj", "projection").replace("layer_norm", "norm")
        elif kind == "layer_norm":
            name = f"layers.{i}.2.{parts[2]}"
        else:
            rest = ".".join(parts[3:])
            for a, b in (
                ("layer_norm_1", "norm1"),
                ("layer_norm_2", "norm2"),
                ("attention.self.sr", "attn.sr"),
                ("attention.self.layer_norm", "attn.norm"),
                ("attention.output.dense", "attn.attn.out_proj"),
                ("mlp.dense1", "ffn.layers.0"),
                ("mlp.dwconv.dwconv", "ffn.layers.1"),
                ("mlp.dense2", "ffn.layers.4"),
            ):
                rest = rest.replace(a, b)
            if ".ffn.layers.0." in f".{rest}" or ".ffn.layers.4." in f".{rest}":
                v = v[:, :, None, None] if v.ndim == 2 else v
            name = f"layers.{i}.1.{parts[2]}.{rest}"
        out["backbone." + name] = v
    for k in [k for k in out if k.endswith("attention.self.query.weight")]:
        base = k.removesuffix("attention.self.query.weight")
        for suffix in ("weight", "bias"):
            out[base + f"attn.attn.in_proj_{suffix}"] = torch.cat(
                [out.pop(base + f"attention.self.{p}.{suffix}") for p in ("query", "key", "value")]
            )
    return out


def test_mmseg_checkpoint_converts_its_encoder_and_loads_in_transformers(tmp_path, caplog):
    ours = SegformerForSemanticSegmentation(SegformerConfig(**TINY)).eval()
    mmseg = to_mmseg(ours.state_dict())
    assert "backbone.layers.0.1.0.attn.attn.in_proj_weight" in mmseg
    mmseg["decode_head.convs.0.conv.weight"] = torch.zeros(32, 16, 1, 1)  # SegformerHead's per-stage ConvModules
    torch.save({"state_dict": mmseg}, tmp_path / "mmseg.pth")
    with caplog.at_level("WARNING", logger="pvtkit"):
        pvtkit.convert_checkpoint(tmp_path / "mmseg.pth", tmp_path / "converted")
    assert "SegformerHead" in caplog.text and "decode_head.convs.0.conv.weight" in caplog.text
    theirs = transformers.SegformerModel.from_pretrained(tmp_path / "converted").eval()
    x = torch.randn(2, 3, 64, 88)
    with torch.no_grad():
        assert_close(theirs(x).last_hidden_state, ours.segformer(x).last_hidden_state, what="converted encoder")


# ---- bad input -------------------------------------------------------------------------------------------------


def test_bad_labels_and_inputs_are_named():
    model = SegformerForSemanticSegmentation(SegformerConfig(**TINY)).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"label value 7 is outside \[0, 5\) and is not the ignore index 255"):
        model(x, labels=torch.full((1, 32, 32), 7))
    with pytest.raises(ValueError, match=r"label value -1"):
        model(x, labels=torch.full((1, 32, 32), -1))
    with pytest.raises(ValueError, match=r"labels must be \(batch=1, height, width\).*got shape \(1, 3, 32, 32\)"):
        model(x, labels=torch.zeros(1, 3, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"smaller than the first stage's stride 4"):
        model(torch.randn(1, 3, 3, 40))
    assert model(x, labels=torch.full((1, 32, 32), 255)).loss.isnan()  # all ignored: transformers gives NaN too
    with pytest.raises(ValueError, match="decoder_hidden_size must be positive"):
        SegformerConfig(decoder_hidden_size=0)
    with pytest.raises(ValueError, match="stage 2 hidden size 64 is not divisible by 3 heads"):
        SegformerConfig(num_attention_heads=[1, 3, 5, 8])


def test_segformer_checkpoint_into_a_depth_model_is_refused(tmp_path):
    SegformerForSemanticSegmentation(SegformerConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"AutoModelForDepthEstimation has no 'segformer' model; it supports PVTv2, GLPN"
    ):
        pvtkit.AutoModelForDepthEstimation.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"is a SegFormer checkpoint \(transformers layout\), not a GLPN one"):
        pvtkit.GLPNForDepthEstimation.from_pretrained(tmp_path)
