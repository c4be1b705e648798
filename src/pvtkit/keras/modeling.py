"""The Keras model base: transformers' checkpoint files in and out, with no PyTorch.

`from_pretrained` finds a checkpoint with pvtkit's hub code (a directory, a `.safetensors` file, a Hub id; cache and
offline mode as for the PyTorch models), reads its tensors with safetensors into NumPy, converts any layout the
family reads (transformers', timm's) with the same pure converters the PyTorch models use, and assigns them to the
Keras variables. `save_pretrained` writes `config.json` + `model.safetensors` under transformers' names, which
pvtkit's PyTorch classes and transformers load as they are.

Each model lists its variables under transformers' names (`hf_weights`), with how each is laid out: Keras' `Dense`
keeps `(in, out)` where PyTorch's `Linear` keeps `(out, in)`, and the patch projection, a strided conv in PyTorch,
is a `(channels * patch_h * patch_w, hidden)` matrix here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np

from .. import convert, outputs
from .._files import atomic_directory, atomic_write, read_json
from ..config import PretrainedConfig
from ..convert import Layout
from ..hub import HubOptions, resolve_checkpoint, resolve_file

logger = logging.getLogger("pvtkit")

SAFE_WEIGHTS_NAME = "model.safetensors"

# safetensors' dtype names -> NumPy's; bfloat16 through ml_dtypes (a dependency of Keras), upcast on load.
_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _register_output(cls: type) -> None:
    """Make an output class a node of Keras' trees (and of JAX's, on that back end), so `predict`, `fit` and
    `jax.jit` take the models' outputs as they are; children are the fields that are not None."""
    import optree

    optree.register_pytree_node(
        cls,
        lambda out: (list(out.values()), list(out.keys()), list(out.keys())),
        lambda names, values: cls(**dict(zip(names, values))),
        namespace="keras",
    )
    if keras.backend.backend() == "jax":
        import jax

        jax.tree_util.register_pytree_node(
            cls,
            lambda out: (list(out.values()), tuple(out.keys())),
            lambda names, values: cls(**dict(zip(names, values))),
        )


outputs.add_registrar(_register_output)


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """The tensors of one `.safetensors` file as NumPy arrays (bfloat16 widened to float32)."""
    import safetensors

    try:
        entries = safetensors.deserialize(file.read_bytes())
    except Exception as e:  # corrupt or truncated: say which file
        raise ValueError(f"cannot read weights from {file}: {e}") from e
    state: dict[str, np.ndarray] = {}
    for name, entry in entries:
        kind = entry["dtype"]
        if kind == "BF16":
            import ml_dtypes

            array = np.frombuffer(entry["data"], dtype=ml_dtypes.bfloat16).astype(np.float32)
        elif kind in _DTYPES:
            array = np.frombuffer(entry["data"], dtype=_DTYPES[kind])
        else:
            raise ValueError(f"{file}: tensor {name} has dtype {kind}, which pvtkit's Keras models do not read")
        state[name] = array.reshape(entry["shape"])
    return state


def read_weights(files: Iterable[Path]) -> dict[str, np.ndarray]:
    """Merge the tensors of every shard. Pickled PyTorch files (`.bin`, `.pth`) need torch, and are read through it
    only when it is installed; safetensors files never need it."""
    state: dict[str, np.ndarray] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"weights file {file} is missing")
        if file.suffix == ".safetensors":
            state.update(read_safetensors(file))
            continue
        import importlib.util

        from ..hub import load_state_dict

        if importlib.util.find_spec("torch") is None:
            raise ValueError(
                f"{file} is a pickled PyTorch file, which needs torch to read; convert it to "
                "safetensors (`pvtkit convert`) or install torch"
            ) from None
        state.update(
            {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in load_state_dict([file]).items()}
        )
    return state


