"""The model base: save_pretrained / from_pretrained in Hugging Face format, weight init, dtype and device.

The state dict is the contract: module names are transformers' on-disk names, so a `model.safetensors` moves
between pvtkit and transformers untouched. Loading reports missing, unexpected and mis-shaped keys by name.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import outputs
from ._files import atomic_directory, atomic_write, read_json
from .config import PretrainedConfig
from .convert import LoadingError, align_prefix
from .dtypes import parse_dtype
from .hub import HubOptions, load_state_dict, resolve_checkpoint

logger = logging.getLogger("pvtkit")

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"

M = TypeVar("M", bound="PreTrainedModel")


def _register_output(cls: type) -> None:
    """Make an output class a PyTorch pytree node, so torch.export, torch.compile and torch.func take it."""
    pytree.register_pytree_node(
        cls,
        lambda out: (list(out.values()), out.keys()),
        lambda values, names: cls(**dict(zip(names, values))),
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=lambda out: ([(pytree.MappingKey(k), v) for k, v in out.items()], out.keys()),
    )


outputs.add_registrar(_register_output)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """The loss transformers computes for a classifier, chosen by `config.problem_type`.

    With no problem type set it is inferred once from the labels and stored in the config (as transformers
    does): regression when there is one label, single-label cross-entropy for integer labels, multi-label BCE
    otherwise.
    """
    n = config.num_labels
    if config.problem_type is None:
        if n == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if n == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, n), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


_building = threading.local()


@contextlib.contextmanager
def _skip_weight_init():
    """Build models without the random init (`from_pretrained` overwrites the weights anyway)."""
    before = getattr(_building, "skip_init", False)
    _building.skip_init = True
    try:
        yield
    finally:
        _building.skip_init = before


class _InitOnceMeta(type(nn.Module)):
    """Initialise a model's weights once, after the outermost pvtkit model is built.

    A task model builds its encoder (itself a pvtkit model) inside its own __init__; initialising at the end of
    each __init__ would initialise the encoder twice, which for PVTv2-B5 doubles the construction time.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_building, "depth", 0)
        _building.depth = depth + 1
        try:
            model = super().__call__(*args, **kwargs)
        finally:
            _building.depth = depth
        if depth == 0 and not getattr(_building, "skip_init", False):
            model.init_weights()
        if depth == 0:
            model._checkpointing_from_config()
        return model


def checkpointed(owner: nn.Module, layer: Callable[..., Any], *args: Any) -> Any:
    """`layer(*args)` with its activations recomputed in the backward, the way `activation_checkpointing_enable`
    set `owner` up (its `torch.utils.checkpoint.checkpoint` arguments; `use_reentrant=False` unless told)."""
    run = getattr(owner, "_gradient_checkpointing_func", None)
    return run(layer, *args) if run is not None else checkpoint(layer, *args, use_reentrant=False)


