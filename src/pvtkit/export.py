"""Export pvtkit models for deployment: ONNX files that stay dynamic and fast, and `torch.export` programs.

Both trace the model's own forward: each family has one forward, which keeps its size-dependent steps symbolic when
traced (linear SRA's pooling, SRA's zero-padding of small maps, ViT's position-embedding interpolation), and lays
PVTv2's MLP out for ONNX Runtime when exporting to ONNX (`pvtkit.cpu_kernels`). What export adds is its own:
outputs by name, preprocessing in the graph, a check of every file against the eager model at several input
shapes (in ONNX Runtime for ONNX), the metadata a server needs, int8 quantization, and atomic writes: a failed
export or check leaves no file behind.

The dynamo exporter (`torch.export` + `dynamic_shapes`) makes the ONNX files too; the TorchScript one
(`dynamo=False`) cannot export adaptive pooling with a dynamic input, records Python size arithmetic as constants,
and is deprecated.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import cpu_kernels
from ._files import atomic_files
from .auto import default_image_processor
from .config import pair
from .dtypes import parse_dtype, short_name
from .models import family as registry
from .processing import RESAMPLE_NAMES, fixed_size

logger = logging.getLogger("pvtkit")

INSTALL_HINT = 'pip install "pvtkit[export]"'
DEFAULT_OPSET = 20  # the first opset with a native Gelu; ORT does not fuse the erf decomposition of 18-19
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)
FP32_TOLERANCE = 1e-4  # max |exported - torch| / max |torch|, per output
FP16_TOLERANCE = 1e-2  # fp16 file against the fp32 model
QUANTIZE_MODES = ("dynamic", "static")
POSTPROCESS_MODES = ("labels", "probabilities")
# the largest share of pixels whose label may differ from PyTorch's in a check of a post-processed graph (near-ties)
LABEL_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
MAX_BATCH = 1 << 16  # upper bound of a torch.export program's batch dimension
DEFAULT_SIDE = 512  # the example size of a model whose config and processor fix none (GLPN)
ONNX_DTYPES = (torch.float32, torch.float16)
TORCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# scikit-image's bundled photos (no download), used to measure what int8 quantization does to real images.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "colorwheel", "cat")


class ExportError(RuntimeError):
    """An export that could not be done or did not match PyTorch; no output file was left behind."""


class MissingDependencyError(ExportError):
    """onnx / onnxscript / onnxruntime is not installed; the message says what to install."""


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency of the `export` extra, or raise a one-line `MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{purpose} needs the {module.split('.')[0]} package: {INSTALL_HINT}") from e


@dataclass
class Check:
    """One verification run: input shape and, per output, the largest absolute and relative difference; for a
    post-processed graph also the `target_size` it was run at, and for label maps the share of pixels whose label
    equals PyTorch's (`label_agreement`; the differences are then the share that differs)."""

    shape: list[int]
    max_abs_diff: float
    max_rel_diff: float
    outputs: dict[str, float] = field(default_factory=dict)
    target_size: list[int] | None = None
    label_agreement: float | None = None


