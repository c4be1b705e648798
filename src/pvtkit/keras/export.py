"""TF SavedModel export of the Keras models, for TF Serving.

The SavedModel has a `serving_default` signature taking float pixels `pixel_values` `(batch, C, H, W)` (batch
dynamic, the model's size fixed) and returning the model's outputs by name (`logits`, or `last_hidden_state` and
`pooler_output`). With `image_bytes=True` it also has `serve_image_bytes`, taking a batch of encoded images
(JPEG, PNG, BMP, GIF: a string tensor, as TF Serving's REST API sends `{"b64": ...}`), decoded, resized, rescaled and
normalized inside the graph with the checkpoint's processor settings.

In-graph resizing is TensorFlow's antialiased resize, not PIL's: an image already at the model's size is bit-exact
with pvtkit's processors; another size differs by the two libraries' resampling (about 1/255 per pixel). Works on
both back ends (JAX's through jax2tf); TensorFlow must be installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._files import atomic_directory

# PIL's resample codes (what `preprocessor_config.json` stores) -> tf.image.resize methods.
_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bicubic"}


def preprocessing_settings(model: Any, processor: dict[str, Any] | None = None) -> dict[str, Any]:
    """The processor settings the bytes signature applies: a `preprocessor_config.json`'s fields over the family's
    default processor's (ViT's 0.5 mean and std, PVTv2's ImageNet ones) at the model's size."""
    h, w = model.image_size_for_export()
    settings: dict[str, Any] = {
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        **model.processor_defaults,
    }
    settings.update({k: v for k, v in (processor or {}).items() if k in settings})
    size = settings["size"]
    if not (isinstance(size, dict) and {"height", "width"} <= set(size)):
        raise ValueError(
            f"the image-bytes signature resizes to a fixed size; the processor's size is {size!r} "
            "(expected {'height': H, 'width': W})"
        )
    return settings


def export_saved_model(
    model: Any,
    filepath: str | os.PathLike,
    image_bytes: bool = False,
    processor: dict[str, Any] | None = None,
    verbose: bool | None = None,
) -> Path:
    """Write `model` as a TF SavedModel directory at `filepath` (atomically: a failed export leaves what was there).

    Args:
        model: A built pvtkit Keras model.
        image_bytes: Add the `serve_image_bytes` signature (encoded images in, preprocessing in the graph).
        processor: `preprocessor_config.json` fields for that signature (default: ViTImageProcessor's).
        verbose: Print Keras' export summary.
    """
    import tensorflow as tf
    from keras.export import ExportArchive

    C = model.config.num_channels
    H, W = model.image_size_for_export()
    archive = ExportArchive()
    archive.track(model)

    def serve(pixel_values: Any) -> dict[str, Any]:
        return dict(model(pixel_values, training=False).items())

    pixel_spec = tf.TensorSpec((None, C, H, W), tf.float32, name="pixel_values")
    serve_fn = archive.add_endpoint("serve", serve, input_signature=[pixel_spec])
    if image_bytes:
        settings = preprocessing_settings(model, processor)
        size = (int(settings["size"]["height"]), int(settings["size"]["width"]))
        if size != (H, W):
            raise ValueError(f"the processor resizes to {size[0]}x{size[1]}, but the model takes {H}x{W}")
        mean = tf.constant(settings["image_mean"], tf.float32)
        std = tf.constant(settings["image_std"], tf.float32)
        method = _RESAMPLE.get(int(settings["resample"]), "bilinear")

        def decode(data: Any) -> Any:
            image = tf.cast(tf.io.decode_image(data, channels=C, expand_animations=False), tf.float32)  # (h, w, C)
            if settings["do_resize"]:
                same = tf.reduce_all(tf.equal(tf.shape(image)[:2], (H, W)))

                def resized() -> Any:  # PIL resizes 8-bit images to 8 bits
                    return tf.clip_by_value(
                        tf.round(tf.image.resize(image, (H, W), method, antialias=True)), 0.0, 255.0
                    )

                image = tf.cond(same, lambda: image, resized)
            image = tf.ensure_shape(image, (H, W, C))
            if settings["do_rescale"]:
                image = image * float(settings["rescale_factor"])
            if settings["do_normalize"]:
                image = (image - mean) / std
            return tf.transpose(image, (2, 0, 1))  # (C, H, W)

        @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")])
        def serve_image_bytes(images: Any) -> Any:
            pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec((C, H, W), tf.float32))
            return serve_fn(pixels)

        archive.add_endpoint("serve_image_bytes", serve_image_bytes)
    with atomic_directory(filepath) as staging:
        archive.write_out(str(staging), verbose=bool(verbose))
    return Path(filepath)
