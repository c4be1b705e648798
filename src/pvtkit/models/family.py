"""The family spec, and the registry of families that every generic part of pvtkit reads.

A family (PVTv2, ViT, ...) is one file in this package: its config, layers, models, variant table, the checkpoint
layouts it reads, and a `FAMILY = Family(...)` describing all of that. `auto`, `convert`, `export`, the pipelines,
training and `analysis` look families up here and never branch on one. Adding a family is one new file plus one
entry in `FAMILY_MODULES`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Tensors by name: PyTorch tensors, or NumPy arrays where no PyTorch is loaded (the Keras models). This module and
# the layouts' converters import no framework.
StateDict = dict[str, Any]

# The registry: one module of this package per family, in the order layouts are tried.
FAMILY_MODULES = ("pvt_v2", "vit", "segformer", "glpn")

# Task names, as the Auto classes and pipelines know them.
TASKS = ("model", "image-classification", "backbone", "masked-image-modeling", "semantic-segmentation",
         "depth-estimation")


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: the family it holds, a key only it has, and how to convert it to transformers' names.

    Args:
        name: "transformers", "timm", "original" (the authors' release), ...
        model_type: The family's `model_type`.
        sentinel: A key only this layout has, matched after the family's prefix (`pvt_v2.`) is removed.
        convert: The pure `dict -> dict` conversion to transformers' names.
        config_fields: Config fields the source's code fixes and a checkpoint without `config.json` cannot tell
            (timm's LayerNorm epsilon).
        prefix: The family's state-dict prefix (`vit`), for layouts that are read without the family's PyTorch
            classes (the Keras models'); empty means the family's (`Family.prefix`), which it must equal.
    """

    name: str
    model_type: str
    sentinel: str
    convert: Callable[[StateDict], StateDict]
    config_fields: Mapping[str, Any] = field(default_factory=dict)
    prefix: str = ""


def _no_multiple(config: Any) -> tuple[int, int]:
    return 1, 1


def _no_minimum(config: Any) -> int:
    return 1


def _nothing(*args: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Family:
    """What generic code needs to know about a model family.

    Args:
        model_type: `config.json`'s `model_type`.
        config_class: Its config class (which carries the family's title and variant table).
        classes: The model class of each task in `TASKS` the family has.
        processor: `image_processor_type` of the processor a checkpoint without `preprocessor_config.json` gets.
        task_processors: The same for tasks whose inputs differ (PVTv2's segmentation model: SegFormer's).
        layouts: The checkpoint layouts it reads, transformers' first.
        infer_config: Config fields read off a transformers-named state dict (a checkpoint without `config.json`).
        size_multiple: `(h, w)` that input sides must be multiples of (ViT: the patch).
        min_export_side: The smallest input side a `torch.export` program of the model accepts.
        describe: `(config, output with hidden states) -> dict`: the architecture part of `analysis.describe`.
        export_metadata: `config -> dict` of family-specific ONNX metadata entries.
        feature_options: Constructor options of the encoder that extracts features (ViT: no pooler).
    """

    model_type: str
    config_class: type
    classes: Mapping[str, type]
    processor: str
    layouts: tuple[Layout, ...]
    infer_config: Callable[[StateDict], dict[str, Any]]
    size_multiple: Callable[[Any], tuple[int, int]] = _no_multiple
    min_export_side: Callable[[Any], int] = _no_minimum
    describe: Callable[[Any, Any], dict[str, Any]] = _nothing
    export_metadata: Callable[[Any], dict[str, Any]] = _nothing
    feature_options: Mapping[str, Any] = field(default_factory=dict)
    task_processors: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for layout in self.layouts:
            if layout.prefix and layout.prefix != self.prefix:
                raise ValueError(f"layout {layout.name} of {self.model_type} names prefix {layout.prefix!r}; the "
                                 f"family's is {self.prefix!r}")  # fmt: skip

    def processor_for(self, task: str) -> str:
        """`image_processor_type` of the default processor of the family's `task` model."""
        return self.task_processors.get(task, self.processor)

    @property
    def prefix(self) -> str:
        """The attribute (and state-dict prefix) under which task models hold the encoder (`pvt_v2`)."""
        return next(iter(self.classes.values())).base_model_prefix

    @property
    def title(self) -> str:
        """The family's name in messages ("PVTv2")."""
        return self.config_class.title

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return self.config_class.variants

    def model_class(self, task: str) -> type:
        """The class of `task`, or a ValueError naming the tasks the family has."""
        if task not in self.classes:
            raise ValueError(f"{self.title} has no {task} model; it has {', '.join(self.classes)}")
        return self.classes[task]


@functools.cache
def families() -> dict[str, Family]:
    """Every registered family, by `model_type`."""
    found = (importlib.import_module(f"{__package__}.{name}").FAMILY for name in FAMILY_MODULES)
    return {family.model_type: family for family in found}


def get(model_type: str | None) -> Family:
    """The family of `model_type`, or a ValueError naming the supported ones."""
    registry = families()
    if model_type not in registry:
        raise ValueError(f"model_type {model_type!r} is not one of pvtkit's ({', '.join(registry)})")
    return registry[model_type]


def family_of(thing: Any) -> Family:
    """The family of a model, a model class, or a config."""
    config = getattr(thing, "config", None)
    model_type = getattr(config if config is not None else thing, "model_type", None)
    if not model_type and hasattr(thing, "config_class"):
        model_type = thing.config_class.model_type
    return get(model_type)


def task_of(model: Any) -> str:
    """The task name of a model's class (`"backbone"`, ...)."""
    family = family_of(model)
    for task, cls in family.classes.items():
        if type(model) is cls:
            return task
    raise ValueError(f"{type(model).__name__} is not one of {family.title}'s task classes")


def class_named(name: str) -> type | None:
    """The model class called `name` (a `config.json` `architectures` entry), or None."""
    for family in families().values():
        for cls in family.classes.values():
            if cls.__name__ == name:
                return cls
    return None


def all_layouts() -> list[Layout]:
    """Every family's checkpoint layouts, in registry order."""
    return [layout for family in families().values() for layout in family.layouts]


def config_for_variant(name: str, **overrides: Any) -> Any:
    """The config of the published variant `name` of whichever family has it (`b2`, `base_patch16_224`, ...)."""
    for family in families().values():
        if family.config_class.variant_key(name) is not None:
            return family.config_class.from_variant(name, **overrides)
    known = "; ".join(f"{f.title}: {', '.join(f.variants)}" for f in families().values())
    raise ValueError(f"{name!r} is not a known variant ({known})")
