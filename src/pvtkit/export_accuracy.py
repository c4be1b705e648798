"""Exports that keep their accuracy: the exported file's mIoU measured against the PyTorch model's on real images,
and static int8 quantization (ONNX Runtime's QDQ) calibrated on given images.

A file can match PyTorch at a 1e-4 tolerance on random inputs and still segment worse once quantized, or a
post-processing step can go wrong only at real output sizes (mmdeploy#337, #2042; TensorRT#2709). So `export_onnx`
with `verify_data` runs the file and the PyTorch model on the same images of a segmentation folder, with the same
upsampling to each image's own size and argmax `pvtkit segment` does, counts both mIoUs with the evaluator's
`SegmentationMetric`, and refuses the file (nothing is written) when it loses more than the allowed points.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .export import _Job

logger = logging.getLogger("pvtkit")

DEFAULT_MAX_MIOU_DROP = 0.5  # mIoU points (of 100) an exported file may lose against PyTorch
DEFAULT_CALIBRATION_COUNT = 32
# What static int8 quantizes: the convolutions and matrix products (weights per channel, activations per tensor).
# LayerNormalization, Softmax, GELU, Resize, ReduceMean... stay in fp32: quantizing a normalisation's or a softmax's
# input costs accuracy and saves no time (ONNX Runtime has no int8 kernels for them).
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
# the ops whose staying in fp32 the report names, when the graph has them
SENSITIVE_OP_TYPES = ("LayerNormalization", "ReduceMean", "Softmax", "Gelu", "Erf", "Resize", "ArgMax")


def calibration_files(folder: str | os.PathLike, count: int = DEFAULT_CALIBRATION_COUNT) -> list[Path]:
    """Up to `count` images of `folder` for calibration, spread evenly over its sorted files: the training images of
    a segmentation folder when it is one (never its masks), else every image file found under it.

    Raises:
        ValueError: `folder` is missing, holds no image, or `count` is below 1.
    """
    from .data.folders import find_images, find_segmentation_layout

    if count < 1:
        raise ValueError(f"calibration count must be at least 1, got {count}")
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"calibration folder {str(folder)!r} does not exist or is not a folder")
    try:  # a segmentation folder: its training images (the validation ones are left to --verify-data)
        layout = find_segmentation_layout(root)
        images = sorted(image for image, _ in layout.train) or sorted(image for image, _ in layout.val or [])
    except ValueError:
        images = []
    if not images:
        images = sorted(find_images([root]))
    if not images:
        raise ValueError(f"calibration folder {str(folder)!r} holds no images")
    picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    return [images[i] for i in dict.fromkeys(picks.tolist())]


def deployed_size(job: _Job) -> tuple[int, int]:
    """The size the file will be fed at: the processor's for a file of any size (the export's example size may
    differ), else the file's fixed size."""
    from .processing import fixed_size

    if "height" in job.dynamic.values():
        return fixed_size(job.processor) or job.size
    return job.size


