"""pvtkit.keras: ViT in Keras 3 on the TensorFlow and JAX back ends, against the PyTorch model on the same weights.

Keras fixes its back end when first imported, so each back end runs in its own process (`tests/keras/keras_worker.py`),
which never imports torch: this module makes the checkpoints and the reference outputs with PyTorch, the worker
computes the Keras ones and writes them back, and the tests compare. The tolerance is the project's fp32 one (1e-5
relative to the largest magnitude).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

import pvtkit

from helpers import FIXTURES, FP32_RTOL

pytestmark = pytest.mark.integration  # with the real Keras on TensorFlow and JAX

HERE = Path(__file__).parent
BACKENDS = ("tensorflow", "jax")
CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=224,
    patch_size=16,
    encoder_stride=16,
)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def photo(size: tuple[int, int], fmt: str) -> bytes:
    """scikit-image's astronaut at `size` (width, height), encoded."""
    from skimage import data

    buf = io.BytesIO()
    PIL.Image.fromarray(data.astronaut()).resize(size, PIL.Image.BICUBIC).save(buf, format=fmt)
    return buf.getvalue()


def digits() -> dict[str, np.ndarray]:
    """scikit-learn's handwritten digits as (N, 3, 16, 16) pixels in [-1, 1], split 1400 / 397."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron((d.images / 16.0 - 0.5) / 0.5, np.ones((2, 2)))[:, None].repeat(3, axis=1).astype(np.float32)
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], d.target[order].astype(np.int64)
    return {"digits_train_x": x[:1400], "digits_train_y": y[:1400], "digits_val_x": x[1400:], "digits_val_y": y[1400:]}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Checkpoints (transformers' and timm's layouts), inputs, PyTorch's reference outputs, and a SavedModel
    written by `pvtkit export saved-model`."""
    work = tmp_path_factory.mktemp("keras")
    torch.manual_seed(0)
    config = pvtkit.ViTConfig(**CONFIG, id2label={i: f"class {i}" for i in range(7)})
    clf = pvtkit.ViTForImageClassification(config).eval()
    clf.save_pretrained(work / "classifier")
    pvtkit.ViTImageProcessor().save_pretrained(work / "classifier")
    pvtkit.ViTModel(config).eval().save_pretrained(work / "encoder")  # with its pooler
    timm = load_file(FIXTURES / "timm_vit_tiny.safetensors")
    (work / "timm").mkdir()
    save_file(
        {k.removeprefix("model."): v.numpy() for k, v in timm.items() if k.startswith("model.")},
        str(work / "timm" / "model.safetensors"),
    )
    pvt = pvtkit.PvtV2Config(
        depths=(1, 2, 1, 1), hidden_sizes=(16, 32, 40, 64), num_attention_heads=(1, 2, 5, 8), num_labels=6
    )
    pvtkit.PvtV2ForImageClassification(pvt).eval().save_pretrained(work / "pvt_classifier")
    pvtkit.PvtV2Model(pvt.copy(linear_attention=True)).eval().save_pretrained(work / "pvt_encoder")
    timm_pvt = load_file(FIXTURES / "timm_pvt_v2_tiny.safetensors")
    (work / "timm_pvt").mkdir()
    save_file(
        {k.removeprefix("model."): v.numpy() for k, v in timm_pvt.items() if k.startswith("model.")},
        str(work / "timm_pvt" / "model.safetensors"),
    )
    g = torch.Generator().manual_seed(1)
    images = [photo((224, 224), "PNG"), photo((300, 260), "JPEG")]
    np.savez(
        work / "inputs.npz",
        native=torch.randn(3, 3, 224, 224, generator=g).numpy(),
        other=torch.randn(2, 3, 160, 192, generator=g).numpy(),
        timm_x=timm["input.pixel_values"].numpy(),
        image_bytes=np.array(images, dtype=object),
        pvt_odd=torch.randn(1, 3, 97, 75, generator=g).numpy(),
        pvt_small=torch.randn(2, 3, 40, 56, generator=g).numpy(),
        timm_pvt_x=timm_pvt["input.pixel_values"].numpy(),
        **digits(),
    )
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "pvtkit",
            "export",
            "saved-model",
            "--model",
            str(work / "classifier"),
            "--output",
            str(work / "cli_saved_model"),
            "--image-bytes",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    (work / "cli_report.json").write_text(cli.stdout)
    return work


