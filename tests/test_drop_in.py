"""A drop-in for transformers users, and a good citizen of the PyTorch ecosystem: transformers' loading semantics,
the backbone API, transformers 5's method names, pytree outputs with torch.compile / torch.func, and the tools people
train with (transformers.Trainer, peft, accelerate, a transformers Deformable DETR on pvtkit's backbone), each used
for real on tiny models; and a Hub that cannot be reached fails fast."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import transformers

import pvtkit
import pvtkit.cli
from pvtkit import (
    PvtV2Backbone,
    PvtV2Config,
    PvtV2ForImageClassification,
    PvtV2Model,
    ViTConfig,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
)

from helpers import rel_err

pytestmark = pytest.mark.integration  # with the real transformers' Trainer, PEFT, Accelerate

PVT = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 1, 2], mlp_ratios=[2, 2, 2, 2])
VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=16,
    patch_size=4,
    encoder_stride=4,
)
CLASSES = [
    (PvtV2Model, PvtV2Config(**PVT)),
    (PvtV2ForImageClassification, PvtV2Config(**PVT, num_labels=3)),
    (PvtV2Backbone, PvtV2Config(**PVT, out_indices=[1, 3])),
    (ViTModel, ViTConfig(**VIT)),
    (ViTForImageClassification, ViTConfig(**VIT, num_labels=3)),
    (ViTForMaskedImageModeling, ViTConfig(**VIT)),
]


def pixels(cls: type, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16) if cls.__name__.startswith("ViT") else torch.randn(batch, 3, 40, 48)


# ---- 1. loading semantics -----------------------------------------------------------------------------------------


def test_the_in21k_recipe_an_encoder_with_pooler_into_a_classifier(tmp_path, caplog):
    """`ViTModel` checkpoints (pooler, no classifier: google/vit-base-patch16-224-in21k) start fine-tunes: the pooler is
    reported and skipped, the new head reported, the encoder loaded; `output_loading_info` says the same."""
    torch.manual_seed(0)
    encoder = ViTModel(ViTConfig(**VIT)).eval()
    encoder.save_pretrained(tmp_path / "in21k")
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        model, info = ViTForImageClassification.from_pretrained(
            tmp_path / "in21k", num_labels=5, output_loading_info=True
        )
    assert set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert sorted(info["unexpected_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]  # the checkpoint's names
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert "vit.pooler.dense.weight" in caplog.text and "classifier.weight" in caplog.text
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.vit(x).last_hidden_state, encoder(x).last_hidden_state)
    theirs, their_info = transformers.ViTForImageClassification.from_pretrained(
        tmp_path / "in21k", num_labels=5, output_loading_info=True
    )  # the reference reports the same keys
    assert sorted(their_info["missing_keys"]) == sorted(info["missing_keys"])
    with pytest.raises(pvtkit.LoadingError, match="pooler"):
        ViTForImageClassification.from_pretrained(tmp_path / "in21k", num_labels=5, strict=True)


def test_the_in21k_recipe_from_the_command_line(tmp_path):
    """`pvtkit train --model` an encoder-only ViT checkpoint with a pooler: it trains a classifier."""
    import numpy as np
    import PIL.Image

    torch.manual_seed(0)
    ViTModel(ViTConfig(**{**VIT, "image_size": 32, "patch_size": 8, "encoder_stride": 8})).save_pretrained(
        tmp_path / "in21k"
    )
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(4):
            PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "data" / label / f"{i}.png"
            )
    code = pvtkit.cli.main(
        [
            "train",
            "--data",
            str(tmp_path / "data"),
            "--model",
            str(tmp_path / "in21k"),
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--val-fraction",
            "0",
            "--num-workers",
            "0",
            "--image-size",
            "32",
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["architectures"] == ["ViTForImageClassification"]


def test_state_dict_without_a_path_and_what_stays_an_error(tmp_path):
    torch.manual_seed(0)
    source = PvtV2ForImageClassification(PvtV2Config(**PVT, num_labels=3)).eval()
    state, x = source.state_dict(), torch.randn(1, 3, 40, 48)
    given = PvtV2ForImageClassification.from_pretrained(None, config=source.config, state_dict=state)
    inferred = pvtkit.AutoModelForImageClassification.from_pretrained(
        state_dict=state, num_attention_heads=[1, 2, 1, 2]
    )
    with torch.no_grad():
        assert torch.equal(given(x).logits, source(x).logits) and torch.equal(inferred(x).logits, source(x).logits)
    with pytest.raises(ValueError, match="needs a path, a Hub id or a state_dict"):
        PvtV2Model.from_pretrained(None)
    with pytest.raises(ValueError, match="is a PVTv2 checkpoint .*not a ViT one"):  # another family
        ViTModel.from_pretrained(None, state_dict=state)
    with pytest.raises(pvtkit.LoadingError, match="another shape"):  # mis-shaped keys stay an error
        PvtV2ForImageClassification.from_pretrained(
            None, config=source.config.copy(hidden_sizes=[8, 16, 24, 40]), state_dict=state
        )


# ---- 2. the backbone API ------------------------------------------------------------------------------------------


def test_backbone_api_as_transformers_and_timm_have_it():
    config = PvtV2Config(**PVT, out_indices=[1, 3])
    backbone = PvtV2Backbone(config).eval()
    assert backbone.stage_names == ["stage1", "stage2", "stage3", "stage4"]
    assert (
        backbone.out_features == ["stage2", "stage4"] and backbone.channels == [16, 32] and backbone.strides == [8, 32]
    )
    info = backbone.feature_info  # timm's view
    assert info.channels() == [16, 32] and info.reduction() == [8, 32] and info.module_name(0) == "encoder.layers.1"
    assert [i["num_chs"] for i in info] == [16, 32]
    config.out_features = None  # re-aligned, as transformers' backbone configs do: the last stage
    assert config.out_indices == [3]
    config.out_indices = [0, 2]
    assert config.out_features == ["stage1", "stage3"] and config.to_dict()["out_features"] == ["stage1", "stage3"]
    maps = PvtV2Backbone(config).eval()(torch.randn(1, 3, 40, 48)).feature_maps
    assert [m.shape[1] for m in maps] == [8, 24]
    theirs = transformers.PvtV2Config(**PVT)
    theirs.out_indices = [0, 2]
    assert theirs.out_features == config.out_features  # the same rule as transformers'


# ---- 3. transformers 5 names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, config", CLASSES, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_methods_code_written_for_transformers_calls(cls, config):
    model = cls(config)
    assert model.activation_checkpointing_enable is not None and not model.is_activation_checkpointing
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and model.is_gradient_checkpointing
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Module) and model.get_output_embeddings() is None
    assert model.num_parameters(only_trainable=True) == model.num_parameters()
    assert model.base_model is getattr(model, model.base_model_prefix, model) and not model.can_generate()
    assert model.config.use_return_dict and model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.get_memory_footprint() >= model.num_parameters() * 4
    model.tie_weights()
    model.train()
    model.enable_input_require_grads()
    for p in embeddings.parameters():
        p.requires_grad_(False)  # frozen embeddings: the hook still lets gradients reach the rest
    out = model(pixels(cls))
    sum(t.float().sum() for t in torch.utils._pytree.tree_leaves(out)).backward()
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if p.requires_grad and "pooler" not in n and "mask_token" not in n
    )


def test_input_embeddings_and_counts_equal_transformers():
    torch.manual_seed(0)
    ours = ViTForImageClassification(ViTConfig(**VIT, num_labels=3))
    theirs = transformers.ViTForImageClassification(transformers.ViTConfig(**ours.config.to_dict()))
    assert ours.get_input_embeddings().projection.weight.shape == theirs.get_input_embeddings().projection.weight.shape
    assert ours.num_parameters() == theirs.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == theirs.num_parameters(exclude_embeddings=True)


# ---- 4. PyTorch-native ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, config", CLASSES, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_torch_compile_fullgraph_on_every_class(cls, config):
    """No graph break in eval or train (dynamo is what breaks graphs: the eager backend keeps the test quick)."""
    torch.manual_seed(0)
    model = cls(config)
    x = pixels(cls)
    for train in (False, True):
        model.train(train)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch.set_grad_enabled(train):
            got, expected = compiled(x), model(x)
        assert type(got) is type(expected) and got.keys() == expected.keys()
        if not train:
            for a, b in zip(got.to_tuple(), expected.to_tuple()):
                a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
                assert rel_err(a, b) <= 1e-5


def test_torch_func_takes_the_default_outputs():
    """`torch.func.vjp` of a function returning the model's own output object (a pytree node)."""
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**VIT, num_labels=3)).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(2, 3, 16, 16)
    out, vjp = torch.func.vjp(lambda p: torch.func.functional_call(model, p, (x,)), params)
    assert isinstance(out, pvtkit.ImageClassifierOutput)
    (grads,) = vjp(pvtkit.ImageClassifierOutput(logits=torch.ones_like(out.logits)))
    model.zero_grad()
    model(x).logits.sum().backward()
    assert rel_err(grads["classifier.weight"], model.classifier.weight.grad) <= 1e-6