@dataclass
class ExportReport:
    """What `export_onnx` / `export_torch` wrote and how well it matched PyTorch.

    `max_rel_diff` is max |exported - torch| / max |torch| over every output and check; `verified` is False when
    the check was skipped (no onnxruntime, or `verify=False`), and `skipped` says why. `postprocess` is the
    segmentation post-processing in the graph (None, "labels", "probabilities"); `accuracy` what `verify_data`
    measured (`pytorch_miou`, `exported_miou`, `drop_points`, `max_drop_points`, `label_agreement`, `images`).
    """

    path: str
    format: str
    model_type: str
    architecture: str
    dtype: str
    input_name: str
    input_shape: list[Any]
    output_names: list[str]
    opset: int | None = None
    with_preprocessing: bool = False
    quantize: str | None = None
    size_bytes: int = 0
    export_seconds: float = 0.0
    tolerance: float | None = None
    verified: bool = False
    skipped: str | None = None
    checks: list[Check] = field(default_factory=list)
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    dynamic_ranges: dict[str, list[int | None]] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    postprocess: str | None = None
    accuracy: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines: the file, its signature, the check."""
        shape = "x".join(str(d) for d in self.input_shape)
        lines = [
            f"wrote {self.path} ({self.format}, {self.size_bytes / 1e6:.1f} MB, {self.dtype}"
            + (f", opset {self.opset}" if self.opset else "")
            + (f", {self.quantize} int8" if self.quantize else "")
            + f") in {self.export_seconds:.1f}s",
            f"  {self.input_name} [{shape}]"
            + (" + target_size [2] (int64 height, width)" if self.postprocess else "")
            + f" -> {', '.join(self.output_names)}",
        ]
        for name, (lo, hi) in self.dynamic_ranges.items():
            lines.append(f"  {name}: {lo} .. {'any' if hi is None else hi}")
        if self.verified:
            for c in self.checks:
                at = f"  check {'x'.join(map(str, c.shape))}" + (
                    f" -> {'x'.join(map(str, c.target_size))}" if c.target_size else ""
                )
                if c.label_agreement is not None:
                    lines.append(f"{at}: labels equal PyTorch's on {c.label_agreement:.4%} of the pixels")
                else:
                    lines.append(f"{at}: max abs diff {c.max_abs_diff:.3g}, relative {c.max_rel_diff:.3g}")
            if self.quantize:
                lines.append("  (the checks above ran on the fp32 graph, before int8 quantization)")
            if self.postprocess == "labels":
                worst = min(c.label_agreement for c in self.checks)  # type: ignore[type-var]
                lines.append(f"  lowest label agreement {worst:.4%} (at most {self.tolerance:.2%} may differ)")
            else:
                lines.append(f"  largest relative difference {self.max_rel_diff:.3g} (tolerance {self.tolerance:g})")
        else:
            lines.append(f"  not verified: {self.skipped}")
        if self.quantization and "max_logit_drift" in self.quantization:
            q = self.quantization
            lines.append(
                f"  int8 vs fp32 on {q['images']} {q['source']}: top-1 agreement {q['top1_agreement']:.0%}, "
                f"max logit drift {q['max_logit_drift']:.3g} (relative {q['max_rel_drift']:.3g})"
            )
        if self.quantization and "label_agreement" in self.quantization:
            q = self.quantization
            lines.append(
                f"  int8 vs fp32 on {q['images']} {q['source']}: labels equal on {q['label_agreement']:.2%} "
                "of the pixels"
            )
        if self.quantization and "calibration_images" in self.quantization:
            q = self.quantization
            lines.append(
                f"  static int8 calibrated on {q['calibration_images']} images ({q['method']}); kept in fp32: "
                f"{', '.join(q['kept_fp32'])}"
            )
        if self.accuracy:
            a = self.accuracy
            lines.append(
                f"  mIoU on {a['images']} images of {a['data']}: PyTorch {100 * a['pytorch_miou']:.2f}, this file "
                f"{100 * a['exported_miou']:.2f} (drop {a['drop_points']:+.2f} points, at most "
                f"{a['max_drop_points']:g}); labels equal on {a['label_agreement']:.2%} of the pixels"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# What both formats trace, and what they are checked against


def _named(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own forward at the input's size (position embeddings interpolated where a family has them), its
    exported outputs by name."""
    options = {"interpolate_pos_encoding": True} if _takes(model, "interpolate_pos_encoding") else {}
    return model.named_outputs(model(pixel_values, return_dict=True, **options))


def _takes(model: nn.Module, option: str) -> bool:
    """Whether the model's forward has the keyword `option` (a detector's has no position-embedding table to
    interpolate: its sine embedding is computed at any size)."""
    import inspect

    return option in inspect.signature(type(model).forward).parameters