@pytest.fixture(scope="module", params=BACKENDS)
def keras_run(request, work) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(back end, result.json, outputs) of the worker on that back end."""
    backend = request.param
    out = work / backend
    out.mkdir()
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, str(HERE / "keras_worker.py"), str(work), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["backend"] == backend
    return backend, result, dict(np.load(out / "outputs.npz"))


@pytest.mark.slow
def test_keras_runs_without_torch(keras_run):
    backend, result, _ = keras_run
    assert result["torch_loaded"] is False, f"the {backend} worker loaded torch"


def test_parity_with_pytorch_at_224_and_interpolated(work, keras_run):
    backend, _, out = keras_run
    inputs = np.load(work / "inputs.npz", allow_pickle=True)
    clf = pvtkit.ViTForImageClassification.from_pretrained(work / "classifier").eval()
    enc = pvtkit.ViTModel.from_pretrained(work / "encoder").eval()
    for name in ("native", "other"):
        x, interp = torch.from_numpy(inputs[name]), name == "other"
        with torch.no_grad():
            c = clf(x, interpolate_pos_encoding=interp, output_hidden_states=True)
            e = enc(x, interpolate_pos_encoding=interp, output_hidden_states=True, output_attentions=True)
        checks = {
            "logits": (out[f"clf_{name}_logits"], c.logits),
            "last_hidden_state": (out[f"enc_{name}_last_hidden_state"], e.last_hidden_state),
            "pooler_output": (out[f"enc_{name}_pooler_output"], e.pooler_output),
            "attentions[0]": (out[f"enc_{name}_attention_0"], e.attentions[0]),
        }
        for i, (hc, he) in enumerate(zip(c.hidden_states, e.hidden_states)):
            checks[f"hidden_states[{i}]"] = (out[f"clf_{name}_hidden_{i}"], hc)
            checks[f"encoder hidden_states[{i}]"] = (out[f"enc_{name}_hidden_{i}"], he)
        assert len(c.hidden_states) == CONFIG["num_hidden_layers"] + 1
        for what, (ours, ref) in checks.items():
            err = rel(ours, ref.numpy())
            assert err <= FP32_RTOL, f"{backend} {name} {what}: relative error {err:.2e}"


def test_timm_checkpoint_reproduces_timm(work, keras_run):
    """timm's own logits (the committed fixture made by timm) from its weights, converted by the shared rules."""
    backend, _, out = keras_run
    expected = load_file(FIXTURES / "timm_vit_tiny.safetensors")["output.logits"].numpy()
    assert rel(out["timm_logits"], expected) <= FP32_RTOL, backend


def test_round_trip_torch_keras_torch_and_transformers(work, keras_run):
    backend, _, _ = keras_run
    from transformers import ViTForImageClassification as HFViT

    x = torch.from_numpy(np.load(work / "inputs.npz", allow_pickle=True)["native"])
    original = pvtkit.ViTForImageClassification.from_pretrained(work / "classifier").eval()
    back = pvtkit.ViTForImageClassification.from_pretrained(work / backend / "from_keras").eval()
    hf = HFViT.from_pretrained(work / backend / "from_keras").eval()
    with torch.no_grad():
        ref = original(x).logits
        assert torch.equal(back(x).logits, ref), f"{backend}: torch -> Keras -> torch changed the logits"
        assert rel(hf(x).logits.numpy(), ref.numpy()) <= FP32_RTOL
    assert back.config.id2label == original.config.id2label