class PreTrainedModel(nn.Module, metaclass=_InitOnceMeta):
    """Base of every pvtkit model: Hugging Face save/load, one weight initialisation, gradient checkpointing.

    Subclasses set `config_class`, `base_model_prefix` (the attribute holding the encoder in task models, e.g.
    `pvt_v2`), `head_prefixes` (the state-dict prefixes of task heads, which may be freshly initialised when a
    checkpoint lacks them or has another number of classes) and `output_names` (the outputs an export returns).
    """

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    base_model_prefix: ClassVar[str] = ""
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    # The output fields an export returns, by name (empty: the class is not exported); see `named_outputs`.
    output_names: ClassVar[tuple[str, ...]] = ()
    main_input_name: ClassVar[str] = "pixel_values"
    supports_gradient_checkpointing: ClassVar[bool] = True
    # The largest CPU inference batch `pvtkit.optimize` runs compiled (None: any); larger ones run eagerly.
    compiled_batch_limit: ClassVar[int | None] = None
    # What tells checkpoint layouts apart and reads configs off bare tensors for `from_pretrained`: the family
    # registry (`pvtkit.models.family`: `to_transformers`, `infer_config`), which the families' base classes name,
    # so that this module, below the families, imports none of them.
    layout_registry: ClassVar[Any] = None

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # ---- initialisation ----------------------------------------------------------------------------------------

    def post_init(self) -> None:
        """transformers' hook, kept for subclasses written in its style: initialisation already happens once,
        when the outermost model is built, so there is nothing left to do here."""

    def init_weights(self) -> None:
        """(Re-)initialise every weight with `_init_weights`."""
        for module in self.modules():
            self._init_weights(module)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated normal (std `initializer_range`) for Linear, fan-out normal for Conv2d, unit LayerNorm and
        BatchNorm (fresh running statistics)."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()

    # ---- conveniences users expect from transformers -----------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters: trainable ones only, or without `nn.Embedding` tables (transformers' rule;
        vision models have none), when asked."""
        skip = set()
        if exclude_embeddings:
            skip = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in skip
        )

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and buffers)."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else ())]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def base_model(self) -> nn.Module:
        """The encoder model a task model holds (itself for the encoder)."""
        return getattr(self, self.base_model_prefix, self)

    @property
    def name_or_path(self) -> str:
        return getattr(self.config, "_name_or_path", "")

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def get_input_embeddings(self) -> nn.Module:
        """The module that embeds `pixel_values` (ViT: the patch projection; PVTv2: the first patch embedding)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its input embeddings")

    def get_output_embeddings(self) -> None:
        return None  # a vision model has no output embeddings to tie

    def tie_weights(self) -> None:
        """Nothing to tie in a vision model (kept for code written against transformers)."""

    # What the model reads, by transformers 5's modality names.
    input_modalities: ClassVar[tuple[str, ...]] = ("image",)

    def get_encoder(self) -> nn.Module:
        """The encoder module: the `encoder` attribute, else the base model's, else the model itself (transformers'
        lookup for a single-modality model)."""
        if isinstance(getattr(self, "encoder", None), nn.Module):
            return self.encoder
        base = self.base_model
        if base is not self and isinstance(base, PreTrainedModel):
            return base.get_encoder()
        return self

    def get_parameter_or_buffer(self, target: str) -> torch.Tensor:
        """The parameter or buffer named `target` (`"encoder.layers.0.patch_embedding.proj.weight"`).

        Raises:
            AttributeError: `target` names neither.
        """
        for get in (self.get_parameter, self.get_buffer):
            with contextlib.suppress(AttributeError):
                return get(target)
        raise AttributeError(f"{type(self).__name__} has no parameter or buffer {target!r}")

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require gradients, so that gradient checkpointing works with frozen
        embeddings (what peft's adapters do)."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            (output[0] if isinstance(output, tuple) else output).requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)

    def disable_input_require_grads(self) -> None:
        hook = getattr(self, "_require_grads_hook", None)
        if hook is not None:
            hook.remove()
            self._require_grads_hook = None

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Recompute each block's activations in backward instead of storing them (less memory, ~30% slower).

        Args:
            activation_checkpointing_kwargs: Arguments of `torch.utils.checkpoint.checkpoint` (default
                `{"use_reentrant": False}`, as transformers 5).
            every_n_layers: transformers' option to checkpoint only every n-th layer; pvtkit checkpoints every
                block, so only 1 is accepted.
            offload: Keep the activations saved for the recompute in host memory (`torch.autograd.graph.save_on_cpu`).
        """
        if not self.supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support activation checkpointing")
        if every_n_layers != 1:
            raise ValueError(f"every_n_layers={every_n_layers}: pvtkit checkpoints every block (every_n_layers=1)")
        kwargs = activation_checkpointing_kwargs
        run = functools.partial(checkpoint, **({"use_reentrant": False} if kwargs is None else kwargs))
        if offload:
            device_type = self.device.type if self.device.type != "meta" else "cpu"

            def run(function: Callable[..., Any], *args: Any, _plain: Callable[..., Any] = run) -> Any:
                with torch.autograd.graph.save_on_cpu(pin_memory=device_type != "cpu", device_type=device_type):
                    return _plain(function, *args)

        self._set_checkpointing(True, run)

    def activation_checkpointing_disable(self) -> None:
        """Store activations again (the default)."""
        self._set_checkpointing(False, None)

    def _set_checkpointing(self, enable: bool, run: Callable[..., Any] | None) -> None:
        found = False
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing, module._gradient_checkpointing_func = enable, run
                found = True
        if enable and not found:
            raise ValueError(f"{type(self).__name__} has no blocks to checkpoint")

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """transformers 4's name of `activation_checkpointing_enable` (`kwargs`: `every_n_layers`, `offload`)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        """transformers 4's name of `activation_checkpointing_disable`."""
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        """transformers 4's name of `is_activation_checkpointing`."""
        return self.is_activation_checkpointing

    def _checkpointing_from_config(self) -> None:
        """A config saved with `"gradient_checkpointing": true` (older Hub checkpoints) builds a model with
        checkpointing on; the key is then dropped from the config, as transformers does, so it is not saved again."""
        if self.supports_gradient_checkpointing and getattr(self.config, "gradient_checkpointing", False):
            self.activation_checkpointing_enable()
            delattr(self.config, "gradient_checkpointing")

    # ---- what generic code (export, analysis, training) asks of a model ---------------------------------------

    def named_outputs(self, out: Any) -> dict[str, torch.Tensor]:
        """The tensors of a forward's output that an export returns, by name (`{"logits": ...}`)."""
        return {name: getattr(out, name) for name in self.output_names if getattr(out, name) is not None}

    def attention_layers(
        self, out: Any, pixel_values: torch.Tensor
    ) -> list[tuple[str, torch.Tensor, tuple[int, int], int]]:
        """The attention maps of an output computed with `output_attentions=True`, for the first image: one
        `(title, weights (heads, queries, keys), query grid (h, w), prefix tokens)` per layer worth showing."""
        raise NotImplementedError(f"{type(self).__name__} has no attention maps to show")

    def set_input_size(self, image_size: int | Sequence[int]) -> None:
        """Make `image_size` the model's native input size (its config's `image_size`); families with position
        embeddings resample them once (timm's method of the same name)."""
        self.config.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)

    label_head = "classifier"  # the module `set_labels` resizes: an nn.Linear, or a 1x1 nn.Conv2d (dense heads)

    def set_labels(self, labels: Sequence[str], keep_order: bool = False) -> None:
        """Give a classifier (or a segmentation model) these class names: kept as they are when it has exactly these
        labels (in this order, with `keep_order`: a mask's value i must stay class i), renamed when it has as many,
        otherwise a freshly initialised head of the right size replaces the old one (and a warning says so)."""
        config, labels = self.config, [str(label) for label in labels]
        current = [str(config.id2label[i]) for i in range(config.num_labels)]
        if (current == labels) if keep_order else (sorted(current) == sorted(labels)):
            return
        try:
            head = self.get_submodule(self.label_head)
        except AttributeError:
            raise ValueError(f"{type(self).__name__} has no classification head to give labels to") from None
        if len(current) != len(labels) or not isinstance(head, (nn.Linear, nn.Conv2d)):
            if isinstance(head, nn.Conv2d):
                new: nn.Module = nn.Conv2d(head.in_channels, len(labels), kernel_size=1)
            else:
                new = nn.Linear(head.in_features if isinstance(head, nn.Linear) else self.head_width, len(labels))
            self._init_weights(new)
            parent, _, name = self.label_head.rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, name, new)
            self.num_labels = len(labels)
            logger.warning(
                "replaced the model's %d-class head with a new %d-class head for %s",
                len(current),
                len(labels),
                ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else ""),
            )
        else:
            logger.info("kept the model's %d-class head, with the data's class names as labels", len(labels))
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}

    # ---- saving ------------------------------------------------------------------------------------------------

    def save_pretrained(
        self, save_directory: str | os.PathLike, safe_serialization: bool = True, state_dict: dict | None = None
    ) -> Path:
        """Write `config.json` and `model.safetensors` (or `pytorch_model.bin`) into `save_directory`.

        The directory is replaced atomically: a save killed half-way leaves the previous contents as they were.
        Other files already there (a processor config, a README) are kept.
        """
        # A weights file in the other format left by an earlier save would contradict this one: it goes.
        stale = WEIGHTS_NAME if safe_serialization else SAFE_WEIGHTS_NAME
        with atomic_directory(save_directory, drop=(stale, stale + ".index.json")) as staging:
            self.write_pretrained(staging, safe_serialization, state_dict)
        return Path(save_directory)

    def write_pretrained(
        self, directory: str | os.PathLike, safe_serialization: bool = True, state_dict: dict | None = None
    ) -> None:
        """Write `config.json` and the weights into an existing `directory`, each file atomically (weights last),
        leaving its other files alone: what `save_pretrained` puts in its staging directory, and what training
        writes beside its metrics."""
        state = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        self.config.save_pretrained(directory)
        target = Path(directory) / (SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME)
        if safe_serialization:
            from safetensors.torch import save_file

            atomic_write(target, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(target, lambda tmp: torch.save(state, tmp))

    # ---- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        config: PretrainedConfig | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        torch_dtype: str | torch.dtype | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        ignore_mismatched_sizes: bool = False,
        strict: bool = False,
        output_loading_info: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **config_overrides: Any,
    ) -> Any:
        """Load a model from a transformers-, timm- or original-layout checkpoint, with transformers' semantics.

        Weights the checkpoint has and the model does not use are reported (a warning listing them) and skipped;
        weights the model has and the checkpoint lacks (a new head, the pooler of an encoder-only checkpoint) are
        freshly initialised and reported; weights of another shape are an error unless `ignore_mismatched_sizes`.
        A checkpoint that shares no encoder weight with the model (another family, a foreign file) is always an
        error naming the file and what its keys look like.

        Args:
            pretrained_model_name_or_path: A directory (`config.json` + weights), a single weights file
                (`.safetensors`, `.bin`, `.pth`, `.pt`), a Hugging Face Hub repo id, or None with `state_dict`.
            config: Use this config instead of the checkpoint's. Without one and without a transformers
                `config.json`, the architecture is inferred from the tensors.
            state_dict: Tensors already loaded (any supported layout): used instead of reading the weights files;
                with no path, the config is `config` or is inferred from them.
            torch_dtype: Cast the weights to this dtype. The default, `"auto"`, keeps the dtype the checkpoint
                records (its config's `dtype`, else its tensors'), as transformers 5 does. `dtype` is the same
                argument under transformers 5's name.
            device: Move the model there after loading.
            ignore_mismatched_sizes: Re-initialise weights whose shapes differ instead of raising.
            strict: Make any missing, unexpected or mis-shaped weight an error (beside a head asked to be new).
            output_loading_info: Return `(model, {"missing_keys", "unexpected_keys", "mismatched_keys",
                "error_msgs"})` with transformers 5's types: sets of names (of `(name, checkpoint shape, model
                shape)` for `mismatched_keys`) and a list of messages.
            revision, cache_dir, local_files_only, token: How to reach the Hub (see `huggingface_hub`).
            **config_overrides: Config fields to change, e.g. `num_labels=10` for a fresh head of 10 classes.
                Arguments of the model class's constructor (`add_pooling_layer=False` for `ViTModel`) go to it.

        Raises:
            FileNotFoundError: Nothing loadable at the path, or a Hub repo that is neither cached nor reachable.
            LoadingError: Mis-shaped keys, a checkpoint that shares no weight with the model or would leave most of
                its encoder randomly initialised (a layout pvtkit does not know), or (with `strict`) any mismatch;
                every offending key is named.
            ValueError: A file that is not a checkpoint, or a checkpoint of another model family.
        """
        if pretrained_model_name_or_path is None and state_dict is None:
            raise ValueError(f"{cls.__name__}.from_pretrained needs a path, a Hub id or a state_dict")
        source = "the given state_dict" if pretrained_model_name_or_path is None else str(pretrained_model_name_or_path)
        init_params = set(inspect.signature(cls.__init__).parameters) - {"self", "config"}
        model_kwargs = {k: config_overrides.pop(k) for k in list(config_overrides) if k in init_params}
        ckpt = None
        if pretrained_model_name_or_path is not None and (state_dict is None or config is None):
            ckpt = resolve_checkpoint(
                pretrained_model_name_or_path, HubOptions(revision, cache_dir, local_files_only, token)
            )
        raw = state_dict if state_dict is not None else load_state_dict(ckpt.weight_files)  # type: ignore[union-attr]
        state, layout = cls.layout_registry.to_transformers(raw, cls.config_class.model_type, source)
        if config is None:
            data = read_json(ckpt.config_file) if ckpt is not None and ckpt.config_file is not None else {}
            if "model_type" in data or layout.name == "transformers" and data:
                config = cls.config_class.from_dict(data, **config_overrides)
            else:  # no config, or a timm one: read the architecture off the tensors
                fields = cls.layout_registry.infer_config(state, layout)
                if isinstance(data.get("label_names"), list) and len(data["label_names"]) == fields.get("num_labels"):
                    fields["id2label"] = dict(enumerate(data["label_names"]))
                logger.info("%s: %s layout without a transformers config; inferred %s", source, layout.name, fields)
                config = cls.config_class.from_dict(fields, **config_overrides)
        elif config_overrides:
            config = config.copy(**config_overrides)
        # Built on the meta device with no init, then given uninitialised memory: every weight is about to be
        # overwritten, and the few that are not (a new head) are initialised by `_load_checkpoint_state`.
        with _skip_weight_init(), torch.device("meta"):
            model = cls(config, **model_kwargs)
        model.to_empty(device="cpu")
        head_resized = "num_labels" in config_overrides or "id2label" in config_overrides
        info = model._load_checkpoint_state(
            state,
            source=source,
            strict=strict,
            ignore_mismatched_sizes=ignore_mismatched_sizes or head_resized,
            layout=layout.name,
        )
        want = torch_dtype if torch_dtype is not None else dtype
        if want is None or want == "auto":
            stored = next((v.dtype for v in state.values() if v.is_floating_point()), None)  # not a BatchNorm count
            want = getattr(config, "dtype", None) or stored
        want = parse_dtype(want)
        if want is not None or device is not None:
            model.to(device=device, dtype=want)
        model.config._name_or_path = source if pretrained_model_name_or_path is not None else ""
        model.eval()
        return (model, info) if output_loading_info else model

    @classmethod
    def from_transformers(cls: type[M], module: nn.Module, **kwargs: Any) -> M:
        """This class, with the weights of a transformers model instance (its `save_pretrained` output read back,
        so transformers' in-memory renamings do not matter), e.g. to put pvtkit's `PvtV2Backbone` inside a
        transformers detector: `detr.model.backbone.model = PvtV2Backbone.from_transformers(detr.model.backbone.model)`.
        `kwargs` go to `from_pretrained`."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pvtkit-from-transformers-") as directory:
            module.save_pretrained(directory)
            model = cls.from_pretrained(directory, **kwargs)
        model.config._name_or_path = getattr(getattr(module, "config", None), "_name_or_path", "")
        return model.train(module.training)

    def _load_checkpoint_state(
        self,
        state: dict[str, torch.Tensor],
        source: str,
        strict: bool = False,
        ignore_mismatched_sizes: bool = False,
        layout: str = "transformers",
    ) -> dict[str, Any]:
        """Copy `state` (converted from the checkpoint layout named `layout`) into the model, adding or stripping
        `base_model_prefix` as the two layouts need; returns the loading info (`missing_keys`, `unexpected_keys`,
        `mismatched_keys`, `error_msgs`) with transformers 5's types."""
        own = self.state_dict()
        given = set(state)
        state, dropped_heads = align_prefix(state, own, self.base_model_prefix + ".")
        heads = tuple(self.head_prefixes)
        if not any(k in own and not (heads and k.startswith(heads)) for k in state):
            raise LoadingError(
                f"{source} shares no weight with {type(self).__name__}: its keys look like "
                f"{', '.join(list(state)[:5])}; the model's look like {', '.join(list(own)[:3])}"
            )

        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
        # Most of the encoder absent is a layout pvtkit does not know (a newer transformers' in-memory names), not a
        # checkpoint to fine-tune: refused, as transformers' warning is easy to miss and the model useless. (Weights
        # of another shape are reported above, or re-initialised as asked.)
        encoder = [k for k in own if not (heads and k.startswith(heads))]
        unloaded = [k for k in encoder if k not in state]
        if 2 * len(unloaded) > len(encoder):
            raise LoadingError(
                f"{source} ({layout} layout) would leave {len(unloaded)} of the {len(encoder)} encoder weights of "
                f"{type(self).__name__} randomly initialised, e.g. {', '.join(unloaded[:3])}; its keys look like "
                f"{', '.join(list(state)[:5])}. Save it with transformers' save_pretrained and load that directory"
            )
        # A task head the checkpoint has no trace of (an encoder or backbone checkpoint) starts fresh, with a warning.
        absent_heads = tuple(p for p in heads if not any(k.startswith(p) for k in state))
        fresh_heads = [k for k in missing if absent_heads and k.startswith(absent_heads)]
        missing = [k for k in missing if k not in fresh_heads]
        shapes = [f"  {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in mismatched]
        if mismatched and not ignore_mismatched_sizes:
            raise LoadingError(
                f"{source}: {len(mismatched)} weight(s) have another shape than the model expects "
                "(pass ignore_mismatched_sizes=True to re-initialise them, or num_labels=N for a new head):\n"
                + "\n".join(shapes)
            )
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing from the checkpoint ({len(missing)}): " + ", ".join(missing[:20]))
            if unexpected:
                parts.append(f"not in the model ({len(unexpected)}): " + ", ".join(unexpected[:20]))
            raise LoadingError(
                f"{source} does not fit {type(self).__name__}: "
                + "; ".join(parts)
                + " (strict=True; the default loads it, initialising and reporting the rest)"
            )
        mismatched_keys = {(k, state.pop(k).shape, own[k].shape) for k in mismatched}  # torch.Size, as transformers
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        # What did not come from the checkpoint (a fresh head, re-initialised or missing weights): callers such as
        # `pvtkit classify` refuse to predict with an untrained head.
        fresh = [*mismatched, *fresh_heads, *missing]
        self.newly_initialized_weights = fresh
        for module_name in dict.fromkeys(k.rpartition(".")[0] for k in fresh):
            self._init_weights(self.get_submodule(module_name))
        name = type(self).__name__
        if mismatched:
            logger.warning(
                "%s: re-initialised %d weight(s) of another shape: %s", source, len(mismatched), ", ".join(mismatched)
            )
        if fresh_heads or missing:
            logger.warning(
                "some weights of %s were not in %s and are newly initialised: %s; train the model before use",
                name,
                source,
                ", ".join([*fresh_heads, *missing]),
            )
        if unexpected:
            logger.warning("some weights of %s were not used by %s (skipped): %s", source, name, ", ".join(unexpected))
        if dropped_heads:
            logger.info("%s: ignored task-head weights %s", source, ", ".join(dropped_heads))
        return {
            "missing_keys": {*fresh_heads, *missing},
            # the checkpoint's own names (a task checkpoint's heads included), as transformers reports them
            "unexpected_keys": {self._checkpoint_name(k, given) for k in unexpected} | set(dropped_heads),
            "mismatched_keys": mismatched_keys,
            "error_msgs": [],
        }

    def _checkpoint_name(self, key: str, given: set[str]) -> str:
        """A key as the checkpoint names it (`align_prefix` may have added or removed `base_model_prefix`)."""
        prefix = self.base_model_prefix + "."
        return next((k for k in (key, prefix + key, key.removeprefix(prefix)) if k in given), key)


class BackboneType(enum.Enum):
    """Where a backbone comes from, as transformers' `BackboneType` says it (same names and values)."""

    TIMM = "timm"
    TRANSFORMERS = "transformers"


class BackboneMixin:
    """The multi-scale backbone API of transformers and timm, for a model whose config has `stage_names`,
    `out_features` and `out_indices`: which stages it returns (`feature_maps`), their channels and strides.

    The family's backbone class provides `stage_channels` and `stage_strides` (every stage's, cumulative).
    """

    config: Any
    output_names = ("feature_maps",)
    # transformers' markers: a backbone built by the library itself (not wrapping timm) that returns attention maps
    backbone_type: ClassVar[BackboneType] = BackboneType.TRANSFORMERS
    has_attentions: ClassVar[bool] = True

    @property
    def stage_names(self) -> list[str]:
        return list(self.config.stage_names)

    @property
    def out_features(self) -> list[str]:
        return list(self.config.out_features)

    @out_features.setter
    def out_features(self, names: list[str] | None) -> None:
        """Return these stages from now on (None: the last); `out_indices` follows."""
        self.config.out_features = names

    @property
    def out_indices(self) -> list[int]:
        return list(self.config.out_indices)

    @out_indices.setter
    def out_indices(self, indices: list[int] | None) -> None:
        """Return these stages, by index, from now on (None: the last); `out_features` follows."""
        self.config.out_indices = indices

    @property
    def feature_info(self) -> FeatureInfo:
        """timm's view of the returned maps: `.channels()`, `.reduction()`, `.module_name()`, one dict per map."""
        return FeatureInfo(
            [
                {"num_chs": self.stage_channels[i], "reduction": self.stage_strides[i], "module": self.stage_modules[i]}
                for i in self.config.out_indices
            ]
        )

    @property
    def num_features(self) -> list[int]:
        return list(self.stage_channels)

    @property
    def out_feature_channels(self) -> dict[str, int]:
        """Every stage's channels by stage name (returned or not), as transformers' backbones give them."""
        return dict(zip(self.config.stage_names, self.stage_channels))

    def forward_with_filtered_kwargs(self, *args: Any, **kwargs: Any) -> Any:
        """`self(*args, **kwargs)` without `output_attentions` when the backbone has no attention maps
        (`has_attentions`): what transformers' detectors call to run any backbone."""
        if not self.has_attentions:
            kwargs.pop("output_attentions", None)
        return self(*args, **kwargs)  # type: ignore[operator]

    @property
    def channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.config.out_indices]

    @property
    def strides(self) -> list[int]:
        return [self.stage_strides[i] for i in self.config.out_indices]

    @property
    def stage_channels(self) -> list[int]:
        raise NotImplementedError

    @property
    def stage_strides(self) -> list[int]:
        raise NotImplementedError

    @property
    def stage_modules(self) -> list[str]:
        """Every stage's module name (`encoder.layers.0`, ...)."""
        raise NotImplementedError

    def named_outputs(self, out: Any) -> dict[str, torch.Tensor]:
        """The feature maps by stage name (`{"stage1": ..., "stage4": ...}`)."""
        return dict(zip(self.out_features, out.feature_maps))


class FeatureInfo(list):
    """timm's `feature_info` of a features-only model: one `{"num_chs", "reduction", "module"}` dict per map."""

    def channels(self, idx: int | None = None) -> Any:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> Any:
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None) -> Any:
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None) -> Any:
        return [info[key] for info in self] if idx is None else self[idx][key]