def _reference(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The eager model's outputs by name: what an exported file must reproduce."""
    with torch.inference_mode():
        return _named(model, pixel_values)


class Exported(nn.Module):
    """The module both formats trace: the model's forward with named outputs; with preprocessing, the processor's
    rescale + normalize in front, on uint8 RGB images `(B, H, W, 3)` already resized, folded into one multiply-add
    per channel; with `postprocess`, segmentation logits upsampled to a size given at run time and turned into
    label maps or probabilities (`finish`)."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: tuple[Sequence[float], Sequence[float]] | None,
        dtype: torch.dtype,
        postprocess: str | None = None,
    ) -> None:
        super().__init__()
        self.model, self.preprocess, self.compute_dtype = model, preprocess is not None, dtype
        self.postprocess = postprocess
        for name, value in zip(("scale", "shift"), preprocess or ((1.0,) * 3, (0.0,) * 3)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 3, H, W) pixel values the model takes for the file's input `x`."""
        return x.permute(0, 3, 1, 2).float() * self.scale + self.shift if self.preprocess else x

    def forward(self, x: torch.Tensor, target_size: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        named = _named(self.model, self.pixels(x).to(self.compute_dtype))
        return named if self.postprocess is None else self.finish(named, target_size)  # type: ignore[arg-type]

    def finish(self, named: dict[str, torch.Tensor], target_size: torch.Tensor) -> dict[str, torch.Tensor]:
        """`pvtkit segment`'s post-processing (`processing.semantic_segmentation`) on the logits `(B, K, h, w)`:
        bilinear (align_corners=False, in fp32) to `target_size` (int64 `[height, width]`, read at run time), then
        int64 label maps `(B, H, W)` (argmax) or softmax probabilities `(B, K, H, W)`."""
        height, width = target_size.tolist()  # symbolic in the trace: one file serves every output size
        torch._check(height > 0)
        torch._check(width > 0)
        logits = torch.nn.functional.interpolate(
            named["logits"].float(), size=(height, width), mode="bilinear", align_corners=False
        )
        if self.postprocess == "labels":
            return {"labels": logits.argmax(1)}
        return {"probabilities": logits.softmax(1)}

    def example(self, b: int, h: int, w: int, seed: int) -> torch.Tensor:
        """A seeded fp32 input of that shape (normalized-looking floats), or uint8 RGB images `(B, H, W, 3)`."""
        gen = torch.Generator().manual_seed(seed)
        if self.preprocess:
            return torch.randint(0, 256, (b, h, w, 3), generator=gen, dtype=torch.uint8)
        return torch.randn(b, 3, h, w, generator=gen)


def _compare(shape: Sequence[int], got: dict[str, np.ndarray], ref: dict[str, torch.Tensor]) -> Check:
    per_output, abs_max, rel_max = {}, 0.0, 0.0
    for name, expected in ref.items():
        expected = expected.double().numpy()
        actual = np.asarray(got[name], dtype=np.float64)
        if actual.shape != expected.shape:
            raise ExportError(
                f"output {name!r} has shape {actual.shape} at input {list(shape)}, PyTorch gives {expected.shape}"
            )
        diff = float(np.abs(actual - expected).max()) if actual.size else 0.0
        if not np.isfinite(actual).all():
            diff = math.inf
        rel = diff / max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-12)
        per_output[name] = rel
        abs_max, rel_max = max(abs_max, diff), max(rel_max, rel)
    return Check(list(shape), abs_max, rel_max, per_output)


# ---------------------------------------------------------------------------------------------------------------
# One export job: options checked, model prepared, module built, checked afterwards


@dataclass
class _Job:
    """One export in progress: the models, the traced module and its example input, where the file goes."""

    model: nn.Module
    reference: nn.Module
    module: Exported
    example: torch.Tensor
    size: tuple[int, int]
    staged: Path
    report: ExportReport
    dynamic: dict[int, str]
    processor: Any
    target: torch.Tensor | None = None  # the example `target_size` of a post-processed graph

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The example inputs the module is traced with."""
        return (self.example,) if self.target is None else (self.example, self.target)


def _export(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    trace: Callable[[_Job], Any],
    *,
    dtypes: tuple[torch.dtype, ...],
    dtype: str,
    dynamic_batch: bool,
    dynamic_size: bool,
    batch_size: int,
    image_size: int | Sequence[int] | None,
    with_preprocessing: bool,
    processor: Any,
    tolerance: float | None,
    quantize: str | None = None,
    min_side: int = 1,
    after: Callable[[_Job], None] | None = None,
    postprocess: str | None = None,
) -> ExportReport:
    """What both formats share: check the options, stage the output, prepare the model and the traced module;
    `trace(job)` writes `job.staged` and returns a function running the file (None: not checked); check it at
    several shapes; `after(job)` (quantization); publish the file."""
    started = time.perf_counter()
    if not type(model).output_names:
        supported = [c.__name__ for f in registry.families().values() for c in f.classes.values() if c.output_names]
        raise ValueError(f"cannot export {type(model).__name__}: export supports {', '.join(supported)}")
    torch_dtype = parse_dtype(dtype, dtypes)
    if postprocess is not None and postprocess not in POSTPROCESS_MODES:
        raise ValueError(
            f"postprocess {postprocess!r} is not supported: expected one of {', '.join(POSTPROCESS_MODES)}"
        )
    if tolerance is None and postprocess == "labels":
        tolerance = LABEL_TOLERANCE[short_name(torch_dtype)]
    elif tolerance is None:
        tolerance = FP32_TOLERANCE if torch_dtype == torch.float32 else FP16_TOLERANCE * (1 if fmt == "onnx" else 5)
    if not dynamic_batch and int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    processor = processor if processor is not None else default_image_processor(model)
    size = _resolve_size(model, image_size, processor)
    was_training = model.training
    try:
        with atomic_files(path) as staging:
            exported, reference = _prepare(model.eval(), torch_dtype)  # type: ignore[arg-type]
            preprocess = _preprocess_constants(processor) if with_preprocessing else None
            module = Exported(exported, preprocess, torch_dtype, postprocess).eval()  # type: ignore[arg-type]
            b0 = 2 if dynamic_batch else int(batch_size)
            example = module.example(b0, *(_trace_size(model, size) if dynamic_size else size), seed=0)
            output_names = list(_reference(reference, module.pixels(example)))
            target = None
            if postprocess is not None:
                _check_segmentation(model, _reference(reference, module.pixels(example)))
                output_names, target = [postprocess], torch.tensor([size[0] + 5, size[1] + 3])
            name, (h, w) = ("images", (1, 2)) if with_preprocessing else ("pixel_values", (2, 3))
            dynamic = {**({0: "batch"} if dynamic_batch else {}), **({h: "height", w: "width"} if dynamic_size else {})}
            shape = [dynamic.get(i, n) for i, n in enumerate((b0, *size, 3) if with_preprocessing else (b0, 3, *size))]
            report = ExportReport(
                path=str(path),
                format=fmt,
                model_type=model.config.model_type,
                architecture=type(model).__name__,
                dtype=short_name(torch_dtype),
                input_name=name,
                input_shape=shape,
                output_names=output_names,  # type: ignore[arg-type]
                with_preprocessing=with_preprocessing,
                quantize=quantize,
                tolerance=tolerance,
                metadata=_metadata(
                    model,
                    processor,
                    name,
                    output_names,
                    size,
                    dynamic_batch,
                    dynamic_size,
                    short_name(torch_dtype),
                    with_preprocessing,
                    quantize,
                    postprocess,
                ),  # type: ignore[arg-type]
                postprocess=postprocess,
            )
            job = _Job(
                model,
                reference,
                module,
                example if preprocess else example.to(torch_dtype),
                size,
                staging / Path(path).name,
                report,
                dynamic,
                processor,
                target,
            )  # type: ignore[arg-type]
            run = trace(job)
            if run is not None:
                _verify(job, run, _check_shapes(model, size, int(batch_size), dynamic_batch, dynamic_size, min_side))
            if after is not None:
                after(job)
            report.size_bytes = sum(f.stat().st_size for f in staging.iterdir())
    finally:
        model.train(was_training)
    report.export_seconds = time.perf_counter() - started
    return report


def _resolve_size(model: nn.Module, image_size: int | Sequence[int] | None, processor: Any) -> tuple[int, int]:
    """The example (and, for a static export, the fixed) input size; a multiple of what the family needs."""
    fallback = getattr(model.config, "image_size", None) or DEFAULT_SIDE  # GLPN: any size; its processor fixes none
    size = pair(image_size) if image_size is not None else (fixed_size(processor) or pair(fallback))
    if min(size) <= 0:
        raise ValueError(f"image size must be positive, got {size[0]}x{size[1]}")
    family = registry.family_of(model)
    mh, mw = family.size_multiple(model.config)
    if size[0] % mh or size[1] % mw:
        near = f"{size[0] // mh * mh or mh}x{size[1] // mw * mw or mw}"
        raise ValueError(
            f"{family.title} cannot be exported at {size[0]}x{size[1]}: height and width must be "
            f"multiples of the patch size {mh}x{mw} (e.g. {near})"
        )
    return size


def _trace_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """The example size a file of any size is traced at: `size`, or where some feature map would be one pixel wide
    (a SegFormer processor's 32x32 makes stage 4's map 1x1, which the tracer fixes as a constant) the smallest
    size without, a multiple of what the family needs."""
    family = registry.family_of(model)
    low = family.min_export_side(model.config)
    multiple = family.size_multiple(model.config)
    return tuple(max(s, -(-low // m) * m) for s, m in zip(size, multiple))  # type: ignore[return-value]


def _prepare(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """(the model in `dtype` for export, the fp32 model for reference), copying only when the dtype differs."""
    params = list(model.parameters())
    on_cpu_fp32 = not params or (params[0].dtype == torch.float32 and params[0].device.type == "cpu")
    reference = model if on_cpu_fp32 else copy.deepcopy(model).float().cpu()  # exports trace on the CPU
    exported = reference if dtype == torch.float32 else copy.deepcopy(reference).to(dtype)
    return exported.eval(), reference.eval()


def _preprocess_constants(processor: Any) -> tuple[list[float], list[float]]:
    """Per-channel (scale, shift) with `x * scale + shift == ((x * rescale_factor) - mean) / std`."""
    rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
    mean, std = _mean_std(processor)
    return (rescale / std).tolist(), (-mean / std).tolist()


def _mean_std(processor: Any) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and std the processor normalizes with: zeros and ones when it does not normalize."""
    if not processor.do_normalize:
        return np.zeros(3), np.ones(3)
    return tuple(
        np.broadcast_to(np.asarray(v, dtype=np.float64), (3,)) for v in (processor.image_mean, processor.image_std)
    )  # type: ignore[return-value]


def _metadata(
    model: nn.Module,
    processor: Any,
    input_name: str,
    output_names: list[str],
    size: tuple[int, int],
    dynamic_batch: bool,
    dynamic_size: bool,
    dtype: str,
    with_preprocessing: bool,
    quantize: str | None,
    postprocess: str | None = None,
) -> dict[str, str]:
    """The `metadata_props` (all strings; JSON where structured) a server needs to use the file on its own."""
    from . import __version__

    config = model.config
    mean, std = (v.tolist() for v in _mean_std(processor))
    resample = int(processor.resample)
    meta = {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "input_names": [input_name] + (["target_size"] if postprocess else []),
        "output_names": output_names,
        "size": {"height": size[0], "width": size[1]},
        "dynamic_batch": dynamic_batch,
        "dynamic_size": dynamic_size,
        "resample": resample,
        "resample_name": RESAMPLE_NAMES[resample].lower(),
        "do_rescale": bool(processor.do_rescale),
        "rescale_factor": float(processor.rescale_factor),
        "do_normalize": bool(processor.do_normalize),
        "image_mean": mean,
        "image_std": std,
        "preprocessor_config": processor.to_dict(),
        "config": config.to_dict(),
        "dtype": dtype,
        "quantization": f"{quantize}-int8" if quantize else "none",
        "producer": f"pvtkit {__version__}",
        "input_format": "uint8 RGB images (batch, height, width, 3), resized to `size`; rescale and normalize run "
        "inside the graph"
        if with_preprocessing
        else f"{dtype} pixel values (batch, 3, height, width): RGB, resized to `size`, rescaled and "
        "normalized with `image_mean` / `image_std`",
        **registry.family_of(model).export_metadata(config),
    }
    if postprocess:
        meta["postprocess"] = (
            f"{postprocess}: the logits resized (bilinear, align_corners=False) to `target_size` (int64 [height, "
            "width], e.g. the original image's), then "
            + ("argmax: int64 label maps (batch, height, width)" if postprocess == "labels" else "softmax over classes")
        )
    if output_names in (["logits"], ["labels"], ["probabilities"]) and getattr(config, "num_labels", 0) > 0:
        meta["id2label"] = {str(k): v for k, v in sorted(config.id2label.items())}
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False) for k, v in meta.items()}