def test_bad_inputs_get_the_pytorch_messages(work, keras_run):
    backend, result, _ = keras_run
    inputs = np.load(work / "inputs.npz", allow_pickle=True)
    model = pvtkit.ViTForImageClassification.from_pretrained(work / "classifier").eval()
    bad = {"rank": inputs["native"][0], "channels": inputs["native"][:, :1], "size": inputs["other"]}
    for name, x in bad.items():
        with pytest.raises(ValueError) as e:
            model(torch.from_numpy(np.ascontiguousarray(x)))
        assert result["errors"][name] == str(e.value), f"{backend} {name}"


def test_fit_learns_digits(keras_run):
    """compile + fit on scikit-learn's digits: the loss falls and validation accuracy is far above chance (10%)."""
    backend, result, _ = keras_run
    loss, val_acc = result["fit"]["loss"], result["fit"]["val_accuracy"]
    assert loss[-1] < 0.6 * loss[0], (backend, loss)
    assert val_acc[-1] > 0.4, (backend, val_acc)
    assert abs(result["predict_accuracy"] - val_acc[-1]) < 0.02, (backend, result["predict_accuracy"], val_acc)


def test_saved_model_matches_pytorch(work, keras_run):
    """The SavedModel (written on this back end, reloaded with tf.saved_model.load) at batch 1 and 3, and its
    image-bytes signature: a PNG at the model's size is exact against pvtkit's processor + PyTorch; a JPEG of
    another size goes through TensorFlow's resize, not PIL's, and stays close."""
    backend, result, out = keras_run
    assert result["signatures"] == ["serve", "serve_image_bytes", "serving_default"]
    inputs = np.load(work / "inputs.npz", allow_pickle=True)
    model = pvtkit.ViTForImageClassification.from_pretrained(work / "classifier").eval()
    processor = pvtkit.ViTImageProcessor.from_pretrained(work / "classifier")
    with torch.no_grad():
        ref = model(torch.from_numpy(inputs["native"])).logits.numpy()
        images = [PIL.Image.open(io.BytesIO(bytes(b))) for b in inputs["image_bytes"]]
        from_bytes = model(processor(images, return_tensors="pt")["pixel_values"]).logits.numpy()
    for batch in (1, 3):
        assert rel(out[f"saved_b{batch}_logits"], ref[:batch]) <= FP32_RTOL, (backend, batch)
    # pvtkit's processor ran in the worker without torch, NumPy out: the same pixels, the same logits.
    assert np.array_equal(out["processor_pixels"], processor(images, return_tensors="np")["pixel_values"])
    assert rel(out["processor_logits"], from_bytes) <= FP32_RTOL, backend
    for key in ("saved_bytes_logits", "cli_bytes_logits"):
        assert rel(out[key][0], from_bytes[0]) <= FP32_RTOL, (backend, key, "PNG at 224")
        assert rel(out[key][1], from_bytes[1]) <= 0.05, (backend, key, "JPEG resized")
    assert rel(out["cli_b2_logits"], ref[:2]) <= FP32_RTOL
    report = json.loads((work / "cli_report.json").read_text())
    assert report["signatures"] == ["serving_default", "serve_image_bytes"] and report["max_relative_error"] <= 1e-5


def test_import_pvtkit_keras_loads_no_torch():
    """`import pvtkit.keras`, reading a config and preprocessing an image to NumPy leave PyTorch unloaded."""
    code = (
        "import sys, numpy, pvtkit, pvtkit.keras\n"
        "pvtkit.ViTConfig(); pvtkit.keras.ViTConfig.from_variant('base_patch16_224')\n"
        "assert 'torch' not in sys.modules, 'pvtkit.keras loaded torch'\n"
        "x = pvtkit.ViTImageProcessor()(numpy.zeros((40, 30, 3), numpy.uint8), return_tensors='np')\n"
        "assert x['pixel_values'].shape == (1, 3, 224, 224)\n"
        "assert 'torch' not in sys.modules, 'the image processor loaded torch'\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_keras_activations_cover_the_config_names():
    """Every `hidden_act` a config accepts has a PyTorch and a Keras implementation (the Keras table read as text:
    importing Keras here would fix its back end for the whole session)."""
    from pvtkit.config import ACTIVATION_NAMES
    from pvtkit.layers import ACTIVATIONS

    assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)
    source = (Path(pvtkit.__file__).parent / "keras" / "layers.py").read_text()
    table = source[source.index("ACTIVATIONS: dict") : source.index("\n}\n")]
    assert {line.split('"')[1] for line in table.splitlines()[1:] if line.strip().startswith('"')} == set(
        ACTIVATION_NAMES
    )


