"""pvtkit: PVTv2, SegFormer, GLPN and ViT in PyTorch, with Hugging Face formats native."""

import os as _os
import sys as _sys

# The `pvtkit` command owns its process, so it turns on PyTorch's transparent-huge-page backing for large CPU
# tensors: one page fault per 2 MB instead of one per 4 kB, which on some machines (VMs especially) is a large
# share of a forward or training step. PyTorch reads the variable at its first allocation, so this only works
# before torch is imported; library users set THP_MEM_ALLOC_ENABLE=1 themselves (README, "Speed").
if "torch" not in _sys.modules and _os.path.basename(_sys.argv[0] if _sys.argv else "") == "pvtkit":
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from . import analysis, cpu_kernels
from .config import PretrainedConfig
from .modeling import LoadingError, PreTrainedModel
from .models.pvt_v2 import (
    VARIANTS as PVT_V2_VARIANTS,
    PvtV2Backbone,
    PvtV2Config,
    PvtV2ForImageClassification,
    PvtV2ForSemanticSegmentation,
    PvtV2Model,
)
from .models.segformer import (
    SegformerConfig,
    SegformerForImageClassification,
    SegformerForSemanticSegmentation,
    SegformerModel,
)
from .models.glpn import GLPNConfig, GLPNForDepthEstimation, GLPNModel
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
    AutoModelForDepthEstimation,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForSemanticSegmentation,
    convert_checkpoint,
)
from .pipeline import (
    DepthEstimationPipeline,
    ImageClassificationPipeline,
    ImageFeatureExtractionPipeline,
    ImageSegmentationPipeline,
    Pipeline,
    pipeline,
)
from .evaluation import EvalResult, SegmentationEvalResult, SegmentationMetric, evaluate, evaluate_segmentation
from .training import Trainer, TrainingArguments, TrainResult, train
from .processing import (
    IMAGE_PROCESSOR_TYPES,
    BatchFeature,
    GLPNImageProcessor,
    GLPNImageProcessorFast,
    ImageLoadError,
    PvtImageProcessor,
    PvtImageProcessorFast,
    SegformerImageProcessor,
    SegformerImageProcessorFast,
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
    DepthEstimatorOutput,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
    ModelOutput,
    SemanticSegmenterOutput,
)

__version__ = "0.1.0"

__all__ = [
    "analysis",
    "cpu_kernels",
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
