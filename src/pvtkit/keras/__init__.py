"""pvtkit's ViT in Keras 3, for TensorFlow and JAX users, from the same checkpoints as the PyTorch models.

Pick the back end before Keras is first imported: `KERAS_BACKEND=jax` or `KERAS_BACKEND=tensorflow` (Keras'
default). Importing this package imports Keras, never PyTorch.

    from pvtkit.keras import ViTForImageClassification
    model = ViTForImageClassification.from_pretrained("google/vit-base-patch16-224")
    logits = model(pixel_values).logits            # pixel_values: (B, 3, H, W), e.g. from pvtkit's processors
    model.save_pretrained("out")                   # config.json + model.safetensors, loadable by pvtkit and transformers
    model.export("saved_model", image_bytes=True)  # a TF SavedModel for TF Serving
"""

try:
    import keras as _keras
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("pvtkit.keras needs Keras 3 and a back end: pip install 'pvtkit[tensorflow]' or "
                      "'pvtkit[jax]'") from e

if not str(_keras.__version__).startswith("3"):  # pragma: no cover
    raise ImportError(f"pvtkit.keras needs Keras 3, found keras {_keras.__version__}")

from ..models.vit_config import VARIANTS as VIT_VARIANTS  # noqa: E402
from ..models.vit_config import ViTConfig  # noqa: E402
from .modeling import KerasPreTrainedModel  # noqa: E402
from .vit import ViTForImageClassification, ViTModel, ViTPreTrainedModel  # noqa: E402


# The Keras classes by the registry's task names (`pvtkit.models.family.TASKS`), for generic code (the CLI).
TASK_CLASSES: dict[str, type[KerasPreTrainedModel]] = {"model": ViTModel,
                                                       "image-classification": ViTForImageClassification}  # fmt: skip


def keras_backend() -> str:
    """The Keras back end this process runs on ("tensorflow", "jax", ...)."""
    return _keras.backend.backend()


__all__ = ["KerasPreTrainedModel", "TASK_CLASSES", "keras_backend", "VIT_VARIANTS", "ViTConfig", "ViTForImageClassification", "ViTModel",
           "ViTPreTrainedModel"]  # fmt: skip
