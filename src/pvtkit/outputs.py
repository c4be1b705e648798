"""Model outputs: small dataclasses with transformers' field names.

They read as attributes (`out.logits`), as keys (`out["logits"]`) and, for code written against transformers'
tuple outputs, by position (`out[0]`), where fields that are None are skipped, as transformers does. Every output
class is a PyTorch pytree node, so `torch.export`, `torch.compile` and `torch.func` take the models' outputs as
they are.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.utils._pytree as pytree


@dataclass
class ModelOutput:
    """Base of every output: attribute, key and position access over the fields that are not None."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Children are all fields, None ones included (None is an empty pytree), so the structure does not depend
        # on which outputs a call returned; the field names are the context, read when flattening (the dataclass
        # decorator runs after this hook).
        pytree.register_pytree_node(
            cls,
            lambda out: ([getattr(out, f.name) for f in fields(out)], [f.name for f in fields(out)]),
            lambda values, names: cls(**dict(zip(names, values))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
            flatten_with_keys_fn=lambda out: (
                [(pytree.GetAttrKey(f.name), getattr(out, f.name)) for f in fields(out)], [f.name for f in fields(out)]
            ),
        )

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in fields(self)) if v is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


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
