"""The configuration base: Hugging Face field names, JSON round-trip, validation at construction.

A config is plain data. `config.json` written by pvtkit loads in transformers and the reverse: the common fields
(`num_labels`, `id2label`, `label2id`, `problem_type`, ...) use transformers' names, and keys pvtkit does not know
are kept and written back, so nothing a user's file carries is lost on a round trip.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ._files import atomic_write_json, read_json

CONFIG_NAME = "config.json"
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# transformers' `hidden_act` names that pvtkit's models implement ("gelu" is the exact erf GELU); each framework's
# layers map every one of them (`pvtkit.layers.ACTIVATIONS`, `pvtkit.keras`).
ACTIVATION_NAMES = (
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
)

# the spellings of a bool `update_from_string` reads, as transformers does
_BOOL_WORDS = {"true": True, "1": True, "y": True, "yes": True, "false": False, "0": False, "n": False, "no": False}

C = TypeVar("C", bound="PretrainedConfig")


class PretrainedConfig:
    """Fields every pvtkit model shares, and the JSON machinery.

    Args:
        num_labels: Size of the classification head; derived from `id2label` when that is given.
        id2label: Class index -> name. Defaults to `LABEL_{i}`.
        label2id: Class name -> index. Defaults to the inverse of `id2label`.
        problem_type: One of `regression`, `single_label_classification`, `multi_label_classification`, or
            None to infer it from the labels at the first loss computation (as transformers does).
        output_hidden_states: Default for the forward argument of the same name.
        output_attentions: Default for the forward argument of the same name.
        return_dict: Default for the forward argument of the same name.
        **kwargs: Any other key is kept as an attribute and written back to `config.json` untouched.
    """

    model_type: ClassVar[str] = ""
    title: ClassVar[str] = ""  # the family's name in messages ("PVTv2")
    # The published architectures, by name (set by each family: its variant table); `from_variant` reads them.
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    # Other spellings of a variant name: prefixes dropped (`pvt_v2_b0` -> `b0`) and aliases.
    variant_prefixes: ClassVar[tuple[str, ...]] = ()
    variant_aliases: ClassVar[dict[str, str]] = {}
    # Keys transformers writes that carry no meaning for pvtkit: accepted on read, not repeated on write.
    _ignored_keys: ClassVar[tuple[str, ...]] = ("transformers_version", "pvtkit_version")

    def __init__(
        self,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
        is_encoder_decoder: bool = False,
        chunk_size_feed_forward: int = 0,
        architectures: list[str] | None = None,
        dtype: str | None = None,
        **kwargs: Any,
    ) -> None:
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} entries")
        else:
            n = 2 if num_labels is None else int(num_labels)
            if n < 0:
                raise ValueError(f"num_labels must be >= 0, got {n}")
            id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.id2label = id2label
        self.label2id = (
            {str(k): int(v) for k, v in label2id.items()}
            if label2id is not None and len(label2id) == len(id2label)
            else {v: k for k, v in id2label.items()}
        )
        if problem_type is not None and problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES} or None, got {problem_type!r}")
        self.problem_type = problem_type
        self.output_hidden_states = bool(output_hidden_states)
        self.output_attentions = bool(output_attentions)
        self.return_dict = bool(return_dict)
        self.is_encoder_decoder = bool(is_encoder_decoder)
        self.chunk_size_feed_forward = int(chunk_size_feed_forward)
        self.architectures = list(architectures) if architectures is not None else None
        torch_dtype = kwargs.pop("torch_dtype", None)  # transformers 4 wrote torch_dtype, 5 writes dtype
        self.dtype = _dtype_name(dtype if dtype is not None else torch_dtype)
        # The version of transformers that wrote the file read (None for a config built in code): readable, as
        # transformers' Trainer reads it, but never written, since pvtkit is not that version of transformers.
        self.transformers_version: str | None = kwargs.pop("transformers_version", None)
        self._name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        for key in self._ignored_keys:
            kwargs.pop(key, None)
        kwargs.pop("model_type", None)
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def num_labels(self) -> int:
        """Number of classes of the classification head (`len(id2label)`)."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if n != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        """transformers 4's name for `return_dict`, which code written against it reads."""
        return self.return_dict

    @property
    def torch_dtype(self) -> str | None:
        """transformers 4's name for `dtype`."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = _dtype_name(value)

    @property
    def name_or_path(self) -> str:
        """What `from_pretrained` was given (a path or Hub id); "" for a config built in code. Not serialised."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(value)

    # ---- dict / JSON -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready data, with `model_type`, in transformers' spelling (`id2label` keyed by int, as
        transformers' `to_dict` has it; JSON turns the keys into strings)."""
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if key.startswith("_") or key in self._ignored_keys:
                continue
            if isinstance(value, tuple):
                value = list(value)
            out[key] = copy.deepcopy(value)
        out["id2label"] = {int(k): v for k, v in self.id2label.items()}
        out["dtype"] = _dtype_name(out.get("dtype"))
        out["model_type"] = self.model_type
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """`to_dict` without the common fields that hold `PretrainedConfig()`'s defaults, as transformers 5's
        `to_diff_dict`: every family field is kept (defaults or not), and `model_type`. transformers also writes its
        own `transformers_version`; pvtkit writes none (it is not that version of transformers)."""
        base = PretrainedConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k not in base or k == "model_type" or v != base[k]}

    def update(self, config_dict: dict[str, Any]) -> None:
        """Set each key of `config_dict` as an attribute, as transformers' `update` does (no validation)."""
        for key, value in config_dict.items():
            setattr(self, key, value)

    def update_from_string(self, update_str: str) -> None:
        """Update existing fields from `"name=value,name=value"`, each value parsed as the field's current type
        (bool from true/false/1/0/yes/no), as transformers does."""
        for item in update_str.split(","):
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(f"update_from_string: expected name=value, got {item!r}")
            if not hasattr(self, key):
                raise ValueError(f"update_from_string: {type(self).__name__} has no field {key!r}")
            old = getattr(self, key)
            value: Any
            if isinstance(old, bool):
                if text.lower() not in _BOOL_WORDS:
                    raise ValueError(f"update_from_string: cannot read {text!r} as a bool (field {key})")
                value = _BOOL_WORDS[text.lower()]
            elif isinstance(old, (int, float, str)):
                value = type(old)(text)
            else:
                raise TypeError(
                    f"update_from_string: only int, float, bool or str fields can be updated; {key} is {old!r}"
                )
            setattr(self, key, value)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], **overrides: Any) -> C:
        """Build a config from a dict (e.g. parsed `config.json`); `overrides` win over the dict's values."""
        data = dict(data)
        model_type = data.get("model_type")
        if cls.model_type and model_type and model_type != cls.model_type:
            raise ValueError(
                f"this config describes a {model_type!r} model; {cls.__name__} expects model_type {cls.model_type!r}"
            )
        if "num_labels" in overrides and "id2label" not in overrides:
            data.pop("id2label", None)
            data.pop("label2id", None)
        if "id2label" in data and "num_labels" in data and len(data["id2label"]) != data["num_labels"]:
            data.pop("num_labels")  # transformers trusts id2label in this case; so do we
        data.update(overrides)
        return cls(**data)

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as indented, key-sorted JSON: `to_diff_dict` (the default, as in transformers) or `to_dict`."""
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Write `to_json_string(use_diff)` to `json_file_path` (atomically)."""
        atomic_write_json(json_file_path, self.to_diff_dict() if use_diff else self.to_dict())

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """`(config dict, unused kwargs)` of a local directory holding `config.json` or of the JSON file itself, as
        transformers' `get_config_dict` returns them (the Hub: `pvtkit.AutoConfig`)."""
        path = Path(pretrained_model_name_or_path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} found at {path}")
        data = read_json(file)
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
        return data, dict(kwargs)

    @classmethod
    def from_json_file(cls: type[C], path: str | os.PathLike, **overrides: Any) -> C:
        data = read_json(path)
        try:
            return cls.from_dict(data, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `config.json` into `save_directory` (atomically) and return its path."""
        path = Path(save_directory) / CONFIG_NAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_pretrained(cls: type[C], path: str | os.PathLike, **overrides: Any) -> C:
        """Read a config from a directory holding `config.json`, or from the JSON file itself."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} found at {path}")
        return cls.from_json_file(file, **overrides)

    # ---- comparisons and display -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def copy(self: C, **changes: Any) -> C:
        """A deep copy with `changes` applied (and validated)."""
        return type(self).from_dict(self.to_dict(), **changes)

    # ---- published variants ------------------------------------------------------------------------------------

    @classmethod
    def variant_key(cls, name: str) -> str | None:
        """The key of `variants` that `name` spells (case, `-`/`_`, prefixes and aliases forgiven), or None."""
        key = name.lower().replace("-", "_")
        for prefix in cls.variant_prefixes:
            key = key.removeprefix(prefix)
        key = cls.variant_aliases.get(key, key)
        return key if key in cls.variants else None

    @classmethod
    def from_variant(cls: type[C], name: str, **overrides: Any) -> C:
        """The published architecture `name`, with a 1000-class ImageNet head; `overrides` change any field,
        e.g. `num_labels=10`."""
        key = cls.variant_key(name)
        if key is None:
            raise ValueError(f"unknown {cls.title} variant {name!r}; expected one of {', '.join(cls.variants)}")
        return cls(**{"num_labels": 1000, **cls.variants[key], **overrides})

    def published_variant(self) -> str | None:
        """The name of the published variant whose architecture this config describes (heads, labels and input size
        aside), or None."""
        ignored = {
            "num_labels",
            "id2label",
            "label2id",
            "architectures",
            "out_features",
            "out_indices",
            "image_size",
            "problem_type",
            "dtype",
            "_name_or_path",
        }
        ours = {k: v for k, v in self.to_dict().items() if k not in ignored}
        for name in self.variants:
            theirs = type(self).from_variant(name).to_dict()
            if all(ours.get(k) == v for k, v in theirs.items() if k not in ignored):
                return name
        return None


