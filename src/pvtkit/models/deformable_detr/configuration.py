"""Deformable DETR's configuration and published models: no PyTorch. The checkpoint layouts are in
`conversion.py`.

The backbone is a sub-config, as transformers 5 writes it: a pvtkit backbone family's (`{"model_type": "pvt_v2",
...}`, PVTv2 first) or timm's ResNet (`{"model_type": "timm_backbone", "backbone": "resnet50", ...}`). Older
`config.json` files on the Hub name the backbone with top-level keys instead (`use_timm_backbone`, `backbone`,
`backbone_kwargs`, `use_pretrained_backbone`, `dilation`); those are read into the same sub-config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...config import BackboneConfigMixin, PretrainedConfig, check_activation
from ..pvt_v2.configuration import VARIANTS as PVT_V2_VARIANTS
from ..resnet.configuration import DEPTHS as TIMM_RESNETS
from ..resnet.configuration import TimmBackboneConfig

POSITION_EMBEDDINGS = ("sine", "learned")
GROUP_NORM_GROUPS = 32  # the input projections' GroupNorm: `d_model` must be a multiple


def backbone_config_classes() -> dict[str, type]:
    """The backbone configs a detector takes, by `model_type`: timm's ResNet and every registered family whose
    config describes a multi-scale backbone (`out_features` / `out_indices`)."""
    from ..family import config_classes  # the registry imports this module: read it at call time

    found = {t: c for t, c in config_classes().items() if issubclass(c, BackboneConfigMixin)}
    return {TimmBackboneConfig.model_type: TimmBackboneConfig, **found}


def _backbone(config: Any) -> PretrainedConfig:
    """A backbone config of any accepted form (a pvtkit config, another library's config object, a dict) as the
    pvtkit config of its `model_type`."""
    if not isinstance(config, PretrainedConfig) and hasattr(config, "to_dict"):
        config = config.to_dict()  # e.g. transformers' PvtV2Config
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    classes = backbone_config_classes()
    if model_type not in classes:
        raise ValueError(
            f"DeformableDetrConfig: backbone_config of model_type {model_type!r} is not supported; pvtkit builds "
            f"Deformable DETR on {', '.join(t for t in classes if t != 'timm_backbone')} backbones or timm's ResNet "
            f"(model_type 'timm_backbone', backbone {' / '.join(TIMM_RESNETS)})"
        )
    return classes[model_type].from_dict(dict(config)) if isinstance(config, Mapping) else config.copy()


class DeformableDetrConfig(PretrainedConfig):
    """Configuration of a Deformable DETR detector; field names and defaults are transformers' (the defaults are
    SenseTime/deformable-detr's: timm's ResNet-50, 4 feature levels, 6 + 6 layers of width 256, 300 queries).

    Args:
        backbone_config: The backbone: a pvtkit backbone config (`PvtV2Config` with `out_indices`), a dict with
            its `model_type`, or None for timm's ResNet-50 (from the legacy keys below).
        num_channels: Input channels.
        num_queries: Object queries (detections per image) without two-stage.
        max_position_embeddings: Kept for round trips (unused, as in transformers).
        encoder_layers, decoder_layers: Transformer layers.
        encoder_ffn_dim, decoder_ffn_dim: Hidden width of the layers' MLPs.
        encoder_attention_heads, decoder_attention_heads: Attention heads; must divide `d_model`.
        encoder_layerdrop: Kept for round trips (unused, as in transformers).
        activation_function: The MLPs' activation (transformers' names).
        d_model: Width of the transformer; a multiple of 32 (the input projections' GroupNorm).
        dropout: Dropout after attention and MLP blocks.
        attention_dropout: Dropout on the decoder's self-attention weights.
        activation_dropout: Dropout after the MLP activation.
        init_std: Std of the init of Linear layers.
        init_xavier_std: Kept for round trips (unused, as in transformers).
        return_intermediate: Kept for round trips (every decoder layer's output is returned).
        auxiliary_loss: Add the loss of every decoder layer's predictions to the last one's.
        position_embedding_type: `"sine"` or `"learned"` (50 x 50 rows and columns at most).
        dilation: DC5 (the last stage dilated instead of strided); for the timm ResNet.
        num_feature_levels: Feature levels the attention samples: the backbone's maps, then stride-2 convolutions
            of the last one; 1 uses the backbone's (single) map.
        encoder_n_points, decoder_n_points: Sampling points per head and level.
        two_stage: Queries from the encoder's top-scoring proposals (needs `with_box_refine`).
        two_stage_num_proposals: How many proposals become queries with `two_stage`.
        with_box_refine: Each decoder layer refines the previous layer's boxes (a box head per layer).
        class_cost, bbox_cost, giou_cost: The Hungarian matcher's cost weights.
        mask_loss_coefficient, dice_loss_coefficient, eos_coefficient: Kept for round trips (unused).
        bbox_loss_coefficient, giou_loss_coefficient: Loss weights of the L1 and GIoU box losses.
        focal_alpha: Alpha of the focal classification loss.
        disable_custom_kernels, tie_word_embeddings: Kept for round trips.
        use_timm_backbone, backbone, backbone_kwargs, use_pretrained_backbone: The legacy way to name the backbone
            (without `backbone_config`): timm's `backbone` (default resnet50), with `backbone_kwargs` merged into
            its config; read into `backbone_config` and not written back.
        **kwargs: The common fields of `PretrainedConfig` (num_labels, id2label, ...); others are kept.
    """

    model_type = "deformable_detr"
    title = "Deformable DETR"
    variant_prefixes = ("sensetime/",)

    def __init__(
        self,
        backbone_config: Any = None,
        num_channels: int = 3,
        num_queries: int = 300,
        max_position_embeddings: int = 1024,
        encoder_layers: int = 6,
        encoder_ffn_dim: int = 1024,
        encoder_attention_heads: int = 8,
        decoder_layers: int = 6,
        decoder_ffn_dim: int = 1024,
        decoder_attention_heads: int = 8,
        encoder_layerdrop: float = 0.0,
        is_encoder_decoder: bool = True,
        activation_function: str = "relu",
        d_model: int = 256,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        init_std: float = 0.02,
        init_xavier_std: float = 1.0,
        return_intermediate: bool = True,
        auxiliary_loss: bool = False,
        position_embedding_type: str = "sine",
        dilation: bool = False,
        num_feature_levels: int = 4,
        encoder_n_points: int = 4,
        decoder_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        with_box_refine: bool = False,
        class_cost: float = 1,
        bbox_cost: float = 5,
        giou_cost: float = 2,
        mask_loss_coefficient: float = 1,
        dice_loss_coefficient: float = 1,
        bbox_loss_coefficient: float = 5,
        giou_loss_coefficient: float = 2,
        eos_coefficient: float = 0.1,
        focal_alpha: float = 0.25,
        disable_custom_kernels: bool = False,
        tie_word_embeddings: bool = True,
        use_timm_backbone: bool = True,
        backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        use_pretrained_backbone: bool | None = None,
        **kwargs: Any,
    ) -> None:
        for key in ("hidden_size", "num_attention_heads"):  # transformers' aliases of d_model and the heads
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        self.num_channels, self.num_queries = int(num_channels), int(num_queries)
        self.max_position_embeddings = max_position_embeddings
        self.encoder_layers, self.decoder_layers = int(encoder_layers), int(decoder_layers)
        self.encoder_ffn_dim, self.decoder_ffn_dim = int(encoder_ffn_dim), int(decoder_ffn_dim)
        self.encoder_attention_heads, self.decoder_attention_heads = encoder_attention_heads, decoder_attention_heads
        self.encoder_layerdrop, self.is_encoder_decoder = encoder_layerdrop, is_encoder_decoder
        self.activation_function, self.d_model = activation_function, int(d_model)
        self.dropout, self.attention_dropout, self.activation_dropout = dropout, attention_dropout, activation_dropout
        self.init_std, self.init_xavier_std = init_std, init_xavier_std
        self.return_intermediate, self.auxiliary_loss = return_intermediate, bool(auxiliary_loss)
        self.position_embedding_type, self.dilation = position_embedding_type, bool(dilation)
        self.num_feature_levels = int(num_feature_levels)
        self.encoder_n_points, self.decoder_n_points = int(encoder_n_points), int(decoder_n_points)
        self.two_stage, self.two_stage_num_proposals = bool(two_stage), int(two_stage_num_proposals)
        self.with_box_refine = bool(with_box_refine)
        self.class_cost, self.bbox_cost, self.giou_cost = class_cost, bbox_cost, giou_cost
        self.mask_loss_coefficient, self.dice_loss_coefficient = mask_loss_coefficient, dice_loss_coefficient
        self.bbox_loss_coefficient, self.giou_loss_coefficient = bbox_loss_coefficient, giou_loss_coefficient
        self.eos_coefficient, self.focal_alpha = eos_coefficient, focal_alpha
        self.disable_custom_kernels, self.tie_word_embeddings = disable_custom_kernels, tie_word_embeddings
        if backbone_config is None:
            if not use_timm_backbone:
                raise ValueError(
                    "DeformableDetrConfig: use_timm_backbone=False needs a backbone_config (transformers' own ResNet "
                    "is not one pvtkit builds); give a pvtkit backbone config, e.g. a PvtV2Config with out_indices"
                )
            fields = {
                "backbone": backbone or "resnet50",
                "num_channels": 3,
                "features_only": True,
                "use_pretrained_backbone": False,
                "out_indices": [2, 3, 4] if self.num_feature_levels > 1 else [4],
            }
            if self.dilation:
                fields["output_stride"] = 16
            backbone_config = {**fields, **(backbone_kwargs or {})}
            backbone_config["model_type"] = TimmBackboneConfig.model_type
        self.backbone_config = _backbone(backbone_config)
        self._validate()

    @property
    def hidden_size(self) -> int:
        """transformers' alias of `d_model`."""
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        """transformers' alias of `encoder_attention_heads`."""
        return self.encoder_attention_heads

    @property
    def backbone_channels(self) -> list[int]:
        """Channels of the feature maps the backbone returns."""
        b = self.backbone_config
        return list(b.channels) if hasattr(b, "channels") else [b.hidden_sizes[i] for i in b.out_indices]

    def _validate(self) -> None:
        name = type(self).__name__
        if self.two_stage and not self.with_box_refine:
            raise ValueError(f"{name}: two_stage=True needs with_box_refine=True (the proposals are refined)")
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"{name}: position_embedding_type must be one of {POSITION_EMBEDDINGS}, got "
                f"{self.position_embedding_type!r}"
            )
        check_activation(self.activation_function, "activation_function")
        if self.d_model <= 0 or self.d_model % GROUP_NORM_GROUPS:
            raise ValueError(f"{name}: d_model must be a positive multiple of {GROUP_NORM_GROUPS}, got {self.d_model}")
        for field in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, field)
            if not isinstance(heads, int) or heads <= 0 or self.d_model % heads:
                raise ValueError(f"{name}: {field} must divide d_model={self.d_model}, got {heads!r}")
        for field in ("num_queries", "decoder_layers", "num_feature_levels", "encoder_n_points", "decoder_n_points"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}: {field} must be at least 1, got {getattr(self, field)}")
        maps = len(self.backbone_channels)
        if self.num_feature_levels < maps or (self.num_feature_levels == 1 and maps != 1):
            raise ValueError(
                f"{name}: the backbone returns {maps} feature maps, more than num_feature_levels="
                f"{self.num_feature_levels} can take; return fewer (the backbone's out_indices) or raise it"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "backbone_config": self.backbone_config.to_dict()}


