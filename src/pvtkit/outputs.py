"""Model outputs: dataclasses with transformers' field names that are also dicts, as transformers' are.

They read as attributes (`out.logits`), as keys (`out["logits"]`, `"logits" in out`, `out.get(...)`, `dict(out)`:
the fields that are not None) and, for code written against transformers' tuple outputs, by position (`out[0]`),
where fields that are None are skipped, as transformers does. Code that tests `isinstance(out, dict)` (Trainer,
Deformable DETR's backbone wrapper) takes them as it takes transformers'.

The same classes serve the PyTorch and the Keras models, so this module imports no framework. Each framework that
traces through outputs registers them as its pytree nodes through `add_registrar` when it loads: `pvtkit.modeling`
for PyTorch (`torch.export`, `torch.compile`, `torch.func`), `pvtkit.keras` for Keras' trees and JAX's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CLASSES: list[type] = []  # every output class, in definition order
_REGISTRARS: list[Callable[[type], None]] = []  # one per framework that has loaded: registers a class as its node


def add_registrar(register: Callable[[type], None]) -> None:
    """Have `register(cls)` run for every output class, those defined so far and any defined later. A framework
    calls this once, when it loads, to make the outputs its pytree nodes; children are the fields that are not
    None, named, as transformers' outputs flatten (tracing transforms take only tensors)."""
    _REGISTRARS.append(register)
    for cls in _CLASSES:
        register(cls)


@dataclass
class ModelOutput(dict):
    """Base of every output: the fields that are not None are also the dict's items, kept in step."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES.append(cls)
        for register in _REGISTRARS:
            register(cls)

    def __post_init__(self) -> None:
        # Built the way `dict` is, from (name, value) pairs in the first argument: TensorFlow rebuilds the outputs
        # of a traced function so (`type(out)(pairs)`), as it does any mapping.
        # Every forward builds an output: the cheap test first, the field list only when it passes.
        first_name = next(iter(self.__dataclass_fields__))
        first = getattr(self, first_name)
        if not isinstance(first, (Iterator, dict)):
            return
        names = [f.name for f in fields(self)]
        if all(getattr(self, n) is None for n in names[1:]):
            setattr(self, names[0], None)
            for key, value in first.items() if isinstance(first, dict) else first:
                self[key] = value

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


@dataclass
class DeformableDetrModelOutput(ModelOutput):
    """Deformable DETR's encoder-decoder output. `last_hidden_state` `(B, Q, d_model)` is the last decoder layer's;
    `intermediate_hidden_states` `(B, decoder_layers, Q, d_model)` and `intermediate_reference_points`
    `(B, decoder_layers, Q, 2 or 4)` stack every layer's, `init_reference_points` `(B, Q, 2 or 4)` are the first
    layer's input. `encoder_last_hidden_state` is `(B, S, d_model)` over the flattened levels. The hidden states
    are each layer's input and then every layer's output; `encoder_attentions` and `cross_attentions` are the
    deformable attention weights `(B, queries, heads, levels, points)`, `decoder_attentions` the self-attention's
    `(B, heads, Q, Q)`. With two-stage, `enc_outputs_class` `(B, S, num_labels)` and `enc_outputs_coord_logits`
    `(B, S, 4)` score and place the encoder's proposals."""

    init_reference_points: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None


@dataclass
class DeformableDetrObjectDetectionOutput(ModelOutput):
    """Deformable DETR's detections: `logits` `(B, Q, num_labels)` (sigmoid scores, no "no object" class) and
    `pred_boxes` `(B, Q, 4)` `(cx, cy, w, h)` normalised to the image (its unpadded part); with labels, the `loss`,
    its terms (`loss_dict`) and, with `auxiliary_loss`, the other decoder layers' predictions
    (`auxiliary_outputs`). The other fields are `DeformableDetrModelOutput`'s."""

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    auxiliary_outputs: list[dict[str, torch.Tensor]] | None = None
    last_hidden_state: torch.Tensor | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    init_reference_points: torch.Tensor | None = None
    intermediate_hidden_states: torch.Tensor | None = None
    intermediate_reference_points: torch.Tensor | None = None
    enc_outputs_class: torch.Tensor | None = None
    enc_outputs_coord_logits: torch.Tensor | None = None
