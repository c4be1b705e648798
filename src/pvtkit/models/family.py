"""The family spec, and the registry of families that every generic part of pvtkit reads.

A family (PVTv2, ViT, ...) is one package of `pvtkit.models`: `configuration.py` (its config class and variant
table), `conversion.py` (the checkpoint layouts it reads and config inference), `modeling.py` (its layers, models
and a `FAMILY = Family(...)` describing all of that) and `processing.py` (its image processors). `auto`, `export`,
the pipelines, training and `analysis` look families up here and never branch on one; `convert` holds the rule
machinery and detects among the layouts it is handed, which this registry hands it (`detect_layout`,
`to_transformers`): the one owner of "which family is this checkpoint?". Adding a family is one new package plus
one entry in `FAMILY_MODULES`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import convert
from ..convert import Layout, StateDict

# The registry: one package of `pvtkit.models` per family, in the order layouts are tried.
FAMILY_MODULES = ("pvt_v2", "vit", "segformer", "glpn", "deformable_detr")

# The heads a family's model classes fill (`Family.classes` keys, the Auto classes' `task`); which head a task runs
# is the task's spec (`pvtkit.tasks`: `Task.heads`).
HEADS = (
    "model",
    "image-classification",
    "backbone",
    "masked-image-modeling",
    "semantic-segmentation",
    "depth-estimation",
    "object-detection",
)


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
        classes: The model class of each head in `HEADS` the family has.
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
                raise ValueError(
                    f"layout {layout.name} of {self.model_type} names prefix {layout.prefix!r}; the "
                    f"family's is {self.prefix!r}"
                )
        # every layout the registry hands out names its prefix: `convert` knows no family to look it up in
        layouts = tuple(layout if layout.prefix else replace(layout, prefix=self.prefix) for layout in self.layouts)
        object.__setattr__(self, "layouts", layouts)

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
    found = (importlib.import_module(f"{__package__}.{name}.modeling").FAMILY for name in FAMILY_MODULES)
    return {family.model_type: family for family in found}


@functools.cache
def config_classes() -> dict[str, type]:
    """Every registered family's config class (title, variants, variant prefixes), by `model_type`, read from the
    families' torch-free `configuration` modules: what a command's `--help` lists without loading PyTorch."""
    found = []
    for name in FAMILY_MODULES:
        module = importlib.import_module(f"{__package__}.{name}.configuration")
        found.extend(
            c
            for c in vars(module).values()
            if isinstance(c, type)
            and c.__module__ == module.__name__
            and getattr(c, "model_type", None)
            and getattr(c, "variants", None) is not None
        )
    return {c.model_type: c for c in found}


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


# ---- checkpoints: which family's layout is this? -----------------------------------------------------------------


def detect_layout(state: StateDict, source: str = "checkpoint", prefer: str | None = None) -> tuple[Layout, StateDict]:
    """Which registered family's layout `state` is in (`convert.detect_layout` over `all_layouts()`); `prefer`, a
    `model_type`, tells apart families whose layouts look alike (a bare MiT encoder: SegFormer's or GLPN's)."""
    registry = families()
    names = [f.title for f in registry.values()]
    titles = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    known = "; ".join(f"{f.title}: {', '.join(dict.fromkeys(lo.name for lo in f.layouts))}" for f in registry.values())
    return convert.detect_layout(
        state, source, prefer, layouts=all_layouts(), expected=f"a {titles} checkpoint pvtkit knows (layouts {known})"
    )


def to_transformers(
    state: StateDict, model_type: str | None = None, source: str = "checkpoint"
) -> tuple[StateDict, Layout]:
    """Convert a checkpoint of any registered family's layout to transformers' names; check it holds the family
    `model_type` (when given)."""
    layout, state = detect_layout(convert.unwrap(state, source), source, prefer=model_type)
    if model_type is not None and layout.model_type != model_type:
        found, wanted = families()[layout.model_type].title, families()[model_type].title
        raise ValueError(
            f"{source} is a {found} checkpoint ({layout.name} layout), not a {wanted} one; load it with "
            f"{found}'s classes or the Auto classes"
        )
    return layout.convert(state), layout


def infer_config(state: StateDict, layout: Layout) -> dict[str, Any]:
    """Config fields for a converted state dict without a config.json (`convert.infer_config` with the layout's
    family's inference)."""
    return convert.infer_config(state, layout, get(layout.model_type).infer_config)


# ---- image processors ---------------------------------------------------------------------------------------------


@functools.cache
def image_processor_types() -> dict[str, type]:
    """`image_processor_type` values (ours and transformers') -> the processor class that loads them: every
    family's `processing` module, imported (no PyTorch) so that each registers its classes."""
    for name in FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{name}.processing")
    from ..processing import IMAGE_PROCESSOR_TYPES

    return IMAGE_PROCESSOR_TYPES


def __getattr__(name: str) -> Any:
    if name == "IMAGE_PROCESSOR_TYPES":  # PEP 562: the complete table, assembled at first use
        return image_processor_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