# How a Keras variable's axes map to its PyTorch tensor's: Dense kernels are (in, out) where Linear is (out, in);
# conv kernels (kh, kw, in, out) where Conv2d's are (out, in, kh, kw); depth-wise ones (kh, kw, C, 1) / (C, 1, kh, kw).
_TO_TORCH = {"linear": (1, 0), "conv": (3, 2, 0, 1), "depthwise": (2, 3, 0, 1)}
_TO_KERAS = {"linear": (1, 0), "conv": (2, 3, 1, 0), "depthwise": (2, 3, 0, 1)}


def to_keras(array: np.ndarray, kind: str) -> np.ndarray:
    """A transformers-named tensor in the layout of its Keras variable."""
    if kind in _TO_KERAS:
        array = array.transpose(_TO_KERAS[kind])
    elif kind == "patch":  # conv (hidden, C, ph, pw) -> (C*ph*pw, hidden)
        array = array.reshape(array.shape[0], -1).T
    return np.ascontiguousarray(array)


def to_torch_layout(value: np.ndarray, kind: str, torch_shape: tuple[int, ...]) -> np.ndarray:
    """A Keras variable's value in transformers' layout (`torch_shape`)."""
    if kind in _TO_TORCH:
        value = value.transpose(_TO_TORCH[kind])
    elif kind == "patch":
        value = value.T
    return np.ascontiguousarray(value.reshape(torch_shape))


class Weight:
    """One Keras variable under its transformers name: how it is laid out there (`kind`: same, linear, conv,
    depthwise, patch), and its shape there."""

    __slots__ = ("variable", "kind", "torch_shape")

    def __init__(self, variable: Any, kind: str = "same", torch_shape: tuple[int, ...] | None = None) -> None:
        self.variable, self.kind = variable, kind
        shape = tuple(variable.shape)
        self.torch_shape = torch_shape or (tuple(shape[i] for i in _TO_TORCH[kind]) if kind in _TO_TORCH else shape)


def dense_weights(layer: keras.layers.Dense, name: str) -> dict[str, Weight]:
    """A `Dense` layer as transformers names a `Linear`: `{name}.weight` (transposed) and `{name}.bias`."""
    found = {f"{name}.weight": Weight(layer.kernel, "linear")}
    if layer.use_bias:
        found[f"{name}.bias"] = Weight(layer.bias)
    return found


def norm_weights(layer: keras.layers.LayerNormalization, name: str) -> dict[str, Weight]:
    """A `LayerNormalization` as transformers names a `LayerNorm`."""
    return {f"{name}.weight": Weight(layer.gamma), f"{name}.bias": Weight(layer.beta)}


