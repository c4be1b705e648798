"""Inference pipelines: images in, answers out, as transformers' `pipeline(...)` gives them.

```python
classifier = pvtkit.pipeline("image-classification", model="OpenGVLab/pvt_v2_b0")
classifier("cat.jpg")                  # [{"label": "tabby, tabby cat", "score": 0.71}, ...]
classifier(["a.jpg", "b.png"], top_k=3)  # one list per image
```

Underneath, `Pipeline.run(items)` decodes and preprocesses images in DataLoader worker processes while the model
runs, batches them, and yields one `PipelineResult` per input in input order, with the error instead of an output
for an input that could not be read; the CLI streams those. `__call__` is the strict form: it raises on a bad image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .devices import resolve_device
from .modeling import PreTrainedModel
from .processing import depth_maps, image_size, load_image, semantic_segmentation

logger = logging.getLogger("pvtkit")

DEFAULT_MODELS = {
    "image-classification": "OpenGVLab/pvt_v2_b0", "image-feature-extraction": "OpenGVLab/pvt_v2_b0",
    "image-segmentation": "nvidia/segformer-b0-finetuned-ade-512-512", "depth-estimation": "vinvino02/glpn-nyu",
}  # fmt: skip
TASKS = tuple(DEFAULT_MODELS)


@dataclass
class PipelineResult:
    """The answer for one input: `output` when it worked, `error` (one line) when it did not."""

    index: int
    input: Any
    output: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(error: BaseException) -> str:
    """One line for a failed input: the exception's own message (pvtkit's name the input), its type otherwise."""
    text = " ".join(str(error).split())
    return text if text else type(error).__name__


class _Preprocessed(torch.utils.data.Dataset):
    """Item i -> (i, pixel array or None, error or None, the image's (height, width)); runs in DataLoader workers."""

    def __init__(self, items: Sequence[Any], processor: Any, options: dict[str, Any]) -> None:
        self.items = items
        self.processor = processor
        self.options = options

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None, tuple[int, int] | None]:
        item = self.items[index]
        if isinstance(item, Exception):  # an input that already failed (e.g. a missing file): pass it on in order
            return index, None, describe_error(item), None
        try:
            if isinstance(item, (str, os.PathLike)):  # decoded here once: its size is the outputs' size
                item = load_image(item, exif_transpose=getattr(self.processor, "exif_transpose", True),
                                  convert_rgb=False)  # fmt: skip
            pixels = self.processor(item, return_tensors="np", **self.options)["pixel_values"]
            if pixels.shape[0] != 1:
                raise ValueError(f"input {index} is a batch of {pixels.shape[0]} images; pass them one by one")
            return index, pixels[0], None, image_size(item)
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            return index, None, describe_error(e), None


def _as_list(batch: list) -> list:
    return batch


