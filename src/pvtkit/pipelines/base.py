"""The pipeline machinery every task's pipeline shares: batching, decoding in DataLoader workers, one result per
input in input order with the error instead of an output for an input that could not be read."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import tasks
from ..devices import resolve_device
from ..modeling import PreTrainedModel
from ..processing import image_size, load_image

logger = logging.getLogger("pvtkit")


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
                item = load_image(
                    item, exif_transpose=getattr(self.processor, "exif_transpose", True), convert_rgb=False
                )
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

    task = ""  # the registry name of the task it runs (`pvtkit.tasks`)

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
        spec = tasks.get(self.task)
        if not spec.accepts(model):
            raise ValueError(
                f"{type(model).__name__} is not a {spec.title} model; load one with {spec.auto_class_name}"
            )
        fresh = [k for k in getattr(model, "newly_initialized_weights", []) if k.startswith(model.head_prefixes)]
        if spec.head_title and fresh:
            raise ValueError(
                f"the checkpoint has no trained {spec.head_title} head (newly initialised: {', '.join(fresh[:4])}"
                f"{', ...' if len(fresh) > 4 else ''}); fine-tune it first (pvtkit train) or use a model trained "
                "for this task"
            )
        self.device = resolve_device(device)
        self.spec = spec
        self.model = model.to(device=self.device, dtype=dtype).eval()
        if compile:
            from ..compiling import optimize_for

            optimize_for(self.model, batch_size, self.device, **(compile if isinstance(compile, dict) else {}))
        self.dtype = dtype or next(model.parameters()).dtype
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.processor_options: dict[str, Any] = {}  # per-call options of the processor (slide mode: no resize)

    # --------------------------------------------------------------------------------------------- running

    def batches(
        self, items: Sequence[Any], batch_size: int | None = None, num_workers: int | None = None
    ) -> Iterator[tuple[list[int], Any, list[tuple[int, str]], list[tuple[int, int]]]]:
        """Yield (indices of good items, their pixel batch (`stack`'s), [(index, error), ...], the good images' sizes), in input
        order; images the processor leaves at different sizes (GLPN's, slide mode's) come in groups of one shape."""
        workers = self.num_workers if num_workers is None else num_workers
        loader = torch.utils.data.DataLoader(
            _Preprocessed(items, self.image_processor, self.processor_options),
            batch_size=batch_size or self.batch_size,
            num_workers=min(workers, len(items)),
            collate_fn=_as_list,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            errors = [(i, error) for i, _, error, _ in batch if error is not None]
            groups: dict[Any, list[tuple[int, np.ndarray, tuple[int, int]]]] = {}
            for i, pixels, error, size in batch:
                if error is None:
                    groups.setdefault(None if self.pads_batches else pixels.shape, []).append((i, pixels, size))
            if not groups:
                yield [], None, errors, []
            for n, group in enumerate(groups.values()):
                pixels = self.stack([p for _, p, _ in group])
                yield [i for i, _, _ in group], pixels, errors if n == 0 else [], [s for _, _, s in group]

    # Whether images of different sizes share a batch, padded (`stack` gives the model their mask), or are grouped
    # by size.
    pads_batches = False

    def stack(self, arrays: list[np.ndarray]) -> Any:
        """One batch of the model's input from the preprocessed images (of one shape unless `pads_batches`), on the
        pipeline's device and dtype."""
        return torch.from_numpy(np.stack(arrays)).to(self.device, self.dtype, non_blocking=True)

    def run(
        self,
        items: Sequence[Any],
        batch_size: int | None = None,
        num_workers: int | None = None,
        formatted: bool = True,
        **options: Any,
    ) -> Iterator[PipelineResult]:
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
