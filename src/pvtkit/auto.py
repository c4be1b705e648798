"""Auto classes: pick the config, model or image processor class from `model_type` / `image_processor_type`.

`AutoModelForImageClassification.from_pretrained(x)` works for any checkpoint `from_pretrained` reads: when there
is no transformers `config.json` (a timm or whai362/PVT file) the family is told from the tensors themselves.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ._files import read_json
from .config import PretrainedConfig, pair
from .convert import unwrap
from .hub import HubOptions, load_state_dict, resolve_checkpoint, resolve_file
from .modeling import PreTrainedModel
from .models import family as registry
from .processing import PREPROCESSOR_CONFIG_NAME

logger = logging.getLogger("pvtkit")

_HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token")
# transformers 5's `AutoImageProcessor.from_pretrained(backend=...)`: "torchvision" is pvtkit's tensor back end
IMAGE_PROCESSOR_BACKENDS = ("torchvision", "pil")


def _hub_options(kwargs: dict[str, Any]) -> HubOptions:
    return HubOptions(**{k: kwargs[k] for k in _HUB_KEYS if k in kwargs})


def _model_type_of(path: str | os.PathLike, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The family of a checkpoint, from its config.json or else from its tensors (returned for reuse)."""
    ckpt = resolve_checkpoint(path, _hub_options(kwargs))
    if ckpt.config_file is not None:
        data = read_json(ckpt.config_file)
        if data.get("model_type") in registry.families():
            return data["model_type"], {}
        if "model_type" in data:
            raise ValueError(
                f"{path} is a {data['model_type']!r} model; pvtkit supports {', '.join(registry.families())}"
            )
    state = load_state_dict(ckpt.weight_files)
    layout, _ = registry.detect_layout(unwrap(state, str(path)), str(path))
    return layout.model_type, {"state_dict": state}


def checkpoint_task(source: str | os.PathLike, **hub_options: Any) -> str | None:
    """The registry task (`image-classification`, `semantic-segmentation`, ...) of a checkpoint's class, read off its
    `config.json` `architectures`; None when it has no config or an architecture pvtkit has no class for (a timm or
    whai362/PVT file, which loads as a classifier)."""
    try:
        file = resolve_file(source, "config.json", _hub_options(hub_options))
        if file is None:
            return None
        found = registry.class_named((AutoConfig.from_pretrained(str(file)).architectures or [""])[0] or "")
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    return next(t for t, cls in registry.family_of(found).classes.items() if cls is found)


class _AutoModel:
    """Dispatch `from_pretrained` / `from_config` on `model_type` to the family's class for `task`."""

    task = ""

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is not instantiated: use from_pretrained() or from_config()")

    @classmethod
    def _class_for(cls, model_type: str) -> type[PreTrainedModel]:
        family = registry.get(model_type)
        if cls.task not in family.classes:
            have = [f.title for f in registry.families().values() if cls.task in f.classes]
            raise ValueError(f"{cls.__name__} has no {model_type!r} model; it supports {', '.join(have) or 'none'}")
        return family.classes[cls.task]

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> PreTrainedModel:
        """A freshly initialised model of the class matching `config.model_type`."""
        return cls._class_for(config.model_type)(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs: Any) -> Any:
        """Load with the class matching the checkpoint's family; `kwargs` go to that class's `from_pretrained`."""
        config, state = kwargs.get("config"), kwargs.get("state_dict")
        if config is not None:
            model_type, extra = config.model_type, {}
        elif state is not None:  # the family from the given tensors
            model_type, extra = registry.detect_layout(unwrap(state, "the given state_dict"))[0].model_type, {}
        else:
            model_type, extra = _model_type_of(pretrained_model_name_or_path, kwargs)
        return cls._class_for(model_type).from_pretrained(pretrained_model_name_or_path, **extra, **kwargs)


class AutoModel(_AutoModel):
    """The bare encoder: `PvtV2Model`, `ViTModel`, ..."""

    task = "model"


class AutoModelForImageClassification(_AutoModel):
    """`PvtV2ForImageClassification`, `ViTForImageClassification`, ..."""

    task = "image-classification"


class AutoModelForMaskedImageModeling(_AutoModel):
    """`ViTForMaskedImageModeling`."""

    task = "masked-image-modeling"


class AutoModelForSemanticSegmentation(_AutoModel):
    """`SegformerForSemanticSegmentation`, `PvtV2ForSemanticSegmentation`."""

    task = "semantic-segmentation"


