"""pvtkit: PVTv2 and ViT in PyTorch, with Hugging Face formats native."""

from .config import PretrainedConfig
from .modeling import LoadingError, PreTrainedModel
from .models.pvt_v2 import (
    VARIANTS as PVT_V2_VARIANTS,
    PvtV2Backbone,
    PvtV2Config,
    PvtV2ForImageClassification,
    PvtV2Model,
)
from .models.vit import (
    VARIANTS as VIT_VARIANTS,
    ViTConfig,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
    ViTPreTrainedModel,
)
from .auto import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    convert_checkpoint,
)
from .pipeline import ImageClassificationPipeline, ImageFeatureExtractionPipeline, Pipeline, pipeline
from .evaluation import EvalResult, evaluate
from .training import Trainer, TrainingArguments, TrainResult, train
from .processing import (
    IMAGE_PROCESSOR_TYPES,
    BatchFeature,
    ImageLoadError,
    PvtImageProcessor,
    PvtImageProcessorFast,
    ViTFeatureExtractor,
    ViTImageProcessor,
    ViTImageProcessorFast,
    convert_to_rgb,
    load_image,
)
from .outputs import (
    BackboneOutput,
    BaseModelOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
    ModelOutput,
)

__version__ = "0.1.0"

__all__ = [
    "IMAGE_PROCESSOR_TYPES",
    "BatchFeature",
    "ImageLoadError",
    "PvtImageProcessor",
    "PvtImageProcessorFast",
    "ViTFeatureExtractor",
    "ViTImageProcessor",
    "ViTImageProcessorFast",
    "convert_to_rgb",
    "load_image",
    "PVT_V2_VARIANTS",
    "BackboneOutput",
    "BaseModelOutput",
    "BaseModelOutputWithPooling",
    "ImageClassifierOutput",
    "LoadingError",
    "MaskedImageModelingOutput",
    "ModelOutput",
    "PreTrainedModel",
    "PretrainedConfig",
    "PvtV2Backbone",
    "PvtV2Config",
    "PvtV2ForImageClassification",
    "PvtV2Model",
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
    "AutoModelForImageClassification",
    "AutoModelForMaskedImageModeling",
    "convert_checkpoint",
    "ImageClassificationPipeline",
    "ImageFeatureExtractionPipeline",
    "Pipeline",
    "pipeline",
    "EvalResult",
    "evaluate",
    "Trainer",
    "TrainingArguments",
    "TrainResult",
    "train",
]
