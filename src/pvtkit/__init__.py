"""pvtkit: PVTv2 and ViT in PyTorch, with Hugging Face formats native."""

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
    "analysis",
    "cpu_kernels",
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