class Pipeline:
    """Base: a model, its image processor, a device and a dtype; batching and worker-side decoding.

    Args:
        model: A loaded pvtkit model.
        image_processor: The processor that prepares its inputs (PIL or tensor back end).
        device: Where the model runs; None or "auto" picks the GPU when there is one.
        dtype: Compute dtype (the model is cast to it); None keeps the model's.
        batch_size: Images per forward pass.
        num_workers: Processes that decode and preprocess images in the background (0: in this process).
    """

    task = ""
    trained_head = ""  # "classification", ...: refuse a model whose head of that kind the checkpoint did not have

    def __init__(
        self,
        model: PreTrainedModel,
        image_processor: Any,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        fresh = [k for k in getattr(model, "newly_initialized_weights", []) if k.startswith(model.head_prefixes)]
        if self.trained_head and fresh:
            raise ValueError(
                f"the checkpoint has no trained {self.trained_head} head (newly initialised: {', '.join(fresh[:4])}"
                f"{', ...' if len(fresh) > 4 else ''}); fine-tune it first (pvtkit train) or use a model trained "
                "for this task"
            )  # fmt: skip
        self.device = resolve_device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        if compile:
            from .compiling import optimize_for

            optimize_for(self.model, batch_size, self.device, **(compile if isinstance(compile, dict) else {}))
        self.dtype = dtype or next(model.parameters()).dtype
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.processor_options: dict[str, Any] = {}  # per-call options of the processor (slide mode: no resize)

    # --------------------------------------------------------------------------------------------- running

    def batches(
        self, items: Sequence[Any], batch_size: int | None = None, num_workers: int | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], list[tuple[int, int]]]]:
        """Yield (indices of good items, their pixel batch, [(index, error), ...], the good images' sizes), in input
        order; images the processor leaves at different sizes (GLPN's, slide mode's) come in groups of one shape."""
        workers = self.num_workers if num_workers is None else num_workers
        loader = torch.utils.data.DataLoader(
            _Preprocessed(items, self.image_processor, self.processor_options),
            batch_size=batch_size or self.batch_size,
            num_workers=min(workers, len(items)),
            collate_fn=_as_list,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        for batch in loader:
            errors = [(i, error) for i, _, error, _ in batch if error is not None]
            groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, tuple[int, int]]]] = {}
            for i, pixels, error, size in batch:
                if error is None:
                    groups.setdefault(pixels.shape, []).append((i, pixels, size))
            if not groups:
                yield [], None, errors, []
            for n, group in enumerate(groups.values()):
                pixels = torch.from_numpy(np.stack([p for _, p, _ in group]))
                pixels = pixels.to(self.device, self.dtype, non_blocking=True)
                yield [i for i, _, _ in group], pixels, errors if n == 0 else [], [s for _, _, s in group]

    def run(
        self, items: Sequence[Any], batch_size: int | None = None, num_workers: int | None = None,
        formatted: bool = True, **options: Any,
    ) -> Iterator[PipelineResult]:  # fmt: skip
        """One `PipelineResult` per item, in input order, as soon as its batch is done; bad items carry an error.

        `formatted=False` leaves outputs as `forward` gives them (a class map, a depth tensor) before `postprocess`
        turns them into transformers' records; the CLI writes files from those."""
        done: dict[int, PipelineResult] = {}
        following = 0
        for indices, pixels, errors, sizes in self.batches(items, batch_size, num_workers):
            outputs = self.forward(pixels, sizes, **options) if pixels is not None else []
            if formatted:
                outputs = [self.postprocess(o) for o in outputs]
            done.update({i: PipelineResult(i, items[i], output=o) for i, o in zip(indices, outputs)})
            done.update({i: PipelineResult(i, items[i], error=e) for i, e in errors})
            while following in done:
                yield done.pop(following)
                following += 1

    def __call__(self, images: Any, batch_size: int | None = None, **options: Any) -> Any:
        """Process one image (path, PIL image, array, tensor) or a list of them; raises on an unreadable image."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        outputs = []
        for result in self.run(items, batch_size=batch_size, num_workers=0, **options):
            if not result.ok:
                raise ValueError(result.error)
            outputs.append(result.output)
        return outputs[0] if single else outputs

    def forward(self, pixels: torch.Tensor, sizes: list[tuple[int, int]], **options: Any) -> list[Any]:
        """Per image of the batch, the task's raw answer; `sizes` are the images' (height, width) before resizing."""
        raise NotImplementedError

    def postprocess(self, output: Any) -> Any:
        """One image's raw answer -> the record transformers' pipeline returns for it."""
        return output

    def label_names(self) -> list[str]:
        """The model's class names, `LABEL_i` where `id2label` has none."""
        labels = self.model.config.id2label or {}
        return [str(labels.get(i, labels.get(str(i), f"LABEL_{i}"))) for i in range(self.model.config.num_labels)]


