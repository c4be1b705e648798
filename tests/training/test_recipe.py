"""The recipe features of `pvtkit train`: an EMA of the weights (`--ema`), layer-wise learning-rate decay
(`--layer-decay`) and the linear learning-rate scaling rule (`--scale-lr`).

The EMA is checked against an average computed here in float64 from the weights after every optimizer step; the
layer-wise rates against layer numbers read off the parameters' names (not the models' `depth_layers()`); a run
killed mid-epoch resumes with its EMA to the same result as one never stopped. The runs train a tiny SegFormer on
canvases of scikit-learn's handwritten digits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import pvtkit
from pvtkit.cli import main as cli
from pvtkit.training import TrainingConfigError, parameter_groups
from pvtkit.training.ema import WeightEma
from pvtkit.training.recipe import layer_decay_scale, scale_learning_rate
from pvtkit.training.trainer import Trainer

from helpers import REPO, TORCHRUN_PVTKIT, read_metrics, save_tiny_segformer, train_argv, write_dataset

STEPS_PER_EPOCH = 6  # 48 training canvases, batch 8


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("recipe-data") / "small", 48, 16)


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory) -> Path:
    """Dropout and stochastic depth on: random draws every step, which a resumed run must repeat."""
    return save_tiny_segformer(tmp_path_factory.mktemp("recipe-models") / "tiny-seg")


def train_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return train_argv("semantic-segmentation", data, model, out, *extra)


EMA_RUN = ("--batch-size", "8", "--lr", "2e-3", "--epochs", "2", "--ema", "--ema-decay", "0.5", "--layer-decay", "0.5")


def expected_decay(t: int, decay: float) -> float:
    """The warmed-up decay of update t, TensorFlow's `num_updates` rule, written out."""
    warm = (1.0 + t) / (10.0 + t)
    return decay if decay < warm else warm


def float64_ema(snapshots: list[dict[str, np.ndarray]], decay: float) -> list[dict[str, np.ndarray]]:
    """The EMA after each update, from the weights before training (`snapshots[0]`) and after each step."""
    average = {k: v.astype(np.float64) for k, v in snapshots[0].items()}
    out = []
    for t, weights in enumerate(snapshots[1:]):
        d = expected_decay(t, decay)
        average = {k: d * average[k] + (1.0 - d) * weights[k].astype(np.float64) for k in average}
        out.append(average)
    return out


# ---- the EMA itself --------------------------------------------------------------------------------------------