def test_outputs_are_dicts_as_transformers_are():
    with torch.no_grad():
        out = PvtV2ForImageClassification(PvtV2Config(**PVT, num_labels=3))(
            torch.randn(1, 3, 40, 48), labels=torch.tensor([1])
        )
    assert isinstance(out, dict) and list(out) == ["loss", "logits"] and out.get("hidden_states") is None
    assert out[0] is out.loss and out["logits"] is out.logits and dict(out).keys() == {"loss", "logits"}
    out.hidden_states = (torch.zeros(1),)
    assert "hidden_states" in out and out.to_tuple()[2] is out.hidden_states


# ---- 5. the tools people train with ---------------------------------------------------------------------------------


def digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None].repeat(1, 3, 2, 2) / 8.0 - 1.0  # (n, 3, 16, 16)
    return x, torch.tensor(d.target[:n])


class Digits(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x, self.y = digits()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_transformers_trainer_fine_tunes_and_the_save_loads_in_both(tmp_path):
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**VIT, num_labels=10))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=32,
        num_train_epochs=3,
        learning_rate=3e-3,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Digits())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 4 and losses[-1] < 0.9 * losses[0]
    trainer.save_model(str(tmp_path / "weights"))  # for a model it did not make, Trainer saves the weights only
    model.save_pretrained(tmp_path / "model")  # config.json + model.safetensors
    x = Digits().x[:4]
    with torch.no_grad():
        expected = model.eval()(x).logits
        ours = ViTForImageClassification.from_pretrained(tmp_path / "model")(x).logits
        theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "model").eval()(x).logits
        weights_only = ViTForImageClassification.from_pretrained(
            tmp_path / "weights" / "model.safetensors", config=model.config
        )(x).logits
    assert (
        rel_err(ours, expected) <= 1e-6
        and rel_err(theirs, expected) <= 1e-5
        and rel_err(weights_only, expected) <= 1e-6
    )


