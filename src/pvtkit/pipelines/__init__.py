"""Inference pipelines: images in, answers out, as transformers' `pipeline(...)` gives them; one module per task.

```python
classifier = pvtkit.pipeline("image-classification", model="OpenGVLab/pvt_v2_b0")
classifier("cat.jpg")                  # [{"label": "tabby, tabby cat", "score": 0.71}, ...]
classifier(["a.jpg", "b.png"], top_k=3)  # one list per image
```

Underneath, `Pipeline.run(items)` decodes and preprocesses images in DataLoader worker processes while the model
runs, batches them, and yields one `PipelineResult` per input in input order, with the error instead of an output
for an input that could not be read; the CLI streams those. `__call__` is the strict form: it raises on a bad image.
Which pipeline a task runs, and which model it loads by default, is the task's spec (`pvtkit.tasks`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .. import tasks
from ..modeling import PreTrainedModel
from ..tasks.features import load_encoder
from .base import Pipeline, PipelineResult, describe_error
from .classification import ImageClassificationPipeline
from .depth import DepthEstimationPipeline, depth_to_uint8
from .detection import ObjectDetectionPipeline, detection_records
from .features import ImageFeatureExtractionPipeline
from .segmentation import ImageSegmentationPipeline, class_areas, slide_windows, sliding_window_logits

logger = logging.getLogger("pvtkit")


def pipeline(
    task: str = "image-classification",
    model: str | os.PathLike | PreTrainedModel | None = None,
    *,
    image_processor: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    revision: str | None = None,
    local_files_only: bool = False,
    compile: bool | dict[str, Any] = False,
    **task_options: Any,
) -> Pipeline:
    """Build an inference pipeline, as `transformers.pipeline` does.

    Args:
        task: "image-classification" (top-k labels), "image-feature-extraction" (backbone features),
            "image-segmentation" (a mask per class), "depth-estimation" (a depth map) or "object-detection" (scored,
            labelled boxes); the short names (`classification`, `features`, `segmentation`, `depth`, `detection`)
            and pvtkit's task names work too.
        model: A Hub repo id, directory or weights file (any layout pvtkit reads), or a loaded model.
            Default per task: `OpenGVLab/pvt_v2_b0`, `nvidia/segformer-b0-finetuned-ade-512-512`,
            `vinvino02/glpn-nyu`, `SenseTime/deformable-detr`.
        image_processor: A processor instance, or where to load one from; default: the model's own
            `preprocessor_config.json`, else the model family's defaults (with a warning).
        device, dtype: Where and in which precision to run ("auto"/None picks the GPU when there is one).
        batch_size, num_workers: Images per forward pass; background decoding processes.
        revision, local_files_only: Hub options.
        compile: Run the model through `pvtkit.optimize` (torch.compile where it pays; eager with a warning where
            no compiler works); a dict passes options to it. On the CPU a batch size above the model's
            `compiled_batch_limit` (1 for PVTv2, SegFormer, GLPN) compiles nothing, with a warning.
        **task_options: `top_k` for classification; `pooled`, `stages` (e.g. [1, 4]) for feature extraction;
            `mode` ("whole" / "slide"), `crop`, `stride`, `aug` (test-time augmentation, e.g.
            `{"scales": [0.75, 1, 1.25], "flip": True}` or "ms-flip": `pvtkit.tta`) for segmentation; `flip` (average with the mirrored image's
            depth, mirrored back) for depth; `threshold` (0.5), `top_k` (100) for detection.
    """
    from ..auto import default_image_processor, image_processor_for

    spec = tasks.get(task)
    if not spec.pipeline_class_name:
        raise ValueError(f"pvtkit has no pipeline for {spec.title}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    hub = {"revision": revision, "local_files_only": local_files_only}
    source = model if model is not None else spec.default_model
    load_options = {k: task_options.pop(k) for k in spec.load_options if k in task_options}
    loaded = source if isinstance(source, PreTrainedModel) else spec.load_model(source, hub, **load_options)
    if image_processor is None or isinstance(image_processor, (str, os.PathLike)):
        where = image_processor if image_processor is not None else source
        if isinstance(where, PreTrainedModel):
            image_processor = default_image_processor(where)
            logger.info("no image processor given; using %s's defaults", type(image_processor).__name__)
        else:
            image_processor = image_processor_for(where, loaded, **hub)
    return spec.pipeline_class()(
        loaded,
        image_processor,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        num_workers=num_workers,
        compile=compile,
        **task_options,
    )


__all__ = [
    "DepthEstimationPipeline",
    "ImageClassificationPipeline",
    "ImageFeatureExtractionPipeline",
    "ImageSegmentationPipeline",
    "ObjectDetectionPipeline",
    "Pipeline",
    "PipelineResult",
    "class_areas",
    "depth_to_uint8",
    "detection_records",
    "describe_error",
    "load_encoder",
    "pipeline",
    "slide_windows",
    "sliding_window_logits",
]
