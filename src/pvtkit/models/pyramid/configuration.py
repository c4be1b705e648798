"""The pyramid encoder's configuration fields and the checks and config inference the pyramid families share
(PVTv2, SegFormer, GLPN): the part of `models/pyramid/` that needs no PyTorch, so that `pvtkit.keras` reads
PVTv2 configs and checkpoints in a TensorFlow or JAX process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import PretrainedConfig, check_activation, check_lengths
from ...convert import StateDict


class PyramidConfig(PretrainedConfig):
    """The encoder fields every pyramid family's config has, with transformers' names; the defaults are MiT-B0's
    (PVTv2-B0 but for MLP ratios and stochastic depth). PvtV2Config, SegformerConfig and GLPNConfig add theirs.

    Args:
        num_channels: Input channels.
        num_encoder_blocks: Number of stages; every per-stage list below has this many entries.
        depths: Transformer blocks per stage.
        sr_ratios: Spatial-reduction ratio of the keys/values per stage.
        hidden_sizes: Channels per stage.
        patch_sizes: Kernel of each stage's overlapping patch embedding.
        strides: Stride of each stage's patch embedding.
        num_attention_heads: Heads per stage; must divide the stage's hidden size.
        mlp_ratios: MLP hidden width / hidden size, per stage.
        hidden_act: MLP activation (transformers' names: "gelu", "relu", ...).
        hidden_dropout_prob: Dropout after the attention projection and in the MLP.
        attention_probs_dropout_prob: Dropout on the attention weights.
        initializer_range: Std of the init of Linear layers.
        drop_path_rate: Stochastic depth rate, rising linearly from 0 over all blocks.
        layer_norm_eps: Epsilon of PVTv2's LayerNorms; SegFormer and GLPN keep it for round trips only (their
            LayerNorms use PyTorch's 1e-5, as transformers' do).
        **kwargs: The common fields of `PretrainedConfig` (num_labels, id2label, ...) and the family's own.
    """

    def __init__(
        self,
        num_channels: int = 3,
        num_encoder_blocks: int = 4,
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        hidden_sizes: Sequence[int] = (32, 64, 160, 256),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        num_attention_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[int] = (4, 4, 4, 4),
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        drop_path_rate: float = 0.1,
        layer_norm_eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_channels, self.num_encoder_blocks = int(num_channels), int(num_encoder_blocks)
        self.depths, self.sr_ratios, self.hidden_sizes = list(depths), list(sr_ratios), list(hidden_sizes)
        self.patch_sizes, self.strides = list(patch_sizes), list(strides)
        self.num_attention_heads, self.mlp_ratios = list(num_attention_heads), list(mlp_ratios)
        self.hidden_act, self.initializer_range = hidden_act, float(initializer_range)
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_probs_dropout_prob = float(attention_probs_dropout_prob)
        self.drop_path_rate, self.layer_norm_eps = float(drop_path_rate), float(layer_norm_eps)
        validate(self)


def validate(config: Any) -> None:
    """The checks every pyramid config makes: per-stage lists of one length, positive entries, heads dividing widths."""
    owner, n = type(config).__name__, config.num_encoder_blocks
    check_lengths(
        owner,
        n,
        depths=config.depths,
        sr_ratios=config.sr_ratios,
        hidden_sizes=config.hidden_sizes,
        patch_sizes=config.patch_sizes,
        strides=config.strides,
        num_attention_heads=config.num_attention_heads,
        mlp_ratios=config.mlp_ratios,
    )
    for i, (size, heads) in enumerate(zip(config.hidden_sizes, config.num_attention_heads)):
        if heads <= 0 or size % heads:
            raise ValueError(f"{owner}: stage {i + 1} hidden size {size} is not divisible by {heads} heads")
    for name in ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "mlp_ratios"):
        if any(v <= 0 for v in getattr(config, name)):
            raise ValueError(f"{owner}: every entry of {name} must be positive, got {getattr(config, name)}")
    if config.num_channels <= 0:
        raise ValueError(f"{owner}: num_channels must be positive, got {config.num_channels}")
    if not 0.0 <= config.drop_path_rate < 1.0:
        raise ValueError(f"{owner}: drop_path_rate must be in [0, 1), got {config.drop_path_rate}")
    check_activation(config.hidden_act)


def infer_stages(state: StateDict, patch: str, block: str, reduction: str) -> dict[str, Any]:
    """Per-stage config fields read off bare weights whose stage `i`'s patch-embedding conv is `patch.format(i)`,
    its block `j` `block.format(i, j)` and a block's reduction conv `block + reduction`. Head counts cannot be read
    off the tensors: every published model has one head in stage 1 and keeps that head width in every stage."""
    n = 0
    while patch.format(n) in state:
        n += 1
    if n == 0:
        raise ValueError(f"cannot infer the architecture: no {patch.format(0)}")
    fields: dict[str, Any] = {
        "num_encoder_blocks": n,
        "depths": [],
        "hidden_sizes": [],
        "patch_sizes": [],
        "sr_ratios": [],
        "mlp_ratios": [],
        "num_attention_heads": [],
    }
    for i in range(n):
        proj = state[patch.format(i)]  # (C, C_in, k, k)
        dim = proj.shape[0]
        fields.setdefault("num_channels", proj.shape[1])
        depth = 0
        while block.format(i, depth) + "layer_norm_1.weight" in state:
            depth += 1
        first = block.format(i, 0)
        sr = state.get(first + reduction)
        head_dim = fields["hidden_sizes"][0] if i else dim
        for key, value in (
            ("depths", depth),
            ("hidden_sizes", dim),
            ("patch_sizes", proj.shape[-1]),
            ("sr_ratios", 1 if sr is None else sr.shape[-1]),
            ("mlp_ratios", state[first + "mlp.dense1.weight"].shape[0] // dim if depth else 4),
            ("num_attention_heads", dim // head_dim if dim % head_dim == 0 else 1),
        ):
            fields[key].append(value)
    fields["strides"] = [4] + [2] * (n - 1)
    return fields


def check_pixel_values(shape: Sequence[Any], config: Any) -> None:
    """The pyramid models' ValueError for `pixel_values` of another rank or channel count (PyTorch's and Keras')."""
    if len(shape) != 4 or shape[1] != config.num_channels:
        raise ValueError(
            f"pixel_values must have shape (batch, {config.num_channels}, height, width), got {tuple(shape)}"
        )