def _check_shapes(
    model: nn.Module, size: tuple[int, int], batch: int, dynamic_batch: bool, dynamic_size: bool, min_side: int = 1
) -> list[tuple[int, int, int]]:
    """(batch, height, width) of the verification runs: the export size, plus other batches and sizes when they
    are dynamic: odd and non-square (224: 193x257 and 115x117), snapped to the multiple the family needs."""
    H, W = size
    mh, mw = registry.family_of(model).size_multiple(model.config)
    batches = [1, 3, 2] if dynamic_batch else [batch] * 3
    sizes = [(H, W)] * 3
    if dynamic_size:
        sizes = [(H, W), (H - H // 7 | 1, W + W // 7 | 1), (H // 2 + 3, W // 2 + 5)]
        sizes = [(max(round(h / mh) * mh, mh, min_side), max(round(w / mw) * mw, mw, min_side)) for h, w in sizes]
    return list(dict.fromkeys((b, h, w) for b, (h, w) in zip(batches, sizes)))


def _check_segmentation(model: nn.Module, named: dict[str, torch.Tensor]) -> None:
    """Post-processing is for semantic segmentation: one `logits` output `(B, num_labels, h, w)`."""
    logits = named.get("logits")
    if list(named) != ["logits"] or logits is None or logits.ndim != 4:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in named.items())
        raise ValueError(
            f"postprocess needs a semantic segmentation model (logits (batch, classes, height, width)); "
            f"{type(model).__name__} returns {shapes}"
        )


def _labels_check(shape: list[int], target: list[int], got: np.ndarray, expected: torch.Tensor) -> Check:
    """A post-processed label map against PyTorch's: the share of pixels with the same label."""
    expected_np = expected.numpy()
    if got.shape != expected_np.shape:
        raise ExportError(f"output 'labels' has shape {got.shape} at input {shape}, PyTorch gives {expected_np.shape}")
    agreement = float((got == expected_np).mean())
    return Check(shape, 1.0 - agreement, 1.0 - agreement, {"labels": 1.0 - agreement}, target, agreement)


def _verify(job: _Job, run: Callable[..., dict[str, np.ndarray]], shapes: list[tuple[int, int, int]]) -> None:
    """Run the exported file at each shape against the eager model; fail above the tolerance (for label maps: the
    share of pixels whose label differs)."""
    report = job.report
    what = "ONNX file" if report.format == "onnx" else "exported program"
    for seed, (b, h, w) in enumerate(shapes):
        feed = job.module.example(b, h, w, seed=seed + 1)
        target = None if job.target is None else torch.tensor([h + 2 * h // 3 + 1, w + w // 2 + 3])
        try:
            got = run(feed) if target is None else run(feed, target)
        except Exception as e:  # the runtimes raise many types; one line says what failed
            raise ExportError(f"the {what} failed at input {list(feed.shape)}: {str(e).splitlines()[0]}") from e
        expected = _reference(job.reference, job.module.pixels(feed))
        if target is None:
            check = _compare(list(feed.shape), got, expected)
        elif report.postprocess == "labels":
            labels = job.module.finish(expected, target)["labels"]
            check = _labels_check(list(feed.shape), target.tolist(), np.asarray(got["labels"]), labels)
        else:
            check = _compare(list(feed.shape), got, job.module.finish(expected, target))
            check.target_size = target.tolist()
        report.checks.append(check)
        logger.info("check %s: max abs diff %.3g, relative %.3g", check.shape, check.max_abs_diff, check.max_rel_diff)
    report.max_abs_diff = max(c.max_abs_diff for c in report.checks)
    report.max_rel_diff = max(c.max_rel_diff for c in report.checks)
    report.verified = True
    if report.postprocess == "labels" and not report.max_rel_diff <= report.tolerance:  # type: ignore[operator]
        worst = max(report.checks, key=lambda c: c.max_rel_diff)
        raise ExportError(
            f"the {what}'s label maps differ from PyTorch's on {worst.max_rel_diff:.3%} of the pixels (at input "
            f"{worst.shape}, output size {worst.target_size}), more than {report.tolerance:.3%}; nothing was written"
        )
    if not report.max_rel_diff <= report.tolerance:  # type: ignore[operator]
        worst = max(report.checks, key=lambda c: c.max_rel_diff)
        raise ExportError(
            f"the {what} differs from PyTorch by {report.max_rel_diff:.3g} (relative, at input "
            f"{worst.shape}), above the tolerance {report.tolerance:g}; nothing was written"
        )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's chatter (torchvision-op notices, deprecation and tracer warnings) unless -v."""
    if logger.isEnabledFor(logging.INFO):  # `pvtkit -v`
        yield
        return
    names = (
        "torch.onnx",
        "torch.onnx._internal.exporter._registration",
        "torch._export",
        "torch.export",
        "torch.fx.experimental.symbolic_shapes",
        "",
    )  # "": onnxruntime.quantization logs to the root logger
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _tracing(what: str, model: nn.Module) -> Iterator[None]:
    """Trace quietly, without autograd; whatever the exporter raises (it raises many types) becomes one
    `ExportError` line saying what failed."""
    with _quiet_exporter(), torch.no_grad():
        try:
            yield
        except Exception as e:
            raise ExportError(f"{what} of {type(model).__name__} failed: {str(e).splitlines()[0]}") from e


# ---------------------------------------------------------------------------------------------------------------
# ONNX


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str = "fp32",
    dynamic_batch: bool = True,
    dynamic_size: bool = True,
    batch_size: int = 1,
    image_size: int | Sequence[int] | None = None,
    with_preprocessing: bool = False,
    processor: Any = None,
    quantize: str | None = None,
    verify: bool = True,
    tolerance: float | None = None,
    calibration_images: Sequence[Any] | None = None,
    fast_layout: bool = True,
    postprocess: str | None = None,
    verify_data: str | os.PathLike | None = None,
    max_miou_drop: float = 0.5,
    progress: bool = False,
) -> ExportReport:
    """Export `model` to one ONNX file, check it in ONNX Runtime, and return what was written and measured.

    Args:
        model: A model of a class with `output_names` (every PVTv2 and ViT class but masked image modeling).
        path: The `.onnx` file to write (atomically; a model over 2 GB gets a `.data` file beside it).
        opset: ONNX opset, 18 to 23; 20 (the default) is the first with a native Gelu, which ORT runs fastest.
        dtype: "fp32" or "fp16" (weights and input; checked against the fp32 model with a looser tolerance).
        dynamic_batch: Any batch size (else `batch_size` only).
        dynamic_size: Any height and width (ViT: any multiple of the patch size; its position embeddings are
            interpolated in the graph). Else `image_size` only.
        batch_size: The fixed batch size when `dynamic_batch` is False.
        image_size: Example (and, when not dynamic, fixed) size; default: the processor's size.
        with_preprocessing: The graph takes uint8 RGB images `(batch, height, width, 3)` (NHWC, as decoders give
            them), already resized to `size`, and does the processor's rescale + normalize itself.
        processor: The image processor whose mean/std/size go into the metadata (default: the family's).
        quantize: None, "dynamic" (ONNX Runtime's dynamic int8 quantization of the weights; the drift against
            fp32 on real photos is measured and reported, not bounded) or "static" (QDQ int8 of the convolutions
            and matrix products, calibrated on `calibration_images`; LayerNorm, softmax, GELU, the resize and the
            classifier stay fp32). Bound what either costs with `verify_data`.
        verify: Run the file in ONNX Runtime (when installed) at several shapes against the model's own forward
            and fail, writing nothing, if the largest relative difference is above `tolerance`.
        tolerance: Max |onnx - torch| / max |torch| per output; default 1e-4 (fp32), 1e-2 (fp16).
        calibration_images: Images (paths, PIL, arrays): static quantization's calibration set (required), and
            dynamic quantization's drift measurement (default: scikit-image's photos when installed, else seeded
            random images).
        fast_layout: Lay layers out as ONNX Runtime runs them fastest (PVTv2's MLP in NCHW, `cpu_kernels`); False
            exports the plain layout, for comparison. Quantizing keeps the plain layout (int8 rewrites MatMul/Gemm).
        postprocess: Segmentation models: None (the logits at 1/4 size), "labels" or "probabilities". The graph
            then takes a second input `target_size` (int64 `[height, width]`: the original image's size, as
            `pvtkit segment` gives its maps) and upsamples the logits to it (bilinear, align_corners=False) in
            fp32, then returns int64 `labels (batch, height, width)` (argmax) or softmax `probabilities (batch,
            classes, height, width)`. Label maps are checked by the share of pixels equal to PyTorch's (`tolerance`
            is then the share that may differ: default 0.1% fp32, 2% fp16).
        verify_data: A segmentation folder (any layout pvtkit reads; its validation split when it has one): the
            file's mIoU and the PyTorch model's are measured on it (`report.accuracy`), and the export fails,
            writing nothing, if the file loses more than `max_miou_drop` points.
        max_miou_drop: mIoU points (of 100) the file may lose against PyTorch on `verify_data`.
        progress: Show a progress bar while measuring `verify_data`.

    Returns:
        An `ExportReport` (path, signature, checks, largest difference, metadata, quantization, accuracy).

    Raises:
        MissingDependencyError: onnx / onnxscript (or onnxruntime, for `quantize`) is not installed.
        ValueError: Options the model cannot be exported with (opset, dtype, a ViT size that is not a multiple
            of the patch, a class that is not exported).
        ExportError: The file does not match PyTorch within the tolerance, or loses more than `max_miou_drop` on
            `verify_data` (nothing is written).
        OSError: The output cannot be written.
    """
    if int(opset) not in SUPPORTED_OPSETS:
        raise ValueError(
            f"opset {opset} is not supported: pvtkit exports opsets {SUPPORTED_OPSETS[0]} to "
            f"{SUPPORTED_OPSETS[-1]} ({DEFAULT_OPSET} recommended: native Gelu)"
        )
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize {quantize!r} is not supported: expected one of {', '.join(QUANTIZE_MODES)}")
    if quantize and parse_dtype(dtype, ONNX_DTYPES) != torch.float32:
        raise ValueError("int8 quantization starts from the fp32 graph: use dtype fp32 with quantize")
    if quantize == "static" and not calibration_images:
        raise ValueError("static int8 quantization needs calibration images (calibration_images / --calibration DIR)")
    if not max_miou_drop >= 0:
        raise ValueError(f"the allowed mIoU drop must be 0 or more points, got {max_miou_drop}")
    if verify_data is not None and not Path(verify_data).is_dir():
        raise ValueError(f"verify data {str(verify_data)!r} does not exist or is not a folder")
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    ort = None
    if verify_data is not None:
        ort = require("onnxruntime", "measuring the file's mIoU (verify_data)")
    if verify or quantize:
        try:
            ort = require("onnxruntime", "checking the ONNX file" if not quantize else "int8 quantization")
        except MissingDependencyError:
            if quantize:
                raise
            logger.warning("onnxruntime is not installed, so the file is not checked: %s", INSTALL_HINT)

    def trace(job: _Job) -> Callable[[torch.Tensor], dict[str, np.ndarray]] | None:
        report = job.report
        report.opset = int(opset)
        logger.info("exporting %s to ONNX (opset %d, %s)", type(model).__name__, opset, report.dtype)
        with _tracing("ONNX export", model), cpu_kernels.flags(onnx_nchw_mlp=fast_layout and not quantize):
            shapes = {"x": job.dynamic or None, **({"target_size": None} if job.target is not None else {})}
            program = torch.onnx.export(
                job.module,
                job.inputs,
                dynamo=True,
                input_names=[report.input_name] + (["target_size"] if job.target is not None else []),
                output_names=report.output_names,
                opset_version=int(opset),
                optimize=True,
                verbose=False,
                dynamic_shapes=shapes if job.dynamic or job.target is not None else None,
                external_data=False,
            )
        for key, value in report.metadata.items():
            program.model.metadata_props[key] = value
        program.model.producer_name = "pvtkit"
        program.save(job.staged)
        if ort is None or not verify:
            report.skipped = "verify=False" if not verify else f"onnxruntime is not installed ({INSTALL_HINT})"
            return None
        try:
            session = ort_session(ort, job.staged)
        except Exception as e:
            raise ExportError(f"ONNX Runtime cannot load the exported file: {str(e).splitlines()[0]}") from e
        names, feed_type = report.output_names, job.example.numpy().dtype

        def run(feed: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, np.ndarray]:
            inputs = {report.input_name: feed.numpy().astype(feed_type)}
            if target is not None:
                inputs["target_size"] = target.numpy().astype(np.int64)
            return dict(zip(names, session.run(names, inputs)))

        return run

    def after(job: _Job) -> None:
        from . import export_accuracy

        if quantize == "static":
            export_accuracy.quantize_static(job, calibration_images)  # type: ignore[arg-type]
        elif quantize == "dynamic":
            _quantize(ort, job, calibration_images)
        if verify_data is not None:
            _gate_accuracy(ort, job, verify_data, max_miou_drop, progress)

    return _export(
        model,
        path,
        "onnx",
        trace,
        dtypes=ONNX_DTYPES,
        dtype=dtype,
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        batch_size=batch_size,
        image_size=image_size,
        with_preprocessing=with_preprocessing,
        processor=processor,
        tolerance=tolerance,
        quantize=quantize,
        after=after if quantize or verify_data is not None else None,
        postprocess=postprocess,
    )


def _gate_accuracy(ort: Any, job: _Job, data: str | os.PathLike, max_drop: float, progress: bool) -> None:
    """Measure the staged file's mIoU against PyTorch's on `data` into `job.report.accuracy`; fail (the staged
    file is then discarded) if it loses more than `max_drop` points."""
    from .export_accuracy import OnnxSegmenter, measure_miou

    report = job.report
    if report.output_names not in (["logits"], ["labels"], ["probabilities"]) or job.reference.config.num_labels < 1:
        raise ValueError(f"verify data measures mIoU: it needs a segmentation model, not {report.architecture}")
    _check_segmentation(job.model, _reference(job.reference, job.module.pixels(job.example[:1]).float()))
    session = ort_session(ort, job.staged)
    batch = None if "batch" in job.dynamic.values() else int(job.example.shape[0])
    runner = OnnxSegmenter(session, report.input_name, report.output_names[0], batch)
    accuracy = measure_miou(job, runner, data, progress)
    accuracy["max_drop_points"] = float(max_drop)
    report.accuracy = accuracy
    if accuracy["drop_points"] > max_drop:
        what = f"{report.quantize} int8 " if report.quantize else ""
        raise ExportError(
            f"the {what}ONNX file loses {accuracy['drop_points']:.2f} mIoU points on {accuracy['images']} images of "
            f"{data}: {100 * accuracy['exported_miou']:.2f} against PyTorch's {100 * accuracy['pytorch_miou']:.2f} "
            f"(at most {max_drop:g} allowed); nothing was written"
        )


def ort_session(ort: Any, path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimizations (what a deployment gets)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sample_photos(processor: Any, size: tuple[int, int], count: int = 8) -> tuple[list[np.ndarray], str]:
    """Real photos (scikit-image's bundled ones) resized to `size` as uint8 RGB HWC arrays, or seeded random
    images when scikit-image is not installed; returns (images, where they came from)."""
    import PIL.Image

    try:
        import skimage.data
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8) for _ in range(count)], "random images"
    images = []
    for name in SAMPLE_PHOTOS[:count]:
        image = PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        images.append(np.asarray(image.resize((size[1], size[0]), resample=int(processor.resample))))
    return images, "scikit-image photos"


def _quantize(ort: Any, job: _Job, images: Sequence[Any] | None) -> None:
    """Replace the staged fp32 file by its dynamic-int8 version and measure the drift on real images."""
    from .processing import load_image

    processor = job.processor
    quantization = require("onnxruntime.quantization", "int8 quantization")
    staged, report, (h, w) = job.staged, job.report, job.size
    fp32 = staged.parent / f"fp32-{staged.name}"
    os.replace(staged, fp32)
    with _quiet_exporter():
        quantization.quantize_dynamic(
            fp32, staged, weight_type=quantization.QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
    fp32.unlink()
    restamp_metadata(staged, report.metadata)
    if images is None:
        arrays, source = sample_photos(processor, (h, w))
    else:
        load = lambda im: np.asarray(load_image(im).convert("RGB").resize((w, h)))  # noqa: E731
        arrays, source = [im if isinstance(im, np.ndarray) else load(im) for im in images], "given images"
    batch = np.stack(arrays)  # (n, H, W, 3) uint8
    pixels = processor(list(batch), return_tensors="pt", do_resize=False, input_data_format="channels_last")
    pixels = pixels["pixel_values"].float()
    feed = batch if report.with_preprocessing else pixels.numpy()
    if report.postprocess:  # a post-processed graph: compared at the export size
        target = torch.tensor([h, w])
        (got,) = ort_session(ort, staged).run(None, {report.input_name: feed, "target_size": target.numpy()})
        expected = job.module.finish(_reference(job.reference, pixels), target)[report.output_names[0]].numpy()
        if report.postprocess == "labels":
            report.quantization = {
                "images": len(arrays),
                "source": source,
                "label_agreement": float((got == expected).mean()),
            }
            return
    else:
        got = ort_session(ort, staged).run(None, {report.input_name: feed})[0]
        expected = _reference(job.reference, pixels)[report.output_names[0]].numpy()
    drift = float(np.abs(got - expected).max())
    classifier = report.output_names in (["logits"], ["probabilities"]) and expected.shape[1] > 1  # per pixel too
    report.quantization = {
        "images": len(arrays),
        "source": source,
        "max_logit_drift": drift,
        "max_rel_drift": drift / max(float(np.abs(expected).max()), 1e-12),
        "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()) if classifier else float("nan"),
    }


def restamp_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `metadata` (the job's, which names the quantization) into the ONNX file at `path` again, replacing what
    is there: ONNX Runtime's quantizers keep none of it."""
    onnx = require("onnx", "ONNX export")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `metadata_props` of an ONNX file written by `export_onnx`, JSON values decoded."""
    onnx = require("onnx", "reading ONNX metadata")
    model = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    return meta


# ---------------------------------------------------------------------------------------------------------------
# torch.export


def export_torch(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    dtype: str = "fp32",
    dynamic_batch: bool = True,
    dynamic_size: bool = True,
    batch_size: int = 1,
    image_size: int | Sequence[int] | None = None,
    with_preprocessing: bool = False,
    processor: Any = None,
    verify: bool = True,
    tolerance: float | None = None,
) -> ExportReport:
    """Export `model` as a `torch.export` program (`.pt2`), loadable with `torch.export.load(path).module()`.

    The program takes the same input as the ONNX file (see `export_onnx` for the arguments) and returns a dict
    of named outputs (`{"logits": ...}`). The metadata is stored as the extra file `pvtkit.json`. The accepted
    dynamic ranges are in `report.dynamic_ranges`: torch.export guards against feature maps one pixel wide, so
    PVTv2 programs take sizes from 61 pixels (33 with linear SRA); ViT takes multiples of the patch size.

    Raises:
        ValueError: Options the model cannot be exported with.
        ExportError: The program does not match the model within the tolerance (nothing is written).
        OSError: The output cannot be written.
    """
    low = registry.family_of(model).min_export_side(model.config)

    def trace(job: _Job) -> Callable[[torch.Tensor], dict[str, np.ndarray]] | None:
        report, Dim = job.report, torch.export.Dim
        dims = {
            axis: Dim("batch", min=1, max=MAX_BATCH) if name == "batch" else Dim.DYNAMIC
            for axis, name in job.dynamic.items()
        }
        with _tracing("torch.export", model):
            program = torch.export.export(job.module, (job.example,), dynamic_shapes={"x": dims or None})
        torch.export.save(program, job.staged, extra_files={"pvtkit.json": json.dumps(report.metadata)})
        report.dynamic_ranges = {
            name: ([1, MAX_BATCH] if name == "batch" else [low, None]) for name in job.dynamic.values()
        }
        if not verify:
            report.skipped = "verify=False"
            return None
        loaded = program.module()  # as `torch.export.load(path).module()` gives it back, guards included
        cast = job.example.dtype

        def run(feed: torch.Tensor) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                return {k: v.float().numpy() for k, v in loaded(feed.to(cast)).items()}

        return run

    return _export(
        model,
        path,
        "torch.export",
        trace,
        dtypes=TORCH_DTYPES,
        dtype=dtype,
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        batch_size=batch_size,
        image_size=image_size,
        with_preprocessing=with_preprocessing,
        processor=processor,
        tolerance=tolerance,
        min_side=low,
    )