# ---- PVTv2 --------------------------------------------------------------------------------------------------------


def test_pvt_parity_with_pytorch_at_224_odd_and_small_sizes(work, keras_run):
    """SRA (the classifier) and linear SRA (the encoder): logits, every stage map, the first attention map; at 224,
    at 97x75 and at 40x56, where the last stages' maps are smaller than SRA's window (zero-padded to one)."""
    backend, _, out = keras_run
    inputs = np.load(work / "inputs.npz", allow_pickle=True)
    clf = pvtkit.PvtV2ForImageClassification.from_pretrained(work / "pvt_classifier").eval()
    enc = pvtkit.PvtV2Model.from_pretrained(work / "pvt_encoder").eval()
    for name in ("native", "pvt_odd", "pvt_small"):
        x = torch.from_numpy(inputs[name][:2])
        with torch.no_grad():
            c = clf(x, output_hidden_states=True, output_attentions=True)
            e = enc(x, output_hidden_states=True)
        checks = {
            "logits": (out[f"pvt_{name}_logits"], c.logits),
            "attentions[0][0]": (out[f"pvt_{name}_attention_0_0"], c.attentions[0][0]),
            "encoder last_hidden_state": (out[f"pvt_enc_{name}_last_hidden_state"], e.last_hidden_state),
        }
        for i in range(4):
            checks[f"hidden_states[{i}]"] = (out[f"pvt_{name}_hidden_{i}"], c.hidden_states[i])
            checks[f"linear SRA hidden_states[{i}]"] = (out[f"pvt_enc_{name}_hidden_{i}"], e.hidden_states[i])
        for what, (ours, ref) in checks.items():
            err = rel(ours, ref.numpy())
            assert err <= FP32_RTOL, f"{backend} PVTv2 {name} {what}: relative error {err:.2e}"


def test_pvt_timm_checkpoint_reproduces_timm(keras_run):
    """timm's logits from its weights (committed fixture); timm's 1e-5 LayerNorm epsilons in the patch embeddings
    and reductions against transformers' 1e-6 everywhere give the drift test_checkpoints states (1e-4)."""
    backend, _, out = keras_run
    expected = load_file(FIXTURES / "timm_pvt_v2_tiny.safetensors")["output.logits"].numpy()
    assert rel(out["timm_pvt_logits"], expected) <= 1e-4, backend


def test_pvt_round_trip_errors_fit_and_saved_model(work, keras_run):
    backend, result, out = keras_run
    inputs = np.load(work / "inputs.npz", allow_pickle=True)
    x = torch.from_numpy(inputs["native"])
    original = pvtkit.PvtV2ForImageClassification.from_pretrained(work / "pvt_classifier").eval()
    back = pvtkit.PvtV2ForImageClassification.from_pretrained(work / backend / "pvt_from_keras").eval()
    with torch.no_grad():
        ref = original(x).logits
        assert torch.equal(back(x).logits, ref), f"{backend}: torch -> Keras -> torch changed PVTv2's logits"
    for name, bad in {"rank": x[0], "channels": x[:, :1]}.items():
        with pytest.raises(ValueError) as e:
            original(bad)
        assert result["errors"][f"pvt_{name}"] == str(e.value), f"{backend} {name}"
    loss, val_acc = result["pvt_fit"]["loss"], result["pvt_fit"]["val_accuracy"]
    assert loss[-1] < 0.8 * loss[0] and val_acc[-1] > 0.25, (backend, loss, val_acc)  # chance is 0.1
    for batch in (1, 3):
        assert rel(out[f"pvt_saved_b{batch}_logits"], ref[:batch].numpy()) <= FP32_RTOL, (backend, batch)