def _model_inputs(job: _Job, images: Sequence[Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per image, (the file's first input for it, batch of 1; the (3, H, W) fp32 pixel values PyTorch takes),
    resized to the deployed size as `export._quantize` does it."""
    from .processing import load_image

    h, w = deployed_size(job)
    for image in images:
        array = image if isinstance(image, np.ndarray) else None
        if array is None:
            array = np.asarray(load_image(image).convert("RGB").resize((w, h), resample=int(job.processor.resample)))
        encoded = job.processor([array], return_tensors="np", do_resize=False, input_data_format="channels_last")
        pixels = encoded["pixel_values"][0].astype(np.float32)
        yield (array[None] if job.report.with_preprocessing else pixels[None]), pixels


def _last_weighted_node(model: Any) -> list[str]:
    """The name of the graph's last Conv / MatMul / Gemm node (nodes are stored in topological order): the
    classifier, whose outputs are the logits themselves, so every int8 step on them shows in the argmax."""
    names = [node.name for node in model.graph.node if node.op_type in STATIC_OP_TYPES]
    return names[-1:]


def quantize_static(job: _Job, images: Sequence[Any]) -> None:
    """Replace the staged fp32 ONNX file of `job` by its static int8 (QDQ) version calibrated on `images`.

    Weights are int8 per output channel, activations uint8 per tensor from min/max calibration; only
    `STATIC_OP_TYPES` are quantized, and the classifier (the last of them) stays fp32.
    """
    from .export import _quiet_exporter, require, restamp_metadata

    onnx = require("onnx", "static int8 quantization")
    quantization = require("onnxruntime.quantization", "static int8 quantization")
    if not images:
        raise ValueError("static int8 quantization needs calibration images (--calibration DIR)")
    staged, report = job.staged, job.report
    fp32 = staged.parent / f"fp32-{staged.name}"
    os.replace(staged, fp32)
    graph = onnx.load(str(fp32))
    excluded = _last_weighted_node(graph)
    present = {node.op_type for node in graph.graph.node}
    feeds = []
    for feed, _ in _model_inputs(job, images):
        inputs = {report.input_name: feed}
        if report.postprocess:
            inputs["target_size"] = np.asarray(deployed_size(job), dtype=np.int64)
        feeds.append(inputs)

    class Reader(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.pending, None)

    with _quiet_exporter():
        quantization.quantize_static(
            str(fp32),
            str(staged),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            nodes_to_exclude=excluded,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            # int8 goes into the convolutions and products only; what they return stays fp32, so LayerNorm and
            # softmax (and the residual adds) never see rounded values
            extra_options={"OpTypesToExcludeOutputQuantization": list(STATIC_OP_TYPES)},
        )
    fp32.unlink()
    restamp_metadata(staged, report.metadata)
    kept = [op for op in SENSITIVE_OP_TYPES if op in present] + [f"classifier ({n})" for n in excluded]
    report.quantization = {
        "mode": "static",
        "calibration_images": len(feeds),
        "method": "QDQ, MinMax; weights int8 per channel, activations uint8 per tensor",
        "quantized_op_types": list(STATIC_OP_TYPES),
        "kept_fp32": kept,
    }
    for name in (fp32.name + "-augmented.onnx", "augmented_model.onnx"):  # what some quantizer versions leave
        if (staged.parent / name).exists():
            (staged.parent / name).unlink()


class OnnxSegmenter:
    """Runs an exported segmentation file the way `pvtkit segment` runs the model: one image's input in, its label
    map at `(height, width)` out, whichever outputs the graph has (logits, probabilities, labels).

    Args:
        session: An ONNX Runtime session of the file.
        input_name: The file's image input (`pixel_values` or `images`).
        output: Its output: `logits`, `probabilities` or `labels`.
        batch: The fixed batch size of the file (None: dynamic); a single image is repeated to fill it.
    """

    def __init__(self, session: Any, input_name: str, output: str, batch: int | None) -> None:
        self.session, self.input_name, self.output, self.batch = session, input_name, output, batch
        kind = next(i.type for i in session.get_inputs() if i.name == input_name)
        self.dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(kind, np.float32)

    def __call__(self, feed: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        from .processing import semantic_segmentation

        if self.batch and self.batch > 1:
            feed = np.repeat(feed, self.batch, axis=0)
        inputs = {self.input_name: feed.astype(self.dtype)}
        if self.output != "logits":
            inputs["target_size"] = np.asarray(size, dtype=np.int64)
        (got,) = self.session.run([self.output], inputs)
        got = torch.from_numpy(np.asarray(got)[:1])
        if self.output == "labels":
            return got[0]
        if self.output == "probabilities":
            return got[0].argmax(0)
        return semantic_segmentation(got.float(), [size])[0]


def measure_miou(
    job: _Job,
    run: Callable[[np.ndarray, tuple[int, int]], torch.Tensor],
    data: str | os.PathLike,
    progress: bool = False,
) -> dict[str, Any]:
    """The mIoU of the exported file (`run`) and of the PyTorch model on the evaluation split of `data` (as
    `pvtkit eval` picks it), each image resized to the export size and each label map upsampled to the image's own
    size before the argmax, as `pvtkit segment` does; plus the share of pixels whose labels agree.

    Raises:
        ValueError: `data` is not a segmentation folder, holds no pairs, or classes the model does not predict.
    """
    from .data.folders import DatasetError
    from .data.segmentation import EvalPairDataset, load_eval_segmentation
    from .data.transforms import ProcessorTransform
    from .evaluation import SegmentationMetric, progress_bar
    from .processing import semantic_segmentation

    model, report = job.reference, job.report
    num_labels = int(model.config.num_labels)
    reduce = bool(getattr(job.processor, "do_reduce_labels", False))
    try:
        found, samples = load_eval_segmentation(data, reduce_labels=reduce)
    except (DatasetError, OSError) as e:
        raise ValueError(f"verify data {str(data)!r}: {e}") from e
    if not samples:
        raise ValueError(f"verify data {str(data)!r} holds no image/mask pairs")
    if len(found.classes) > num_labels:
        raise ValueError(
            f"verify data {str(data)!r}: the masks hold {len(found.classes)} classes, the model predicts {num_labels}"
        )
    h, w = deployed_size(job)
    processor = copy.deepcopy(job.processor)
    processor.size = {"height": h, "width": w}
    if report.with_preprocessing:
        resample = int(processor.resample)
        transform = lambda image: np.array(image.convert("RGB").resize((w, h), resample=resample))  # noqa: E731
    else:
        to_pixels = ProcessorTransform(processor)
        transform = lambda image: to_pixels(image, 0, 0).astype(np.float32)  # noqa: E731
    dataset = EvalPairDataset(samples, transform, reduce)
    exported, pytorch = SegmentationMetric(num_labels), SegmentationMetric(num_labels)
    same = total = images = 0
    bar = progress_bar(len(dataset), "measuring mIoU", progress)
    for index in range(len(dataset)):
        feed, mask, _, _, reason = dataset[index]
        bar.update(1)
        if reason:
            logger.warning("verify data: skipping %s: %s", samples[index][0], reason)
            continue
        size = tuple(mask.shape)
        with torch.inference_mode():
            pixels = job.module.pixels(feed[None]) if report.with_preprocessing else feed[None]
            logits = model(pixel_values=pixels.float()).logits.float()
        expected = semantic_segmentation(logits, [size])[0]
        got = run(feed[None].numpy(), size)  # type: ignore[arg-type]
        pytorch.update(expected, mask)
        exported.update(got, mask)
        same += int((got == expected).sum())
        total += expected.numel()
        images += 1
    bar.close()
    if not images:
        raise ValueError(f"verify data {str(data)!r}: no image/mask pair could be read")
    ours, theirs = pytorch.compute()["mean_iou"], exported.compute()["mean_iou"]
    return {
        "data": str(data),
        "images": images,
        "pytorch_miou": ours,
        "exported_miou": theirs,
        "drop_points": 100 * (ours - theirs),
        "label_agreement": same / total,
    }