class AutoModelForDepthEstimation(_AutoModel):
    """`GLPNForDepthEstimation`."""

    task = "depth-estimation"


class AutoModelForObjectDetection(_AutoModel):
    """`DeformableDetrForObjectDetection`."""

    task = "object-detection"


class AutoBackbone(_AutoModel):
    """Multi-scale backbones: `PvtV2Backbone`."""

    task = "backbone"


# task -> its Auto class (for code that picks a class by task: export's --task, pipelines)
AUTO_CLASSES: dict[str, type[_AutoModel]] = {
    cls.task: cls
    for cls in (
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForMaskedImageModeling,
        AutoModelForSemanticSegmentation,
        AutoModelForDepthEstimation,
        AutoModelForObjectDetection,
        AutoBackbone,
    )
}


class AutoConfig:
    """Read a config and return it as the class its `model_type` names."""

    def __init__(self) -> None:
        raise TypeError("AutoConfig is not instantiated: use from_pretrained() or for_model()")

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PretrainedConfig:
        return registry.get(model_type).config_class(**kwargs)

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
        """The config of a directory, a `config.json`, or a Hub repo; `kwargs` beyond the Hub options override
        config fields."""
        options = _hub_options(kwargs)
        overrides = {k: v for k, v in kwargs.items() if k not in _HUB_KEYS}
        path = str(pretrained_model_name_or_path)
        file = pretrained_model_name_or_path if path.endswith(".json") else resolve_file(path, "config.json", options)
        if file is None:
            raise FileNotFoundError(f"{path}: no config.json found (as a local directory or a Hub repo)")
        data = read_json(file)
        try:
            return registry.get(data.get("model_type")).config_class.from_dict(data, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{file}: {e}") from e


class AutoImageProcessor:
    """Load the image processor a checkpoint names in `preprocessor_config.json` (`image_processor_type`).

    Without one, the family's default processor (from `config.json`'s `model_type`) is returned, and a warning
    says so. transformers 5's `backend="torchvision"` (or the older `use_fast=True`) picks the torch-tensor back end
    of the same processor (`...Fast`), `backend="pil"` the PIL one; with neither, the class the file names.
    """

    def __init__(self) -> None:
        raise TypeError("AutoImageProcessor is not instantiated: use from_pretrained()")

    @staticmethod
    def from_pretrained(
        pretrained_model_name_or_path: str | os.PathLike,
        use_fast: bool | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ):
        if backend is not None and backend not in IMAGE_PROCESSOR_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(IMAGE_PROCESSOR_BACKENDS)} or None, got {backend!r}")
        if backend is None and use_fast is not None:
            backend = "torchvision" if use_fast else "pil"
        use_fast = backend == "torchvision"
        options = _hub_options(kwargs)
        overrides = {k: v for k, v in kwargs.items() if k not in _HUB_KEYS}
        path = str(pretrained_model_name_or_path)
        file = resolve_file(path, PREPROCESSOR_CONFIG_NAME, options)
        if file is not None:
            data = read_json(file)
            kind = data.get("image_processor_type") or data.get("feature_extractor_type")
            if kind not in registry.IMAGE_PROCESSOR_TYPES:
                raise ValueError(
                    f"{file}: image_processor_type {kind!r} is not one pvtkit knows "
                    f"({', '.join(sorted(registry.IMAGE_PROCESSOR_TYPES))})"
                )
        else:
            config = AutoConfig.from_pretrained(path, **{k: kwargs[k] for k in _HUB_KEYS if k in kwargs})
            processor = default_image_processor(config, use_fast)
            logger.warning(
                "%s has no %s; using %s's defaults (%s)",
                path,
                PREPROCESSOR_CONFIG_NAME,
                type(processor).__name__,
                _sizing(processor),
            )
            return type(processor)(**{"size": processor.size, **overrides})
        cls = registry.IMAGE_PROCESSOR_TYPES[kind]
        if backend is not None:  # the same processor on the asked back end: `X`/`XPil` is PIL, `XFast` tensors
            base = cls.__name__.removesuffix("Fast").removesuffix("Pil")  # a `...FeatureExtractor` kind too
            cls = registry.IMAGE_PROCESSOR_TYPES.get(base + ("Fast" if use_fast else ""), cls)
        return cls.from_pretrained(file, **overrides)