# ---------------------------------------------------------------------------------------------------------------
# The published models: SenseTime's five (timm ResNet-50, COCO's 91 class ids), and PVTv2 backbones as the PVTv2
# paper pairs them with Deformable DETR (stages 2-4, a fourth level from a stride-2 conv).


def _pvt_v2(name: str) -> dict[str, Any]:
    return {"model_type": "pvt_v2", **PVT_V2_VARIANTS[name], "out_indices": [1, 2, 3]}


_COCO = {"num_labels": 91}
VARIANTS: dict[str, dict[str, Any]] = {
    "deformable_detr": _COCO,
    "deformable_detr_single_scale": {**_COCO, "num_feature_levels": 1},
    "deformable_detr_single_scale_dc5": {**_COCO, "num_feature_levels": 1, "dilation": True},
    "deformable_detr_with_box_refine": {**_COCO, "with_box_refine": True},
    "deformable_detr_with_box_refine_two_stage": {**_COCO, "with_box_refine": True, "two_stage": True},
    "deformable_detr_pvt_v2_b0": {**_COCO, "backbone_config": _pvt_v2("b0")},
    "deformable_detr_pvt_v2_b2": {**_COCO, "backbone_config": _pvt_v2("b2")},
}
DeformableDetrConfig.variants = VARIANTS