def test_weight_ema_follows_an_independent_average_and_swaps_in_and_out_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.BatchNorm1d(5), nn.Linear(5, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = WeightEma(model, decay=0.3)
    snapshots = [{n: p.detach().numpy().copy() for n, p in model.named_parameters()}]
    for t in range(6):  # past the warm-up: (1 + t) / (10 + t) > 0.3 from t = 3 on
        model(torch.randn(8, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(t)
        snapshots.append({n: p.detach().numpy().copy() for n, p in model.named_parameters()})
    expected = float64_ema(snapshots, 0.3)[-1]
    averages = ema.state_dict()
    assert sorted(averages) == sorted(expected)
    for name, value in expected.items():
        assert averages[name].dtype == torch.float32
        np.testing.assert_allclose(averages[name].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.abs(value - snapshots[-1][name]).max() > 1e-5, name  # the average is not the weights

    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied():
        for name, p in model.named_parameters():
            assert torch.equal(p, averages[name]), name
        assert torch.equal(model[2].running_mean, raw["2.running_mean"])  # buffers: the model's own
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k]), k  # put back bit for bit

    other = WeightEma(model, decay=0.3)
    other.load_state_dict({k: v.clone() for k, v in averages.items()})
    assert all(torch.equal(other.state_dict()[k], v) for k, v in averages.items())
    with pytest.raises(ValueError, match=r"missing \[.3.bias.\]"):
        other.load_state_dict({k: v for k, v in averages.items() if k != "3.bias"})


# ---- layer-wise learning-rate decay ----------------------------------------------------------------------------


def pyramid_layer(name: str, depths: list[int], prefix: str) -> int | None:
    """The layer of a SegFormer / PVTv2 parameter from its name: the first patch embedding 0, the blocks 1..D in
    order, a later stage's patch embedding with its first block, a stage's norm with its last; None for the rest."""
    start = [1 + sum(depths[:i]) for i in range(len(depths))]  # each stage's first block
    patterns = {  # a stage's patch embedding, a block of it, its closing norm
        "segformer": (
            r"encoder\.patch_embeddings\.(\d+)\.",
            r"encoder\.block\.(\d+)\.(\d+)\.",
            r"encoder\.layer_norm\.(\d+)\.",
        ),
        "pvt_v2": (
            r"encoder\.layers\.(\d+)\.patch_embedding\.",
            r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.",
            r"encoder\.layers\.(\d+)\.layer_norm\.",
        ),
    }[prefix]
    embed, block, norm = (re.match(f"{prefix}\\.{p}", name) for p in patterns)
    if embed:
        stage = int(embed[1])
        return 0 if stage == 0 else start[stage]
    if block:
        return start[int(block[1])] + int(block[2])
    if norm:
        return start[int(norm[1])] + depths[int(norm[1])] - 1
    return None


def vit_layer(name: str) -> int | None:
    """The layer of a ViT parameter from its name: the embeddings 0, layer i i + 1; None for the rest."""
    if name.startswith("vit.embeddings."):
        return 0
    block = re.match(r"vit\.encoder\.layer\.(\d+)\.", name)
    return int(block[1]) + 1 if block else None


TINY = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 2, 1, 2], "num_attention_heads": [1, 1, 1, 1]}


@pytest.mark.parametrize("family", ["segformer", "pvt_v2", "vit"])
def test_layer_decay_gives_each_parameter_the_rate_of_its_layer(family):
    if family == "segformer":
        model = pvtkit.SegformerForSemanticSegmentation(pvtkit.SegformerConfig(**TINY, decoder_hidden_size=16))
        head, n = "decode_head.", sum(TINY["depths"]) + 1
    elif family == "pvt_v2":
        model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY, num_labels=3))
        head, n = "classifier.", sum(TINY["depths"]) + 1
    else:
        config = pvtkit.ViTConfig(
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            num_labels=3,
        )
        model = pvtkit.ViTForImageClassification(config)
        head, n = "classifier.", 3 + 1
    groups = parameter_groups(model, 0.01, 10.0, None, layer_decay_scale(model, 0.7))
    by_param = {id(p): g for g in groups for p in g["params"]}
    layers_seen = set()
    for name, p in model.named_parameters():
        layer = vit_layer(name) if family == "vit" else pyramid_layer(name, TINY["depths"], family)
        layer = n if layer is None else layer
        layers_seen.add(layer)
        expected = 0.7 ** (n - layer) * (10.0 if name.startswith(head) else 1.0)
        assert by_param[id(p)]["lr_scale"] == pytest.approx(expected, rel=1e-12), name
    assert layers_seen == set(range(n + 1))  # every layer has parameters, the embeddings' and the head's too


def test_layer_decay_is_refused_for_a_model_that_does_not_number_its_layers():
    with pytest.raises(TrainingConfigError, match="layer-decay: Sequential does not number its layers"):
        layer_decay_scale(nn.Sequential(nn.Linear(2, 2)), 0.9)


# ---- the linear scaling rule -----------------------------------------------------------------------------------


