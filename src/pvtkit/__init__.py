"""pvtkit: PVTv2, SegFormer, GLPN and ViT in PyTorch, with Hugging Face formats native."""

import importlib as _importlib
import importlib.util as _importlib_util
from typing import Any as _Any

# Public name -> (module, attribute), imported on first use (PEP 562): `import pvtkit` loads no torch, so
# `pvtkit.keras`, the config classes and the hub code stay usable in a process without PyTorch.
_PUBLIC: dict[str, tuple[str, str]] = {
    "analysis": (".analysis", ""),
    "cpu_kernels": (".cpu_kernels", ""),
    "optimize": (".compiling", "optimize"),
    "PretrainedConfig": (".config", "PretrainedConfig"),
    "LoadingError": (".convert", "LoadingError"),
    "PreTrainedModel": (".modeling", "PreTrainedModel"),
    "PVT_V2_VARIANTS": (".models.pvt_v2.configuration", "VARIANTS"),
    "PvtV2Backbone": (".models.pvt_v2.modeling", "PvtV2Backbone"),
    "PvtV2Config": (".models.pvt_v2.configuration", "PvtV2Config"),
    "PvtV2ForImageClassification": (".models.pvt_v2.modeling", "PvtV2ForImageClassification"),
    "PvtV2ForSemanticSegmentation": (".models.pvt_v2.modeling", "PvtV2ForSemanticSegmentation"),
    "PvtV2Model": (".models.pvt_v2.modeling", "PvtV2Model"),
    "SegformerConfig": (".models.segformer.configuration", "SegformerConfig"),
    "SegformerForImageClassification": (".models.segformer.modeling", "SegformerForImageClassification"),
    "SegformerForSemanticSegmentation": (".models.segformer.modeling", "SegformerForSemanticSegmentation"),
    "SegformerModel": (".models.segformer.modeling", "SegformerModel"),
    "GLPNConfig": (".models.glpn.configuration", "GLPNConfig"),
    "GLPNForDepthEstimation": (".models.glpn.modeling", "GLPNForDepthEstimation"),
    "GLPNModel": (".models.glpn.modeling", "GLPNModel"),
    "VIT_VARIANTS": (".models.vit.configuration", "VARIANTS"),
    "ViTConfig": (".models.vit.configuration", "ViTConfig"),
    "ViTForImageClassification": (".models.vit.modeling", "ViTForImageClassification"),
    "ViTForMaskedImageModeling": (".models.vit.modeling", "ViTForMaskedImageModeling"),
    "ViTModel": (".models.vit.modeling", "ViTModel"),
    "ViTPreTrainedModel": (".models.vit.modeling", "ViTPreTrainedModel"),
    "AutoBackbone": (".auto", "AutoBackbone"),
    "AutoConfig": (".auto", "AutoConfig"),
    "AutoImageProcessor": (".auto", "AutoImageProcessor"),
    "AutoModel": (".auto", "AutoModel"),
    "AutoModelForDepthEstimation": (".auto", "AutoModelForDepthEstimation"),
    "AutoModelForImageClassification": (".auto", "AutoModelForImageClassification"),
    "AutoModelForMaskedImageModeling": (".auto", "AutoModelForMaskedImageModeling"),
    "AutoModelForSemanticSegmentation": (".auto", "AutoModelForSemanticSegmentation"),
    "convert_checkpoint": (".auto", "convert_checkpoint"),
    "DepthEstimationPipeline": (".pipelines", "DepthEstimationPipeline"),
    "ImageClassificationPipeline": (".pipelines", "ImageClassificationPipeline"),
    "ImageFeatureExtractionPipeline": (".pipelines", "ImageFeatureExtractionPipeline"),
    "ImageSegmentationPipeline": (".pipelines", "ImageSegmentationPipeline"),
    "Pipeline": (".pipelines", "Pipeline"),
    "pipeline": (".pipelines", "pipeline"),
    "EvalResult": (".evaluation", "EvalResult"),
    "SegmentationEvalResult": (".evaluation", "SegmentationEvalResult"),
    "SegmentationMetric": (".evaluation", "SegmentationMetric"),
    "evaluate": (".evaluation", "evaluate"),
    "evaluate_segmentation": (".evaluation", "evaluate_segmentation"),
    "Trainer": (".training", "Trainer"),
    "TrainingArguments": (".training", "TrainingArguments"),
    "TrainResult": (".training", "TrainResult"),
    "train": (".training", "train"),
    "IMAGE_PROCESSOR_TYPES": (".models.family", "IMAGE_PROCESSOR_TYPES"),
    "BatchFeature": (".processing", "BatchFeature"),
    "GLPNImageProcessor": (".models.glpn.processing", "GLPNImageProcessor"),
    "GLPNImageProcessorFast": (".models.glpn.processing", "GLPNImageProcessorFast"),
    "ImageLoadError": (".processing", "ImageLoadError"),
    "PvtImageProcessor": (".models.pvt_v2.processing", "PvtImageProcessor"),
    "PvtImageProcessorFast": (".models.pvt_v2.processing", "PvtImageProcessorFast"),
    "SegformerImageProcessor": (".models.segformer.processing", "SegformerImageProcessor"),
    "SegformerImageProcessorFast": (".models.segformer.processing", "SegformerImageProcessorFast"),
    "ViTFeatureExtractor": (".models.vit.processing", "ViTFeatureExtractor"),
    "ViTImageProcessor": (".models.vit.processing", "ViTImageProcessor"),
    "ViTImageProcessorFast": (".models.vit.processing", "ViTImageProcessorFast"),
    "convert_to_rgb": (".processing", "convert_to_rgb"),
    "load_image": (".processing", "load_image"),
    "BackboneOutput": (".outputs", "BackboneOutput"),
    "BaseModelOutput": (".outputs", "BaseModelOutput"),
    "BaseModelOutputWithPooling": (".outputs", "BaseModelOutputWithPooling"),
    "DepthEstimatorOutput": (".outputs", "DepthEstimatorOutput"),
    "ImageClassifierOutput": (".outputs", "ImageClassifierOutput"),
    "MaskedImageModelingOutput": (".outputs", "MaskedImageModelingOutput"),
    "ModelOutput": (".outputs", "ModelOutput"),
    "SemanticSegmenterOutput": (".outputs", "SemanticSegmenterOutput"),
}



