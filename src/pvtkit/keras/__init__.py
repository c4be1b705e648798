"""pvtkit's ViT and PVTv2 in Keras 3, for TensorFlow and JAX users, from the same checkpoints as the PyTorch models.

Pick the back end before Keras is first imported: `KERAS_BACKEND=jax` or `KERAS_BACKEND=tensorflow` (Keras'
default). Importing this package imports Keras, never PyTorch.

    from pvtkit.keras import ViTForImageClassification
    model = ViTForImageClassification.from_pretrained("google/vit-base-patch16-224")
    logits = model(pixel_values).logits            # pixel_values: (B, 3, H, W), e.g. from pvtkit's processors
    model.save_pretrained("out")                   # config.json + model.safetensors, loadable by pvtkit and transformers
    model.export("saved_model", image_bytes=True)  # a TF SavedModel for TF Serving
"""

import os

try:
    import keras as _keras
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "pvtkit.keras needs Keras 3 and a back end: pip install 'pvtkit[tensorflow]' or 'pvtkit[jax]'"
    ) from e

if not str(_keras.__version__).startswith("3"):  # pragma: no cover
    raise ImportError(f"pvtkit.keras needs Keras 3, found keras {_keras.__version__}")

from ..models.pvt_v2.configuration import VARIANTS as PVT_V2_VARIANTS  # noqa: E402
from ..models.pvt_v2.configuration import PvtV2Config  # noqa: E402
from ..models.vit.configuration import VARIANTS as VIT_VARIANTS  # noqa: E402
from ..models.vit.configuration import ViTConfig  # noqa: E402
from .modeling import KerasPreTrainedModel  # noqa: E402
from .pvt_v2 import PvtV2ForImageClassification, PvtV2Model, PvtV2PreTrainedModel  # noqa: E402
from .vit import ViTForImageClassification, ViTModel, ViTPreTrainedModel  # noqa: E402

# The Keras classes by `model_type`, then by the registry's head names (`pvtkit.models.family.HEADS`).
CLASSES: dict[str, dict[str, type[KerasPreTrainedModel]]] = {
    "vit": {"model": ViTModel, "image-classification": ViTForImageClassification},
    "pvt_v2": {"model": PvtV2Model, "image-classification": PvtV2ForImageClassification},
}


def model_class(
    source: str | os.PathLike, task: str | None = None, revision: str | None = None, local_files_only: bool = False
) -> type[KerasPreTrainedModel]:
    """The Keras class for a checkpoint: its family from `config.json` (`model_type`) or, for a bare weights file,
    from its keys' layout; its task from `task`, else the config's `architectures`, else a classifier."""
    from .._files import read_json
    from ..convert import detect_layout
    from ..hub import HubOptions, resolve_checkpoint

    ckpt = resolve_checkpoint(source, HubOptions(revision=revision, local_files_only=local_files_only))
    data = read_json(ckpt.config_file) if ckpt.config_file is not None else {}
    model_type = data.get("model_type")
    if model_type is None:
        import safetensors

        keys: dict[str, None] = {}
        for file in ckpt.weight_files:
            if file.suffix != ".safetensors":
                raise ValueError(f"{file}: without a config.json, pvtkit's Keras models read safetensors files only")
            with safetensors.safe_open(str(file), framework="numpy") as f:
                keys.update(dict.fromkeys(f.keys()))
        layouts = [lo for cls in CLASSES.values() for lo in next(iter(cls.values())).layouts]
        model_type = detect_layout(keys, str(source), layouts=layouts)[0].model_type
    if model_type not in CLASSES:
        raise ValueError(f"{source} holds a {model_type!r} model; pvtkit's Keras models are {', '.join(CLASSES)}")
    classes = CLASSES[model_type]
    if task is None:
        architecture = (data.get("architectures") or [""])[0]
        task = next((t for t, cls in classes.items() if cls.__name__ == architecture), "image-classification")
    if task not in classes:
        raise ValueError(f"pvtkit's Keras {model_type} models cover {', '.join(classes)}, not {task}")
    return classes[task]


def keras_backend() -> str:
    """The Keras back end this process runs on ("tensorflow", "jax", ...)."""
    return _keras.backend.backend()


__all__ = [
    "CLASSES",
    "KerasPreTrainedModel",
    "PVT_V2_VARIANTS",
    "PvtV2Config",
    "PvtV2ForImageClassification",
    "PvtV2Model",
    "PvtV2PreTrainedModel",
    "VIT_VARIANTS",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTModel",
    "ViTPreTrainedModel",
    "keras_backend",
    "model_class",
]