class Stop(Exception):
    """Raised instead of the first epoch: the run has been set up and announced."""


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            ("--batch-size", "8"),
            "learning rate 6e-05: the semantic segmentation recipe's, for a global batch of 16; "
            "this run's is 8, for which the linear scaling rule gives 6e-05 x 8/16 = 3e-05 (--scale-lr applies it; --lr "
            "sets any rate)",
        ),
        (
            ("--batch-size", "8", "--scale-lr"),
            "learning rate 3e-05: the semantic segmentation recipe's 6e-05 is for "
            "a global batch of 16; this run's is 8, and the linear scaling rule gives 6e-05 x 8/16 = 3e-05 (--scale-lr)",
        ),
        (("--batch-size", "16"), None),
        (("--batch-size", "8", "--lr", "1e-4"), None),
    ],
)
def test_the_scaling_rule_is_printed_once_when_the_batch_differs_from_the_recipe(
    small, tiny_seg, tmp_path, capsys, monkeypatch, extra, line
):
    def stop(self, epoch, first):
        raise Stop

    monkeypatch.setattr(Trainer, "_train_epoch", stop)
    with pytest.raises(Stop):
        cli(train_args(small, tiny_seg, tmp_path / "out", *extra))
    err = capsys.readouterr().err
    if line is None:
        assert "linear scaling rule" not in err
    else:
        assert err.count("linear scaling rule") == 1 and f"pvtkit: {line}\n" in err
    lr = json.loads((tmp_path / "out" / "training_args.json").read_text())["lr"]
    assert lr == pytest.approx(3e-5 if "--scale-lr" in extra else 1e-4 if "--lr" in extra else 6e-5, rel=1e-12)


def test_scale_lr_with_an_explicit_lr_and_ema_decay_without_ema_are_usage_errors(small, tiny_seg, tmp_path, capsys):
    assert cli(train_args(small, tiny_seg, tmp_path / "a", "--scale-lr", "--lr", "1e-4")) == 2
    assert "scale-lr scales the task recipe's learning rate" in capsys.readouterr().err
    assert cli(train_args(small, tiny_seg, tmp_path / "b", "--ema-decay", "0.99")) == 2
    assert "ema-decay 0.99 sets the decay of the weights' EMA, which is off" in capsys.readouterr().err
    assert cli(train_args(small, tiny_seg, tmp_path / "c", "--layer-decay", "1.5")) == 2
    assert "layer-decay must be in (0, 1], got 1.5" in capsys.readouterr().err
    settings = {"task": "depth-estimation", "batch_size": 4, "lr": 1e-4, "arch": None, "scale_lr": True}
    assert scale_learning_rate(settings, lr_given=False)[0]["lr"] == pytest.approx(5e-5)  # GLPN's recipe: batch 8


