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
import torch

from .distributed import auto_device
from .modeling import PreTrainedModel

logger = logging.getLogger("pvtkit")

DEFAULT_MODEL = "OpenGVLab/pvt_v2_b0"
TASKS = ("image-classification", "image-feature-extraction")


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
    """Item i -> (i, pixel array or None, error or None); runs in DataLoader workers."""

    def __init__(self, items: Sequence[Any], processor: Any) -> None:
        self.items = items
        self.processor = processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        item = self.items[index]
        if isinstance(item, Exception):  # an input that already failed (e.g. a missing file): pass it on in order
            return index, None, describe_error(item)
        try:
            pixels = self.processor(item, return_tensors="np")["pixel_values"]
            if pixels.shape[0] != 1:
                raise ValueError(f"input {index} is a batch of {pixels.shape[0]} images; pass them one by one")
            return index, pixels[0], None
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            return index, None, describe_error(e)


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

    def __init__(
        self,
        model: PreTrainedModel,
        image_processor: Any,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        self.device = auto_device() if device in (None, "auto") else torch.device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.dtype = dtype or next(model.parameters()).dtype
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.num_workers = num_workers

    # --------------------------------------------------------------------------------------------- running

    def batches(
        self, items: Sequence[Any], batch_size: int | None = None, num_workers: int | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
        """Yield (indices of the good items, their pixel batch, [(index, error), ...]) per batch, in order."""
        workers = self.num_workers if num_workers is None else num_workers
        loader = torch.utils.data.DataLoader(
            _Preprocessed(items, self.image_processor),
            batch_size=batch_size or self.batch_size,
            num_workers=min(workers, len(items)),
            collate_fn=_as_list,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        for batch in loader:
            good = [(i, pixels) for i, pixels, error in batch if error is None]
            errors = [(i, error) for i, _, error in batch if error is not None]
            pixels = None
            if good:
                pixels = torch.from_numpy(np.stack([p for _, p in good]))
                pixels = pixels.to(self.device, self.dtype, non_blocking=True)
            yield [i for i, _ in good], pixels, errors

    def run(
        self, items: Sequence[Any], batch_size: int | None = None, num_workers: int | None = None, **options: Any
    ) -> Iterator[PipelineResult]:
        """One `PipelineResult` per item, in input order, as soon as its batch is done; bad items carry an error."""
        for indices, pixels, errors in self.batches(items, batch_size, num_workers):
            outputs = self.forward(pixels, **options) if pixels is not None else []
            done = {i: PipelineResult(i, items[i], output=o) for i, o in zip(indices, outputs)}
            done.update({i: PipelineResult(i, items[i], error=e) for i, e in errors})
            yield from (done[i] for i in sorted(done))

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

    def forward(self, pixels: torch.Tensor, **options: Any) -> list[Any]:
        raise NotImplementedError


class ImageClassificationPipeline(Pipeline):
    """Top-k labels with scores per image: `[{"label": str, "score": float}, ...]`, best first.

    Scores are softmax probabilities, or per-class sigmoids for a `multi_label_classification` model (as
    transformers' pipeline does).
    """

    task = "image-classification"

    def __init__(self, model: PreTrainedModel, image_processor: Any, top_k: int = 5, **kwargs: Any) -> None:
        if not hasattr(model, "classifier"):
            raise ValueError(f"{type(model).__name__} has no classification head; load it with "
                             "AutoModelForImageClassification")  # fmt: skip
        fresh = [k for k in getattr(model, "newly_initialized_weights", []) if k.startswith("classifier")]
        if fresh:
            raise ValueError(
                "the checkpoint has no trained classification head (newly initialised: "
                f"{', '.join(fresh)}); fine-tune it first (pvtkit train) or use an ImageNet classifier"
            )
        super().__init__(model, image_processor, **kwargs)
        self.top_k = top_k
        labels = model.config.id2label or {}
        self.labels = [str(labels.get(i, labels.get(str(i), f"LABEL_{i}"))) for i in range(model.config.num_labels)]

    def forward(self, pixels: torch.Tensor, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        k = min(top_k or self.top_k, len(self.labels))
        if k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits.float()
        if self.model.config.problem_type == "multi_label_classification":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(-1)
        values, indices = scores.topk(k, dim=-1)
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

    def forward(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
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
    **task_options: Any,
) -> Pipeline:
    """Build an inference pipeline, as `transformers.pipeline` does.

    Args:
        task: "image-classification" (top-k labels) or "image-feature-extraction" (backbone features).
        model: A Hub repo id, directory or weights file (any layout pvtkit reads), or a loaded model.
            Default: `OpenGVLab/pvt_v2_b0`.
        image_processor: A processor instance, or where to load one from; default: the model's own
            `preprocessor_config.json`, else the model family's defaults (with a warning).
        device, dtype: Where and in which precision to run ("auto"/None picks the GPU when there is one).
        batch_size, num_workers: Images per forward pass; background decoding processes.
        revision, local_files_only: Hub options.
        **task_options: `top_k` for classification; `pooled`, `stages` (e.g. [1, 4]) for feature extraction.
    """
    from .auto import AutoModelForImageClassification, default_image_processor, image_processor_for

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; pvtkit's pipelines are {', '.join(TASKS)}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    hub = {"revision": revision, "local_files_only": local_files_only}
    source = model if model is not None else DEFAULT_MODEL
    stages = task_options.pop("stages", None)
    if isinstance(source, PreTrainedModel):
        loaded = source
    elif task == "image-classification":
        loaded = AutoModelForImageClassification.from_pretrained(source, **hub)
    else:
        loaded = _feature_model(source, stages, hub)
    if image_processor is None or isinstance(image_processor, (str, os.PathLike)):
        where = image_processor if image_processor is not None else source
        if isinstance(where, PreTrainedModel):
            image_processor = default_image_processor(where)
            logger.info("no image processor given; using %s's defaults", type(image_processor).__name__)
        else:
            image_processor = image_processor_for(where, loaded, **hub)
    cls = ImageClassificationPipeline if task == "image-classification" else ImageFeatureExtractionPipeline
    return cls(loaded, image_processor, device=device, dtype=dtype, batch_size=batch_size, num_workers=num_workers,
               **task_options)  # fmt: skip


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
