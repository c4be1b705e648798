"""Runs pvtkit's Keras ViT on one back end (KERAS_BACKEND, set by the caller) in a process without PyTorch, and
writes what tests/keras/test_keras.py compares with the PyTorch models: `python keras_worker.py WORKDIR OUTDIR`.

WORKDIR holds the checkpoints and `inputs.npz` the test made with PyTorch; this writes `outputs.npz`,
`result.json`, a `save_pretrained` directory and a SavedModel into OUTDIR. Nothing here imports torch, and the result says whether anything did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def forward(model, x, **flags):
    """`model(x, **flags)`; on JAX compiled whole (`jax.jit` over `stateless_call`, what `predict` and `fit` run),
    since eager JAX compiles every op for every new shape (tens of seconds for a PVTv2 at three sizes)."""
    import keras

    if keras.backend.backend() != "jax":
        return model(x, **flags)
    import jax

    fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, **flags)[0])
    return fn([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], x)


def main(work: Path, dest: Path) -> None:
    import time

    import keras

    import pvtkit
    import pvtkit.keras as pk

    marks = [("start", time.perf_counter())]
    inputs = dict(np.load(work / "inputs.npz", allow_pickle=True))
    out: dict[str, np.ndarray] = {}
    result: dict = {"backend": pk.keras_backend(), "errors": {}}

    # Parity: the classifier and the encoder (with pooler), at the native size and another one (interpolated).
    clf = pk.ViTForImageClassification.from_pretrained(work / "classifier")
    enc = pk.ViTModel.from_pretrained(work / "encoder")
    for name in ("native", "other"):
        x = inputs[name]
        interp = name == "other"
        o = clf(x, interpolate_pos_encoding=interp, output_hidden_states=True)
        out[f"clf_{name}_logits"] = np.asarray(o.logits)
        for i, h in enumerate(o.hidden_states):
            out[f"clf_{name}_hidden_{i}"] = np.asarray(h)
        e = enc(x, interpolate_pos_encoding=interp, output_hidden_states=True, output_attentions=True)
        out[f"enc_{name}_last_hidden_state"] = np.asarray(e.last_hidden_state)
        out[f"enc_{name}_pooler_output"] = np.asarray(e.pooler_output)
        out[f"enc_{name}_attention_0"] = np.asarray(e.attentions[0])
        for i, h in enumerate(e.hidden_states):
            out[f"enc_{name}_hidden_{i}"] = np.asarray(h)
    # timm's layout (a bare .safetensors file, no config.json): converted by the same rules as for PyTorch.
    # 32 wide with 4 heads is no published width, so the head count is given; the rest is inferred.
    timm = pk.ViTForImageClassification.from_pretrained(work / "timm" / "model.safetensors", num_attention_heads=4)
    out["timm_logits"] = np.asarray(timm(inputs["timm_x"]).logits)
    # Round trip: Keras writes transformers' format, which the test loads in PyTorch.
    clf.save_pretrained(dest / "from_keras")
    # Bad inputs get the PyTorch model's messages.
    bad = {"rank": inputs["native"][0], "channels": inputs["native"][:, :1], "size": inputs["other"]}
    for name, x in bad.items():
        try:
            clf(x)
            result["errors"][name] = None
        except ValueError as e:
            result["errors"][name] = str(e)

    marks.append(("vit", time.perf_counter()))
    # PVTv2: the classifier (SRA) and the encoder (linear SRA) at 224, an odd size and one smaller than SRA's window.
    pclf = pk.PvtV2ForImageClassification.from_pretrained(work / "pvt_classifier")
    penc = pk.PvtV2Model.from_pretrained(work / "pvt_encoder")
    for name in ("native", "pvt_odd", "pvt_small"):
        x = inputs[name][:2]
        o = forward(pclf, x, output_hidden_states=True, output_attentions=True)
        out[f"pvt_{name}_logits"] = np.asarray(o.logits)
        out[f"pvt_{name}_attention_0_0"] = np.asarray(o.attentions[0][0])
        e = forward(penc, x, output_hidden_states=True)
        out[f"pvt_enc_{name}_last_hidden_state"] = np.asarray(e.last_hidden_state)
        for i, (hc, he) in enumerate(zip(o.hidden_states, e.hidden_states)):
            out[f"pvt_{name}_hidden_{i}"], out[f"pvt_enc_{name}_hidden_{i}"] = np.asarray(hc), np.asarray(he)
    timm_pvt = pk.PvtV2ForImageClassification.from_pretrained(work / "timm_pvt" / "model.safetensors")
    out["timm_pvt_logits"] = np.asarray(forward(timm_pvt, inputs["timm_pvt_x"]).logits)
    pclf.save_pretrained(dest / "pvt_from_keras")
    for name, x in {"rank": inputs["native"][0], "channels": inputs["native"][:, :1]}.items():
        try:
            pclf(x)
            result["errors"][f"pvt_{name}"] = None
        except ValueError as e:
            result["errors"][f"pvt_{name}"] = str(e)

    marks.append(("pvt", time.perf_counter()))
    # Training the Keras way on scikit-learn's digits: 8x8 gray -> 16x16 RGB, a small ViT from scratch.
    keras.utils.set_random_seed(0)
    d = inputs
    cfg = pk.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=16,
        patch_size=4,
        num_labels=10,
    )
    model = pk.ViTForImageClassification(cfg)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        d["digits_train_x"],
        d["digits_train_y"],
        batch_size=64,
        epochs=3,
        verbose=0,
        validation_data=(d["digits_val_x"], d["digits_val_y"]),
    )
    result["fit"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    predicted = model.predict(d["digits_val_x"], verbose=0)
    result["predict_accuracy"] = float((np.asarray(predicted["logits"]).argmax(-1) == d["digits_val_y"]).mean())
    marks.append(("vit fit", time.perf_counter()))
    pcfg = pk.PvtV2Config(
        depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 48, 64), num_attention_heads=(1, 2, 3, 4), num_labels=10
    )
    pvt = pk.PvtV2ForImageClassification(pcfg)
    pvt.compile(optimizer=keras.optimizers.AdamW(2e-3), metrics=["accuracy"])  # no loss: transformers' own
    history = pvt.fit(
        d["digits_train_x"],
        d["digits_train_y"],
        batch_size=64,
        epochs=3,
        verbose=0,
        validation_data=(d["digits_val_x"], d["digits_val_y"]),
    )
    result["pvt_fit"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}

    marks.append(("pvt fit", time.perf_counter()))
    # SavedModel: written here (on this back end), reloaded with TensorFlow, run at two batch sizes.
    import tensorflow as tf

    clf.export(dest / "saved_model", image_bytes=True)
    loaded = tf.saved_model.load(str(dest / "saved_model"))
    result["signatures"] = sorted(loaded.signatures)
    for batch in (1, 3):
        got = loaded.signatures["serving_default"](pixel_values=tf.constant(inputs["native"][:batch]))
        out[f"saved_b{batch}_logits"] = got["logits"].numpy()
    images = tf.constant([bytes(b) for b in inputs["image_bytes"]])
    # pvtkit's processor in this torch-free process, NumPy out, straight into the Keras model.
    import io

    import PIL.Image

    processor = pvtkit.ViTImageProcessor.from_pretrained(work / "classifier")
    pixels = processor([PIL.Image.open(io.BytesIO(bytes(b))) for b in inputs["image_bytes"]], return_tensors="np")
    out["processor_pixels"] = pixels["pixel_values"]
    out["processor_logits"] = np.asarray(clf(pixels["pixel_values"]).logits)
    out["saved_bytes_logits"] = loaded.signatures["serve_image_bytes"](image_bytes=images)["logits"].numpy()
    pclf.export(dest / "pvt_saved_model")
    loaded_pvt = tf.saved_model.load(str(dest / "pvt_saved_model"))
    for batch in (1, 3):
        got = loaded_pvt.signatures["serving_default"](pixel_values=tf.constant(inputs["native"][:batch]))
        out[f"pvt_saved_b{batch}_logits"] = got["logits"].numpy()
    if (work / "cli_saved_model").is_dir():  # the one `pvtkit export saved-model` wrote
        cli = tf.saved_model.load(str(work / "cli_saved_model"))
        out["cli_bytes_logits"] = cli.signatures["serve_image_bytes"](image_bytes=images)["logits"].numpy()
        out["cli_b2_logits"] = cli.signatures["serving_default"](pixel_values=tf.constant(inputs["native"][:2]))[
            "logits"
        ].numpy()

    marks.append(("saved models", time.perf_counter()))
    result["seconds"] = {name: round(t - marks[i][1], 1) for i, (name, t) in enumerate(marks[1:])}
    result["torch_loaded"] = "torch" in sys.modules
    np.savez(dest / "outputs.npz", **out)
    (dest / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