def __getattr__(name: str) -> _Any:
    """Import a public name's module when the name is first used (and any submodule, as `import` would have)."""
    if name in _PUBLIC:
        module, attr = _PUBLIC[name]
        loaded = _importlib.import_module(module, __name__)
        value = getattr(loaded, attr) if attr else loaded
    elif _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__version__ = "0.1.0"

__all__ = [
    "analysis",
    "cpu_kernels",
    "optimize",
    "IMAGE_PROCESSOR_TYPES",
    "BatchFeature",
    "GLPNImageProcessor",
    "GLPNImageProcessorFast",
    "ImageLoadError",
    "PvtImageProcessor",
    "PvtImageProcessorFast",
    "SegformerImageProcessor",
    "SegformerImageProcessorFast",
    "ViTFeatureExtractor",
    "ViTImageProcessor",
    "ViTImageProcessorFast",
    "convert_to_rgb",
    "load_image",
    "PVT_V2_VARIANTS",
    "BackboneOutput",
    "BaseModelOutput",
    "BaseModelOutputWithPooling",
    "DepthEstimatorOutput",
    "ImageClassifierOutput",
    "LoadingError",
    "MaskedImageModelingOutput",
    "ModelOutput",
    "SemanticSegmenterOutput",
    "PreTrainedModel",
    "PretrainedConfig",
    "PvtV2Backbone",
    "PvtV2Config",
    "PvtV2ForImageClassification",
    "PvtV2ForSemanticSegmentation",
    "PvtV2Model",
    "SegformerConfig",
    "SegformerForImageClassification",
    "SegformerForSemanticSegmentation",
    "SegformerModel",
    "GLPNConfig",
    "GLPNForDepthEstimation",
    "GLPNModel",
    "VIT_VARIANTS",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTForMaskedImageModeling",
    "ViTModel",
    "ViTPreTrainedModel",
    "AutoBackbone",
    "AutoConfig",
    "AutoImageProcessor",
    "AutoModel",
    "AutoModelForDepthEstimation",
    "AutoModelForImageClassification",
    "AutoModelForMaskedImageModeling",
    "AutoModelForSemanticSegmentation",
    "convert_checkpoint",
    "DepthEstimationPipeline",
    "ImageClassificationPipeline",
    "ImageFeatureExtractionPipeline",
    "ImageSegmentationPipeline",
    "Pipeline",
    "pipeline",
    "EvalResult",
    "evaluate",
    "SegmentationEvalResult",
    "SegmentationMetric",
    "evaluate_segmentation",
    "Trainer",
    "TrainingArguments",
    "TrainResult",
    "train",
]