def default_image_processor(model_or_config: Any, use_fast: bool = False) -> Any:
    """The default image processor (PIL back end, or tensor with `use_fast`) of a model's family and task (a config:
    the family's), sized to the config's `image_size` when it has one: what a checkpoint that ships no
    `preprocessor_config.json` is fed with."""
    config = getattr(model_or_config, "config", model_or_config)
    family = registry.family_of(config)
    task = "model"
    if isinstance(model_or_config, PreTrainedModel):
        task = next((t for t, cls in family.classes.items() if isinstance(model_or_config, cls)), task)
    kind = family.processor_for(task)
    types = registry.IMAGE_PROCESSOR_TYPES
    cls = types[kind.removesuffix("Pil") + "Fast"] if use_fast else types[kind]
    if getattr(config, "image_size", None) is None or cls().size is None:  # GLPN's: sides to multiples of 32
        return cls()
    height, width = pair(config.image_size)
    return cls(size={"height": height, "width": width})


def _sizing(processor: Any) -> str:
    """How a processor sizes images, for messages: `224x224`, `shortest edge 256`, `sides to multiples of 32`."""
    size = processor.size
    if size is None:
        return f"sides to multiples of {processor.size_divisor}"
    if "shortest_edge" in size:
        longest = f", longest {size['longest_edge']}" if size.get("longest_edge") else ""
        return f"shortest edge {size['shortest_edge']}{longest}"
    if "max_height" in size:
        return f"within {size['max_height']}x{size['max_width']}"
    return f"{size['height']}x{size['width']}"


def image_processor_for(source: str | os.PathLike, model: Any, use_fast: bool = False, **hub_options: Any) -> Any:
    """`AutoImageProcessor.from_pretrained(source)`, or, when the checkpoint has no usable processor config (a bare
    weights file, a directory without one), the defaults of `model`'s family and task (a PVTv2 classifier's weights
    loaded into a depth model: the depth model's processor), with a warning that says so."""
    try:
        if resolve_file(source, PREPROCESSOR_CONFIG_NAME, _hub_options(hub_options)) is None:
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME}")
        return AutoImageProcessor.from_pretrained(source, use_fast=use_fast or None, **hub_options)
    except (OSError, ValueError) as e:
        processor = default_image_processor(model, use_fast)
        logger.warning(
            "%s has no usable %s (%s); using %s's defaults (%s)",
            source,
            PREPROCESSOR_CONFIG_NAME,
            e,
            type(processor).__name__,
            _sizing(processor),
        )
        return processor


def convert_checkpoint(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    variant: str | None = None,
    dtype: str | None = None,
    **hub_options: Any,
) -> PreTrainedModel:
    """Turn any supported checkpoint into a transformers-format directory (config, safetensors, processor config).

    The task is told from the weights: the task class whose head the checkpoint has (a classifier gives an
    `...ForImageClassification`, a MIM decoder a `ViTForMaskedImageModeling`), else the bare encoder (e.g. a
    detection backbone's weights).

    Args:
        source: A directory, weights file or Hub repo id, in transformers, timm or whai362/PVT layout.
        destination: The directory to write (replaced atomically).
        variant: A published architecture (`b2`, `base_patch16_224`, ...) to use instead of inferring one.
        dtype: Cast the weights before saving (`float32`, `bfloat16`, `float16`).
    """
    options = _hub_options(hub_options)
    ckpt = resolve_checkpoint(source, options)
    state = load_state_dict(ckpt.weight_files)
    converted, layout = registry.to_transformers(state, None, str(source))
    family = registry.get(layout.model_type)
    heads = [cls for cls in family.classes.values() if cls.head_prefixes]
    model_class = next(
        (cls for cls in heads if any(k.startswith(cls.head_prefixes) for k in converted)), family.classes["model"]
    )
    kwargs: dict[str, Any] = {"state_dict": state, "dtype": dtype, **hub_options}
    if variant is not None:
        config = family.config_class.from_variant(variant)
        labels = family.infer_config(converted).get("num_labels", config.num_labels)
        kwargs["config"] = config.copy(num_labels=labels) if labels != config.num_labels else config
    model = model_class.from_pretrained(source, **kwargs)
    processor_file = resolve_file(source, PREPROCESSOR_CONFIG_NAME, options)
    if processor_file is not None:
        processor = AutoImageProcessor.from_pretrained(processor_file.parent)
    else:
        processor = default_image_processor(model)
    model.save_pretrained(destination)
    processor.save_pretrained(destination)
    return model
