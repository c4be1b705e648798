"""pvtkit: PVTv2, SegFormer, GLPN and ViT in PyTorch, with Hugging Face formats native."""

import os as _os
import sys as _sys

# The `pvtkit` command owns its process, so it turns on PyTorch's transparent-huge-page backing for large CPU
# tensors: one page fault per 2 MB instead of one per 4 kB, which on some machines (VMs especially) is a large
# share of a forward or training step. PyTorch reads the variable at its first allocation, so this only works
# before torch is imported; library users set THP_MEM_ALLOC_ENABLE=1 themselves (README, "Speed").
def _command_args() -> list[str] | None:
    """The arguments after `pvtkit` when this process is the `pvtkit` command (or `python -m pvtkit`), else None."""
    if _sys.argv and _os.path.basename(_sys.argv[0]) == "pvtkit":
        return _sys.argv[1:]
    argv = list(getattr(_sys, "orig_argv", []))
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "pvtkit":
        return argv[argv.index("-m") + 2 :]
    return None


_args = _command_args()
if "torch" not in _sys.modules and _args is not None:
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # `pvtkit serve` decodes images in threads beside the model's OpenMP threads: spinning idle OpenMP threads
    # would take the cores the decoding needs (measured: 16 clients 19 img/s spinning, 32 passive; README,
    # "Serving"). OpenMP reads this once, when torch loads it.
    if next((a for a in _args if not a.startswith("-")), None) == "serve":
        _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