# ---- EMA runs: the saved model, validation, resume -------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_run(small, tiny_seg, tmp_path_factory):
    """A 2-epoch `--ema` run, with the model's weights recorded before training and after every optimizer step."""
    out = tmp_path_factory.mktemp("ema-run") / "out"
    snapshots: list[dict[str, np.ndarray]] = []
    step, wrapped = Trainer._optimizer_step, Trainer._wrapped

    def record(self):
        snapshots.append({n: p.detach().numpy().copy() for n, p in self.model.named_parameters()})

    def recorded_step(self, params):
        step(self, params)
        record(self)

    def recorded_start(self):
        record(self)
        return wrapped(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_optimizer_step", recorded_step)
        patch.setattr(Trainer, "_wrapped", recorded_start)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert cli(train_args(small, tiny_seg, out, *EMA_RUN, "-q")) == 0
        finally:
            torch.set_num_threads(threads)
    return out, snapshots


def test_an_ema_run_saves_and_validates_the_ema_of_its_weights(ema_run, small, tmp_path, one_thread):
    out, snapshots = ema_run
    assert len(snapshots) == 1 + 2 * STEPS_PER_EPOCH
    history = read_metrics(out)
    assert [h["weights"] for h in history] == ["ema", "ema"]
    averages = float64_ema(snapshots, 0.5)
    best = max(history, key=lambda h: h["val_mean_iou"])["epoch"]
    saved = load_file(out / "model.safetensors")
    raw = load_file(out / "checkpoint" / "model.safetensors")
    expected = averages[best * STEPS_PER_EPOCH - 1]
    for name, value in expected.items():
        np.testing.assert_allclose(saved[name].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=name)
    # the checkpoint holds the raw weights (to resume from), and they differ from the average
    worst = max(np.abs(raw[k].numpy() - snapshots[-1][k]).max() for k in expected)
    assert worst == 0.0
    assert max(np.abs(averages[-1][k] - snapshots[-1][k]).max() for k in expected) > 1e-3
    # BatchNorm statistics are not averaged: the saved model has the training model's at the best epoch
    if best == 2:
        for k in raw:
            if "running_" in k:
                assert torch.equal(saved[k], raw[k]), k

    # validation measured the EMA: evaluating the saved model (one thread and batch 8, as the run) gives its mIoU
    report = tmp_path / "report.json"
    command = ["eval", "-m", str(out), "-d", str(small), "--format", "json", "-o", str(report), "-q"]
    assert cli([*command, "--num-workers", "0"]) == 0
    measured = json.loads(report.read_text())
    assert measured["mean_iou"] == pytest.approx(history[best - 1]["val_mean_iou"], rel=1e-6)

    # the optimizer's groups: 0.5 ** (n - layer), the decode head's at 10x, for n = 5 (4 blocks + the head)
    state = torch.load(out / "checkpoint" / "training_state.pt", weights_only=True)
    assert sorted(state["ema"]) == sorted(expected)
    scales = sorted({round(g["lr_scale"], 12) for g in state["optimizer"]["param_groups"]})
    assert scales == sorted({round(0.5**k, 12) for k in range(1, 6)} | {10.0})


def test_a_crashed_ema_run_resumes_its_average_exactly(ema_run, small, tiny_seg, tmp_path, monkeypatch, one_thread):
    reference, _ = ema_run
    out = tmp_path / "crashed"
    step = Trainer._optimizer_step

    def crash_at_step_8(self, params):
        if self.state.global_step == 8:  # mid-epoch 2, just after the checkpoint of step 8
            raise Stop
        step(self, params)

    monkeypatch.setattr(Trainer, "_optimizer_step", crash_at_step_8)
    with pytest.raises(Stop):
        cli(train_args(small, tiny_seg, out, *EMA_RUN, "--save-steps", "1", "-q"))
    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["global_step"] == 8
    assert cli(["train", "--output", str(out), "--resume", "--num-workers", "0", "-q"]) == 0

    history, resumed = read_metrics(reference), read_metrics(out)
    for key in ("lr", "train_loss", "val_loss", "val_mean_iou"):
        assert [h[key] for h in resumed] == pytest.approx([h[key] for h in history], rel=1e-5, abs=1e-6), key
    for name in ("model.safetensors", "checkpoint/model.safetensors"):
        a, b = load_file(out / name), load_file(reference / name)
        worst = max((a[k].double() - b[k].double()).abs().max().item() for k in b)
        assert worst <= 1e-6, f"{name}: {worst:.3g}"
    a = torch.load(out / "checkpoint" / "training_state.pt", weights_only=True)["ema"]
    b = torch.load(reference / "checkpoint" / "training_state.pt", weights_only=True)["ema"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in b) <= 1e-6


@pytest.mark.slow
def test_a_torchrun_ema_run_saves_the_same_average_as_one_process(small, tmp_path, one_thread):
    model = save_tiny_segformer(tmp_path / "tiny-nd", classifier_dropout_prob=0.0, drop_path_rate=0.0)
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(train_args(small, model, one, *EMA_RUN, "-q")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*TORCHRUN_PVTKIT, *train_args(small, model, two, *EMA_RUN, "-q")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and "its EMA weights" in done.stdout
    # As in the segmentation tests: the decode head's projection biases feed a BatchNorm, which cancels them, so
    # their gradient is rounding noise that AdamW makes full-size steps of; the rest trains alike to rounding.
    noise = {f"decode_head.linear_c.{i}.proj.bias" for i in range(4)} | {"decode_head.batch_norm.running_mean"}
    for name in ("model.safetensors", "checkpoint/model.safetensors"):
        a, b = load_file(one / name), load_file(two / name)
        worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if k not in noise)
        assert worst < 1e-3, f"{name}: {worst:.3g}"
    a = torch.load(one / "checkpoint" / "training_state.pt", weights_only=True)["ema"]
    b = torch.load(two / "checkpoint" / "training_state.pt", weights_only=True)["ema"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a if k not in noise) < 1e-3