class KerasPreTrainedModel(keras.Model):
    """Checkpoint loading and saving shared by pvtkit's Keras models.

    A subclass sets `config_class`, `base_model_prefix`, `layouts` (the checkpoint layouts of its family),
    `infer_config` (the family's reading of a config off the tensors), `head_prefixes`, and implements
    `hf_weights()` and `dummy_inputs()`.
    """

    config_class: ClassVar[type[PretrainedConfig]]
    base_model_prefix: ClassVar[str] = ""
    layouts: ClassVar[tuple[Layout, ...]] = ()
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    # What the family's default image processor does differently from ViTImageProcessor's (for `export`).
    processor_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: PretrainedConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.processor_config: dict[str, Any] | None = None  # the checkpoint's preprocessor_config.json, if any

    def export(
        self,
        filepath: str | os.PathLike,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature: Any = None,
        image_bytes: bool = False,
        processor: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Export for serving. `tf_saved_model` (the default) writes a SavedModel for TF Serving with a
        `serving_default` signature on float `pixel_values` `(batch, C, H, W)` and, with `image_bytes=True`, a
        `serve_image_bytes` signature on encoded images, preprocessed in the graph with `processor` (default: the
        checkpoint's `preprocessor_config.json`, else ViTImageProcessor's settings); see `pvtkit.keras.export`.
        Other formats go to Keras' own `Model.export`."""
        if format != "tf_saved_model" or input_signature is not None:
            return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)
        from .export import export_saved_model

        if not self.built:
            self.build(self.dummy_inputs().shape)
        return export_saved_model(
            self,
            filepath,
            image_bytes=image_bytes,
            processor=processor if processor is not None else self.processor_config,
            verbose=verbose,
        )

    @staticmethod
    def infer_config(state: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def hf_weights(self) -> dict[str, Weight]:
        """Every variable under its transformers name (the model must be built)."""
        raise NotImplementedError

    def dummy_inputs(self) -> np.ndarray:
        """The smallest input that builds every variable."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:  # Keras' own serialisation: the transformers config, as a dict
        return {"config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KerasPreTrainedModel:
        return cls(cls.config_class.from_dict(config["config"]))

    # ---- saving ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights as NumPy arrays under transformers' names and layouts."""
        return {
            name: to_torch_layout(np.asarray(keras.ops.convert_to_numpy(w.variable.value)), w.kind, w.torch_shape)
            for name, w in self.hf_weights().items()
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` (transformers' names) into `save_directory`, atomically: a
        save killed half-way leaves the previous contents as they were; other files there are kept."""
        from safetensors.numpy import save_file

        state = self.state_dict()
        self.config.architectures = [type(self).__name__]
        self.config.dtype = "float32"
        with atomic_directory(save_directory, drop=("pytorch_model.bin",)) as staging:
            self.config.save_pretrained(staging)
            target = staging / SAFE_WEIGHTS_NAME
            atomic_write(target, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        return Path(save_directory)

    # ---- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        ignore_mismatched_sizes: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **config_overrides: Any,
    ) -> Any:
        """Load a model from a transformers- or timm-layout checkpoint, with transformers' semantics: weights the
        model lacks are reported and skipped, weights the checkpoint lacks (a new head) are freshly initialised and
        reported, weights of another shape are an error unless `ignore_mismatched_sizes`.

        Args:
            pretrained_model_name_or_path: A directory (`config.json` + weights), a weights file, or a Hub repo id.
            config: Use this config instead of the checkpoint's (or the one inferred from its tensors).
            ignore_mismatched_sizes: Re-initialise weights whose shapes differ instead of raising.
            revision, cache_dir, local_files_only, token: How to reach the Hub (see `huggingface_hub`).
            **config_overrides: Config fields to change (`num_labels=10` for a new head); arguments of the model's
                constructor (`add_pooling_layer=False`) go to it.
        """
        import inspect

        source = str(pretrained_model_name_or_path)
        init_params = set(inspect.signature(cls.__init__).parameters) - {"self", "config", "kwargs"}
        model_kwargs = {k: config_overrides.pop(k) for k in list(config_overrides) if k in init_params}
        hub = HubOptions(revision, cache_dir, local_files_only, token)
        ckpt = resolve_checkpoint(pretrained_model_name_or_path, hub)
        raw = read_weights(ckpt.weight_files)
        state, layout = convert.to_transformers(raw, cls.config_class.model_type, source, layouts=cls.layouts)
        if config is None:
            data = read_json(ckpt.config_file) if ckpt.config_file is not None else {}
            if "model_type" in data or layout.name == "transformers" and data:
                config = cls.config_class.from_dict(data, **config_overrides)
            else:  # no config, or a timm one: read the architecture off the tensors
                fields = convert.infer_config(state, layout, cls.infer_config)
                logger.info("%s: %s layout without a transformers config; inferred %s", source, layout.name, fields)
                config = cls.config_class.from_dict(fields, **config_overrides)
        elif config_overrides:
            config = config.copy(**config_overrides)
        model = cls(config, **model_kwargs)
        model.build(model.dummy_inputs().shape)  # every variable, from the shapes alone
        head_resized = "num_labels" in config_overrides or "id2label" in config_overrides
        model.loading_info = model._assign(state, source, ignore_mismatched_sizes or head_resized)
        config._name_or_path = source
        processor = resolve_file(pretrained_model_name_or_path, "preprocessor_config.json", hub)
        model.processor_config = read_json(processor) if processor is not None else None
        return model

    def _assign(self, state: dict[str, np.ndarray], source: str, ignore_mismatched_sizes: bool) -> dict[str, list]:
        """Copy `state` into the variables; report what was missing, unused or re-initialised."""
        own = self.hf_weights()
        state, dropped_heads = convert.align_prefix(state, own, self.base_model_prefix + ".")
        heads = tuple(self.head_prefixes)
        if not any(k in own and not (heads and k.startswith(heads)) for k in state):
            raise convert.LoadingError(
                f"{source} shares no weight with {type(self).__name__}: its keys look like "
                f"{', '.join(list(state)[:5])}; the model's look like {', '.join(list(own)[:3])}"
            )
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in own if k in state and tuple(state[k].shape) != own[k].torch_shape]
        if mismatched and not ignore_mismatched_sizes:
            shapes = [f"  {k}: checkpoint {tuple(state[k].shape)}, model {own[k].torch_shape}" for k in mismatched]
            raise convert.LoadingError(
                f"{source}: {len(mismatched)} weight(s) have another shape than the model expects "
                "(pass ignore_mismatched_sizes=True to re-initialise them, or num_labels=N for a new head):\n"
                + "\n".join(shapes)
            )
        for name, weight in own.items():
            if name in state and name not in mismatched:
                value = to_keras(np.asarray(state[name], dtype=np.float32), weight.kind)
                weight.variable.assign(value.reshape(tuple(weight.variable.shape)))
        fresh = [*mismatched, *missing]
        if fresh:
            logger.warning(
                "some weights of %s were not in %s and are newly initialised: %s; train the model before use",
                type(self).__name__,
                source,
                ", ".join(fresh),
            )
        if unexpected:
            logger.warning(
                "some weights of %s were not used by %s (skipped): %s",
                source,
                type(self).__name__,
                ", ".join(unexpected),
            )
        if dropped_heads:
            logger.info("%s: ignored task-head weights %s", source, ", ".join(dropped_heads))
        self.newly_initialized_weights = fresh
        return {
            "missing_keys": missing,
            "unexpected_keys": unexpected,
            "mismatched_keys": [(k, tuple(state[k].shape), own[k].torch_shape) for k in mismatched],
        }


class ClassifierTraining:
    """A classifier's head and Keras' training loop for it (output an `ImageClassifierOutput`): the compiled loss
    and metrics see the logits; compiled without a loss, transformers' loss for the config's problem type is used."""

    config: Any
    classifier: Any  # a Dense layer, or None for num_labels=0 (the pooled features are the logits)

    def _build_classifier(self, width: int) -> None:
        if self.classifier is not None:
            self.classifier.build((None, width))

    def _classifier_weights(self) -> dict[str, Weight]:
        return dense_weights(self.classifier, "classifier") if self.classifier is not None else {}

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        if getattr(self, "_compile_loss", None) is None and y is not None:
            loss = classification_loss(logits, y, self.config)
            return loss + keras.ops.sum(self.losses) if self.losses else loss  # type: ignore[attr-defined]
        return super().compute_loss(x, y, logits, sample_weight, training)  # type: ignore[misc]

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        return super().compute_metrics(x, y, logits, sample_weight)  # type: ignore[misc]


def classification_loss(logits: Any, labels: Any, config: PretrainedConfig) -> Any:
    """transformers' loss for the config's problem type (inferred from the labels as it does): mean squared error
    for one output, cross-entropy for integer labels, binary cross-entropy for multi-hot float labels."""
    ops = keras.ops
    problem = config.problem_type
    if problem is None:
        integer = "int" in keras.backend.standardize_dtype(
            labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
        )
        problem = (
            "regression"
            if config.num_labels == 1
            else "single_label_classification"
            if integer
            else "multi_label_classification"
        )
    if problem == "regression":
        return ops.mean(ops.square(ops.reshape(logits, (-1,)) - ops.cast(ops.reshape(labels, (-1,)), logits.dtype)))
    if problem == "single_label_classification":
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    return ops.mean(keras.losses.binary_crossentropy(ops.cast(labels, logits.dtype), logits, from_logits=True))
