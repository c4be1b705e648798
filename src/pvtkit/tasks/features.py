"""Feature extraction: an encoder's (or a backbone's) maps and pooled vectors, for retrieval, probing and as the
input of other heads. Not trained here: fine-tune a head instead."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .task import Task


class FeatureExtractionTask(Task):
    name = "image-feature-extraction"
    heads = ("model", "backbone")
    pipeline_task = "image-feature-extraction"
    aliases = ("feature-extraction", "features")
    auto_class_name = "AutoModel"
    pipeline_class_name = "ImageFeatureExtractionPipeline"
    default_model = "OpenGVLab/pvt_v2_b0"
    export_heads = {"features": "model", "backbone": "backbone"}
    title = "feature extraction"
    output_name = "last_hidden_state"
    load_options = ("stages",)

    def load_model(self, source: Any, hub: Mapping[str, Any], **options: Any) -> Any:
        """The checkpoint's backbone over `stages` (default: all) for a family with one, else its encoder."""
        return feature_model(source, options.get("stages"), dict(hub))


def feature_model(source: Any, stages: Iterable[int] | None, hub: dict[str, Any]) -> Any:
    """A checkpoint of a family with a backbone as that backbone over `stages` (default: all), else its encoder."""
    from ..auto import AutoBackbone, _model_type_of
    from ..models import family as registry

    model_type, extra = _model_type_of(source, hub)
    family = registry.get(model_type)
    if "backbone" not in family.classes:
        if stages:
            raise ValueError(f"{source} is a {family.title} model, which has no stages; drop --stages")
        return load_encoder(source, hub, model_type, extra)
    backbone = AutoBackbone.from_pretrained(source, **extra, **hub)
    count = len(backbone.stage_names)
    chosen = list(stages) if stages else list(range(1, count + 1))
    bad = [s for s in chosen if not 1 <= s <= count]
    if bad:
        raise ValueError(f"stages must be among {', '.join(map(str, range(1, count + 1)))}; got {bad}")
    backbone.out_indices = [s - 1 for s in chosen]
    return backbone


def load_encoder(
    source: Any, hub: dict[str, Any], model_type: str | None = None, extra: dict[str, Any] | None = None
) -> Any:
    """The bare encoder of any checkpoint (`PvtV2Model`, `ViTModel` without the pooler feature extraction does not
    need, unless the checkpoint has one)."""
    from ..auto import AutoModel, _model_type_of
    from ..modeling import LoadingError
    from ..models import family as registry

    if model_type is None:
        model_type, extra = _model_type_of(source, hub)
    extra = extra or {}
    options = dict(registry.get(model_type).feature_options)
    if options:
        try:  # strictly: a checkpoint that has the parts these options leave out loads with them, below
            return AutoModel.from_pretrained(source, **options, strict=True, **extra, **hub)
        except LoadingError:
            pass
    return AutoModel.from_pretrained(source, **extra, **hub)


TASK = FeatureExtractionTask()