class ImageClassificationPipeline(Pipeline):
    """Top-k labels with scores per image: `[{"label": str, "score": float}, ...]`, best first.

    Scores are softmax probabilities, or per-class sigmoids for a `multi_label_classification` model (as
    transformers' pipeline does).
    """

    task = "image-classification"
    trained_head = "classification"

    def __init__(self, model: PreTrainedModel, image_processor: Any, top_k: int = 5, **kwargs: Any) -> None:
        if not hasattr(model, "classifier"):
            raise ValueError(f"{type(model).__name__} has no classification head; load it with "
                             "AutoModelForImageClassification")  # fmt: skip
        super().__init__(model, image_processor, **kwargs)
        self.top_k = top_k
        self.labels = self.label_names()

    def forward(self, pixels: torch.Tensor, sizes: Any = None, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits
        return self.records(logits, top_k)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits `(N, classes)` -> float32 scores: softmax, or per-class sigmoids for a multi-label model."""
        if self.model.config.problem_type == "multi_label_classification":
            return logits.float().sigmoid()
        return logits.float().softmax(-1)

    def records(self, logits: torch.Tensor, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        """Logits `(N, classes)` -> per image its top-k `{"label", "score"}` records, best first (the server's
        answers are these too)."""
        k = min(top_k or self.top_k, len(self.labels))
        if k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        values, indices = self.scores(logits).topk(k, dim=-1)
        return [
            [{"label": self.labels[j], "score": float(v)} for v, j in zip(vs.tolist(), js.tolist())]
            for vs, js in zip(values, indices)
        ]


class ImageFeatureExtractionPipeline(Pipeline):
    """Per image, a dict of named feature tensors (on the CPU, float32).

    For a PVTv2 backbone: one NCHW map per selected stage (`stage1`..`stage4`, strides 4..32), or with `pooled`
    their spatial means (`stage{i}`: `(C,)`). For a ViT encoder: `last_hidden_state` (tokens x hidden), or with
    `pooled` the final [CLS] token.
    """

    task = "image-feature-extraction"

    def __init__(self, model: PreTrainedModel, image_processor: Any, pooled: bool = False, **kwargs: Any) -> None:
        super().__init__(model, image_processor, **kwargs)
        self.pooled = pooled

    def forward(self, pixels: torch.Tensor, sizes: Any = None) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            out = self.model(pixel_values=pixels)
        if getattr(out, "feature_maps", None) is not None:
            names = self.model.out_features
            maps = [m.float().cpu() for m in out.feature_maps]
            feats = {name: (m.mean(dim=(2, 3)) if self.pooled else m) for name, m in zip(names, maps)}
        else:
            hidden = out.last_hidden_state.float().cpu()
            if hidden.dim() == 4:  # a PVTv2 encoder's NCHW map
                feats = {"last_hidden_state": hidden.mean(dim=(2, 3)) if self.pooled else hidden}
            else:
                feats = {"pooled" if self.pooled else "last_hidden_state": hidden[:, 0] if self.pooled else hidden}
        return [{name: t[i] for name, t in feats.items()} for i in range(pixels.shape[0])]


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmsegmentation's `slide` grid: `(top, bottom, left, right)` windows of `crop` (clipped to the image) every
    `stride`, the last row and column shifted back to end at the image's edge; together they cover every pixel."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(bottom - ch, 0), bottom, max(right - cw, 0), right))
    return windows


def sliding_window_logits(
    model: Any, pixels: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int = 8
) -> torch.Tensor:
    """Logits `(1, num_labels, H, W)` of one image `(1, C, H, W)` by sliding windows (`slide_windows`), each
    window's logits upsampled to the window and averaged where windows overlap; `batch_size` windows per forward."""
    height, width = pixels.shape[-2:]
    windows = slide_windows(height, width, crop, stride)
    total = pixels.new_zeros((1, model.config.num_labels, height, width), dtype=torch.float32)
    count = pixels.new_zeros((1, 1, height, width), dtype=torch.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crops = torch.cat([pixels[..., t:b, l:r] for t, b, l, r in chunk])  # windows share one size
        logits = model(pixel_values=crops).logits.float()
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        for (t, b, l, r), window in zip(chunk, logits):
            total[0, :, t:b, l:r] += window
            count[0, :, t:b, l:r] += 1
    return total / count


class ImageSegmentationPipeline(Pipeline):
    """Semantic segmentation, in transformers' format: per image one `{"score": None, "label": str, "mask": PIL
    image}` per class present (mask: mode L, 255 where the class is), at the input's size.

    Args:
        model: A segmentation model (`SegformerForSemanticSegmentation`, `PvtV2ForSemanticSegmentation`).
        image_processor: Its processor.
        mode: "whole" (the default): the image resized as the processor says, the logits resized back to the
            image's size (transformers' way). "slide": mmsegmentation's sliding window over the image at its own
            resolution; `crop`-sized windows every `stride`, the logits of overlapping windows averaged.
        crop: Window (height, width) in slide mode; default: the processor's size (what the model was trained at).
        stride: Window step (height, width) in slide mode; default: two thirds of `crop`.
        **kwargs: `Pipeline`'s options.
    """

    task = "image-segmentation"
    trained_head = "segmentation"

    def __init__(
        self, model: PreTrainedModel, image_processor: Any, mode: str = "whole", crop: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        if not hasattr(model, "decode_head"):
            raise ValueError(f"{type(model).__name__} is not a segmentation model; load one with "
                             "AutoModelForSemanticSegmentation")  # fmt: skip
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        super().__init__(model, image_processor, **kwargs)
        self.mode, self.labels = mode, self.label_names()
        if mode == "slide":
            size = getattr(image_processor, "size", None) or {}
            crop = crop or (size.get("height"), size.get("width"))
            if not all(isinstance(v, int) and v > 0 for v in crop):
                raise ValueError(f"slide mode needs a crop size (height, width) of positive ints, got {crop}")
            stride = stride or (max(crop[0] * 2 // 3, 1), max(crop[1] * 2 // 3, 1))
            if not all(isinstance(v, int) and 0 < v for v in stride) or stride[0] > crop[0] or stride[1] > crop[1]:
                raise ValueError(f"stride {stride} must be positive and at most the crop {crop}, or pixels are skipped")
            self.crop, self.stride = tuple(crop), tuple(stride)
            self.processor_options = {"do_resize": False}  # the windows see the image at its own resolution

    def forward(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image, its `(H, W)` int64 class map at its own size."""
        with torch.inference_mode():
            if self.mode == "whole":
                return [m.cpu() for m in semantic_segmentation(self.model(pixel_values=pixels).logits.float(), sizes)]
            return [self.slide_logits(image[None])[0].argmax(0).cpu() for image in pixels]

    def slide_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits `(1, num_labels, H, W)` of one image by sliding windows (`sliding_window_logits`)."""
        return sliding_window_logits(self.model, pixels, self.crop, self.stride, self.batch_size)

    def postprocess(self, classes: torch.Tensor) -> list[dict[str, Any]]:
        array = classes.numpy()
        masks = ((k, PIL.Image.fromarray(((array == k) * 255).astype(np.uint8))) for k in np.unique(array))
        return [{"score": None, "label": self.labels[int(k)], "mask": mask} for k, mask in masks]


def class_areas(classes: Any, labels: list[str]) -> list[dict[str, Any]]:
    """Per class present: id, label, pixel count and fraction of the image, largest first."""
    ids, counts = np.unique(classes, return_counts=True)
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")
    return [{"id": int(ids[i]), "label": labels[int(ids[i])], "pixels": int(counts[i]),
             "fraction": round(int(counts[i]) / total, 6)} for i in order]  # fmt: skip


class DepthEstimationPipeline(Pipeline):
    """Monocular depth, in transformers' format: per image `{"predicted_depth": (H, W) tensor, "depth": PIL image}`
    at the input's size (bicubic), the image being the depth scaled from its minimum (0) to its maximum (255)."""

    task = "depth-estimation"
    trained_head = "depth"

    def __init__(self, model: PreTrainedModel, image_processor: Any, **kwargs: Any) -> None:
        if "predicted_depth" not in getattr(model, "output_names", ()):
            raise ValueError(f"{type(model).__name__} is not a depth model; load one with AutoModelForDepthEstimation")
        super().__init__(model, image_processor, **kwargs)

    def forward(self, pixels: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per image, its `(H, W)` float32 depth at its own size."""
        with torch.inference_mode():
            predicted = self.model(pixel_values=pixels).predicted_depth.float()
        return [d["predicted_depth"].cpu() for d in depth_maps(predicted, sizes)]

    def postprocess(self, depth: torch.Tensor) -> dict[str, Any]:
        return {"predicted_depth": depth, "depth": PIL.Image.fromarray(depth_to_uint8(depth.numpy()))}


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """Depth scaled from its minimum (0) to its maximum (255), truncated, as transformers' pipeline draws it; a flat
    map is all 0."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return (scaled * 255).astype(np.uint8)


_PIPELINES: dict[str, type[Pipeline]] = {
    "image-classification": ImageClassificationPipeline, "image-feature-extraction": ImageFeatureExtractionPipeline,
    "image-segmentation": ImageSegmentationPipeline, "depth-estimation": DepthEstimationPipeline,
}  # fmt: skip


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
            "image-segmentation" (a mask per class) or "depth-estimation" (a depth map).
        model: A Hub repo id, directory or weights file (any layout pvtkit reads), or a loaded model.
            Default per task: `OpenGVLab/pvt_v2_b0`, `nvidia/segformer-b0-finetuned-ade-512-512`,
            `vinvino02/glpn-nyu`.
        image_processor: A processor instance, or where to load one from; default: the model's own
            `preprocessor_config.json`, else the model family's defaults (with a warning).
        device, dtype: Where and in which precision to run ("auto"/None picks the GPU when there is one).
        batch_size, num_workers: Images per forward pass; background decoding processes.
        revision, local_files_only: Hub options.
        compile: Run the model through `pvtkit.optimize` (torch.compile where it pays; eager with a warning where
            no compiler works); a dict passes options to it. On the CPU a batch size above the model's
            `compiled_batch_limit` (1 for PVTv2, SegFormer, GLPN) compiles nothing, with a warning.
        **task_options: `top_k` for classification; `pooled`, `stages` (e.g. [1, 4]) for feature extraction;
            `mode` ("whole" / "slide"), `crop`, `stride` for segmentation.
    """
    from .auto import (
        AutoModelForDepthEstimation, AutoModelForImageClassification, AutoModelForSemanticSegmentation,
        default_image_processor, image_processor_for,
    )  # fmt: skip

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; pvtkit's pipelines are {', '.join(TASKS)}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    hub = {"revision": revision, "local_files_only": local_files_only}
    source = model if model is not None else DEFAULT_MODELS[task]
    stages = task_options.pop("stages", None)
    auto = {"image-classification": AutoModelForImageClassification, "image-segmentation":
            AutoModelForSemanticSegmentation, "depth-estimation": AutoModelForDepthEstimation}.get(task)  # fmt: skip
    if isinstance(source, PreTrainedModel):
        loaded = source
    elif auto is not None:
        loaded = auto.from_pretrained(source, **hub)
    else:
        loaded = _feature_model(source, stages, hub)
    if image_processor is None or isinstance(image_processor, (str, os.PathLike)):
        where = image_processor if image_processor is not None else source
        if isinstance(where, PreTrainedModel):
            image_processor = default_image_processor(where)
            logger.info("no image processor given; using %s's defaults", type(image_processor).__name__)
        else:
            image_processor = image_processor_for(where, loaded, **hub)
    return _PIPELINES[task](loaded, image_processor, device=device, dtype=dtype, batch_size=batch_size,
                            num_workers=num_workers, compile=compile, **task_options)  # fmt: skip


def _feature_model(source: Any, stages: Iterable[int] | None, hub: dict[str, Any]) -> PreTrainedModel:
    """A checkpoint of a family with a backbone as that backbone over `stages` (default: all), else its encoder."""
    from .auto import AutoBackbone, _model_type_of
    from .models import family as registry

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


def load_encoder(source: Any, hub: dict[str, Any], model_type: str | None = None,
                 extra: dict[str, Any] | None = None) -> PreTrainedModel:  # fmt: skip
    """The bare encoder of any checkpoint (`PvtV2Model`, `ViTModel` without the pooler feature extraction does not
    need, unless the checkpoint has one)."""
    from .auto import AutoModel, _model_type_of
    from .modeling import LoadingError
    from .models import family as registry

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
