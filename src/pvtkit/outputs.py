"""Model outputs: dataclasses with transformers' field names that are also dicts, as transformers' are.

They read as attributes (`out.logits`), as keys (`out["logits"]`, `"logits" in out`, `out.get(...)`, `dict(out)`:
the fields that are not None) and, for code written against transformers' tuple outputs, by position (`out[0]`),
where fields that are None are skipped, as transformers does. Code that tests `isinstance(out, dict)` (Trainer,
Deformable DETR's backbone wrapper) takes them as it takes transformers'. Every output class is a PyTorch pytree
node, so `torch.export`, `torch.compile` and `torch.func` take the models' outputs as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.utils._pytree as pytree


@dataclass
class ModelOutput(dict):
    """Base of every output: the fields that are not None are also the dict's items, kept in step."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Children are the fields that are not None, named in the context, as transformers' outputs flatten:
        # torch.func's transforms take only tensors.
        pytree.register_pytree_node(
            cls,
            lambda out: (list(out.values()), out.keys()),
            lambda values, names: cls(**dict(zip(names, values))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
            flatten_with_keys_fn=lambda out: ([(pytree.MappingKey(k), v) for k, v in out.items()], out.keys()),
        )

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dataclass_fields__:
            if value is None:
                dict.pop(self, name, None)
            else:
                dict.__setitem__(self, name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are not None, in field order."""
        return tuple(v for v in (getattr(self, f.name) for f in fields(self)) if v is not None)

    def keys(self) -> list[str]:  # type: ignore[override]
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:  # type: ignore[override]
        return list(self.to_tuple())

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [(k, getattr(self, k)) for k in self.keys()]

    def __iter__(self):
        return iter(self.keys())

    def __reduce__(self):  # pickle (DataLoader workers, multiprocessing) through the fields, not the dict
        return type(self), tuple(getattr(self, f.name) for f in fields(self))


@dataclass
class BaseModelOutput(ModelOutput):
    """Encoder output. For PVTv2, `last_hidden_state` is NCHW `(B, C, H/32, W/32)` and `hidden_states` holds one
    NCHW map per stage; `attentions` holds, per stage, a tuple with one `(B, heads, N, N_kv)` map per block."""

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """Encoder output with a pooled summary of the sequence (ViT's pooler on the [CLS] token)."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None


@dataclass
class ImageClassifierOutput(ModelOutput):
    """Classifier output: `logits` `(B, num_labels)`, and `loss` when labels were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None


@dataclass
class BackboneOutput(ModelOutput):
    """Backbone output: one NCHW map per selected stage, in stage order."""

    feature_maps: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None


@dataclass
class MaskedImageModelingOutput(ModelOutput):
    """Masked-image-modeling output: the `reconstruction` `(B, C, H, W)` and, with a mask, the masked L1 `loss`."""

    loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None


@dataclass
class SemanticSegmenterOutput(ModelOutput):
    """Semantic segmentation output: `logits` `(B, num_labels, H/4, W/4)`, and `loss` when labels were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None


@dataclass
class DepthEstimatorOutput(ModelOutput):
    """Depth estimation output: `predicted_depth` `(B, H, W)`, and `loss` when labels were given."""

    loss: torch.Tensor | None = None
    predicted_depth: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None