@pytest.mark.parametrize(
    "cls, config, size",
    [
        (ViTForImageClassification, ViTConfig(**VIT, num_labels=10), 16),
        (PvtV2ForImageClassification, PvtV2Config(**PVT, num_labels=10), 32),
    ],
    ids=["vit", "pvt_v2"],
)
def test_peft_lora_trains_merges_saves_and_reloads(tmp_path, cls, config, size):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    x, y = digits(64)
    x = torch.nn.functional.interpolate(x, size=(size, size))
    model = get_peft_model(
        cls(config), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) < 0.2 * sum(p.numel() for p in model.parameters())
    opt, losses = torch.optim.AdamW(trainable, lr=1e-2), []
    model.train()
    for _ in range(15):
        loss = model(pixel_values=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        tuned = model(pixel_values=x).logits
        torch.manual_seed(0)
        reloaded = PeftModel.from_pretrained(cls(config), tmp_path / "adapter").eval()(pixel_values=x).logits
        merged = model.merge_and_unload()
        assert isinstance(merged, cls)
        assert rel_err(reloaded, tuned) <= 1e-6 and rel_err(merged(x).logits, tuned) <= 1e-5


def test_accelerate_prepares_model_optimizer_and_loader():
    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = PvtV2ForImageClassification(PvtV2Config(**PVT, num_labels=10))
    x, y = digits(128)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.nn.functional.interpolate(x, 32), y), batch_size=32, shuffle=True
    )
    model, opt, loader = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=3e-3), loader)
    losses = []
    for _ in range(4):
        for images, labels in loader:
            loss = model(pixel_values=images, labels=labels).loss
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_deformable_detr_runs_on_pvtkit_backbone():
    """The documentation's example: a transformers Deformable DETR whose backbone_config is a PVTv2 config; pvtkit's
    backbone with the same weights in its place gives the same detections."""
    torch.manual_seed(0)
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.PvtV2Config(**PVT, out_indices=[1, 2, 3]),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        num_feature_levels=3,
        num_labels=5,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    detr = transformers.DeformableDetrForObjectDetection(config).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = detr(pixel_values=x)
        detr.model.backbone.model = PvtV2Backbone.from_transformers(detr.model.backbone.model)
        got = detr(pixel_values=x)
    assert isinstance(detr.model.backbone.model, PvtV2Backbone)
    assert rel_err(got.logits, expected.logits) <= 1e-5 and rel_err(got.pred_boxes, expected.pred_boxes) <= 1e-5


# ---- 6. fail fast offline -------------------------------------------------------------------------------------------


def test_an_unreachable_hub_fails_fast_with_one_clear_message(tmp_path):
    """No network (a closed local port as HF_ENDPOINT), no cache: one connection attempt, then the cache alone; the
    error names the repo within seconds, and no line is printed twice."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import PIL.Image

    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"), PYTHONWARNINGS="ignore")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pvtkit", "classify", str(tmp_path / "photo.png")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 2 and "OpenGVLab/pvt_v2_b0" in result.stderr and "cannot be reached" in result.stderr
    assert seconds < 30, f"took {seconds:.0f}s"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)) and "Retrying" not in result.stderr, result.stderr