def _dtype_name(value: Any) -> str | None:
    """`torch.float16` or `"float16"` -> `"float16"` (None stays None): configs hold dtypes by name, without torch."""
    return None if value is None else str(value).removeprefix("torch.")


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """`16` -> `(16, 16)`; `(224, 320)` stays (height, width)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_activation(name: str, field: str = "hidden_act") -> None:
    """Raise a ValueError unless `name` is one of `ACTIVATION_NAMES`."""
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"unknown {field} {name!r}; expected one of {sorted(ACTIVATION_NAMES)}")


def check_lengths(owner: str, expected: int, **lists: Any) -> None:
    """Raise a ValueError naming every per-stage list whose length is not `expected`."""
    bad = [f"{name} has {len(value)}" for name, value in lists.items() if len(value) != expected]
    if bad:
        raise ValueError(f"{owner}: every per-stage list must have {expected} entries, but " + ", ".join(bad))


def align_stage_outputs(
    owner: str, stage_names: list[str], out_features: Sequence[str] | None, out_indices: Sequence[int] | None
) -> tuple[list[str], list[int]]:
    """A backbone's `(out_features, out_indices)`: whichever is missing filled in from the other (default: the last
    stage), negative indices counted from the end, both checked against `stage_names` and each other."""
    names = stage_names
    if out_indices is not None:
        out_indices = [int(i) + len(names) if int(i) < 0 else int(i) for i in out_indices]
        if any(not 0 <= i < len(names) for i in out_indices):
            raise ValueError(f"{owner}: out_indices {out_indices} out of range for stages {names}")
    if out_features is not None:
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"{owner}: out_features {unknown} are not stage names; expected some of {names}")
    if out_features is None and out_indices is None:
        out_indices = [len(names) - 1]
    if out_features is None:
        out_features = [names[i] for i in out_indices]  # type: ignore[union-attr]
    if out_indices is None:
        out_indices = [names.index(f) for f in out_features]
    out_features = list(out_features)
    if [names[i] for i in out_indices] != out_features:
        raise ValueError(f"{owner}: out_features {out_features} and out_indices {out_indices} disagree")
    if sorted(out_indices) != list(out_indices) or len(set(out_indices)) != len(out_indices):
        raise ValueError(f"{owner}: out_features must be distinct and in stage order, got {out_features}")
    return out_features, list(out_indices)


class BackboneConfigMixin:
    """`out_features` / `out_indices` of a config with `stage_names`: setting either (or None, the last stage)
    re-aligns the other, as transformers' backbone configs do; both are written to `config.json`."""

    stage_names: list[str]

    def _set_stage_outputs(self, out_features: Sequence[str] | None, out_indices: Sequence[int] | None) -> None:
        self._out_features, self._out_indices = align_stage_outputs(
            type(self).__name__, self.stage_names, out_features, out_indices
        )

    @property
    def out_features(self) -> list[str]:
        """The stages a backbone returns, by name (`stage1`..)."""
        return list(self._out_features)

    @out_features.setter
    def out_features(self, names: Sequence[str] | None) -> None:
        self._set_stage_outputs(names, None)

    @property
    def out_indices(self) -> list[int]:
        """The stages a backbone returns, by 0-based index."""
        return list(self._out_indices)

    @out_indices.setter
    def out_indices(self, indices: Sequence[int] | None) -> None:
        self._set_stage_outputs(None, indices)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "out_features": self.out_features, "out_indices": self.out_indices}  # type: ignore[misc]
