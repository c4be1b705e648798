"""Export PVTv2 and ViT for deployment: ONNX files that stay dynamic and fast, and `torch.export` programs.

`export_onnx` writes one file that runs at any batch size and (PVTv2) any resolution or (ViT) any multiple of the
patch size, checks it in ONNX Runtime against PyTorch on inputs of several shapes, and stores what a server needs
(id2label, mean/std, size, input/output names) in the file's `metadata_props`. `export_torch` writes a
`torch.export` program (`.pt2`) with the same dynamic dimensions. Both write atomically: a failed export or check
leaves no file behind.

Why the models are not traced as they are (torch 2.13, onnxruntime 1.32; the measurements are in the README):

* Linear SRA's `AdaptiveAvgPool2d(7)` is recorded as an `AveragePool` whose kernel is fixed by the example
  input, so a file exported at 224 runs at 193x257 and silently returns wrong numbers (the TorchScript exporter
  refuses it outright). Here it is two small matmuls with averaging matrices built from the input's size.
* Python branches on sizes keep only the branch the example took: SRA's zero-padding of maps smaller than one
  reduction window, and ViT's "nominal size: skip the interpolation" shortcut, which makes a ViT exported at 224
  fail at every other size. Here the padding amount is a symbolic `max(0, r - w)` and ViT always interpolates
  when the size is dynamic (bicubic at the nominal size is the identity).
* Speed (whai362/PVT#103): eager PyTorch hands the MLP's depth-wise conv a transposed *view* and convolves the
  channels-last memory in place; ONNX Runtime has to materialise both transposes at the MLP's hidden width (8x the
  model width in stages 1-2) and reorder them for its blocked conv kernels. Here the whole MLP runs in NCHW (the
  two Linear layers as 1x1 convs), so the transposes happen at the model width and ORT chains its blocked convs;
  tokens are kept as `(B*N, C)` rows so every Linear is one Gemm with its bias fused.

So both formats are traced from a small restatement of each model's forward (`PvtV2ExportGraph`,
`ViTExportGraph`) that reads the model's own modules by their state-dict names (the stable contract) and its
config, and every export is checked against the model's own forward.

The TorchScript exporter (`dynamo=False`, `dynamic_axes`) is not used: it cannot export adaptive pooling with a
dynamic input, records Python size arithmetic as constants, and is deprecated. The dynamo exporter
(`torch.export` + `dynamic_shapes`) keeps symbolic sizes through the whole graph.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .auto import default_image_processor
from .layers import get_activation
from .layers import pair as _pair
from .models.pvt_v2 import PvtV2Backbone, PvtV2ForImageClassification, PvtV2Model
from .models.vit import ViTForImageClassification, ViTModel

logger = logging.getLogger("pvtkit")

INSTALL_HINT = 'pip install "pvtkit[export]"'
DEFAULT_OPSET = 20  # the first opset with a native Gelu; ORT does not fuse the erf decomposition of 18-19
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)
FP32_TOLERANCE = 1e-4  # max |onnx - torch| / max |torch|, per output
FP16_TOLERANCE = 1e-2  # fp16 file against the fp32 model
ONNX_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
TORCH_DTYPES = {**ONNX_DTYPES, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
QUANTIZE_MODES = ("dynamic",)
# scikit-image's bundled photos (no download), used to measure what int8 quantization does to real images.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "colorwheel", "cat")
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
SUPPORTED_CLASSES = (PvtV2ForImageClassification, PvtV2Model, PvtV2Backbone, ViTForImageClassification, ViTModel)


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


# ---------------------------------------------------------------------------------------------------------------
# Export graphs: each model's forward restated for tracing with symbolic sizes.


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _conv1x1(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear layer applied to an NCHW map: (B, C_in, h, w) -> (B, C_out, h, w)."""
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def _pool_matrix(n: int | torch.SymInt, out: int, like: torch.Tensor) -> torch.Tensor:
    """The (out, n) matrix whose rows average the windows of `F.adaptive_avg_pool1d` from n to `out` cells."""
    i = torch.arange(out, device=like.device)
    start = torch.div(i * n, out, rounding_mode="floor")  # floor(i * n / out)
    end = torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")  # ceil((i + 1) * n / out)
    j = torch.arange(n, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])  # (out, n)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: torch.Tensor, out: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, out)` as `P_h @ x @ P_w^T`, which exports with dynamic height and width.

    (B, C, H, W) -> (B, C, out, out); equal to PyTorch's windows (floor start, ceil end) for every size, smaller
    than `out` included.
    """
    rows = _pool_matrix(x.shape[-2], out, x)  # (out, H)
    cols = _pool_matrix(x.shape[-1], out, x)  # (out, W)
    return rows @ x @ cols.transpose(0, 1)


class PvtV2ExportGraph(nn.Module):
    """PVTv2's inference forward written for export; it shares (does not copy) the model's parameters.

    Tokens are `(B*N, C)` rows. With `nchw_mlp` (for ONNX Runtime) the whole MLP runs on an NCHW map, its two
    Linear layers as 1x1 convs; without it (for `torch.export`, whose runtime is PyTorch) the MLP runs as the
    model does, on rows with the depth-wise conv over a transposed view. (A 1x1 conv would also make PyTorch's
    conv-backend choice guard on `batch > 1`, so the program would refuse batch 1.) Outputs are a dict in the
    order of `output_names`: `logits` (classifier), `last_hidden_state` (encoder, NCHW) or the backbone's stages.

    Args:
        model: A `PvtV2ForImageClassification`, `PvtV2Model` or `PvtV2Backbone` (in eval mode).
        nchw_mlp: Run the MLP in NCHW (the fast layout for ONNX Runtime).
    """

    def __init__(self, model: nn.Module, nchw_mlp: bool = True) -> None:
        super().__init__()
        c = model.config
        self.model, self.nchw_mlp = model, nchw_mlp
        self.sr_ratios, self.heads = list(c.sr_ratios), list(c.num_attention_heads)
        self.linear = c.linear_attention
        self.act = get_activation(c.hidden_act)
        if isinstance(model, PvtV2ForImageClassification):
            self.encoder, self.output_names = model.pvt_v2.encoder, ["logits"]
        elif isinstance(model, PvtV2Backbone):
            self.encoder, self.output_names = model.encoder, list(c.out_features)
        else:
            self.encoder, self.output_names = model.encoder, ["last_hidden_state"]

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        x, maps = pixel_values, []
        for i, stage in enumerate(self.encoder.layers):
            x = self._stage(i, stage, x)
            maps.append(x)
        if isinstance(self.model, PvtV2ForImageClassification):
            return {"logits": self.model.classifier(x.mean(dim=(2, 3)))}  # (B, num_labels)
        if isinstance(self.model, PvtV2Backbone):
            return {self.model.config.stage_names[i]: maps[i] for i in self.model.config.out_indices}
        return {"last_hidden_state": x}

    def _stage(self, i: int, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        grid = stage.patch_embedding.proj(x)  # (B, C, h, w)
        B, C, h, w = grid.shape
        t = _layer_norm(stage.patch_embedding.layer_norm, _rows(grid))  # (B*h*w, C)
        for block in stage.blocks:
            t = t + self._attention(block.attention, _layer_norm(block.layer_norm_1, t), B, C, h, w, i)
            t = t + self._mlp(block.mlp, _layer_norm(block.layer_norm_2, t), B, C, h, w)
        return _grid(_layer_norm(stage.layer_norm, t), B, C, h, w)  # (B, C, h, w)

    def _attention(self, attn: nn.Module, y: torch.Tensor, B: int, C: int, h: int, w: int, i: int) -> torch.Tensor:
        r, heads = self.sr_ratios[i], self.heads[i]
        if self.linear:
            pooled = _rows(adaptive_avg_pool2d(_grid(y, B, C, h, w), 7))  # (B*49, C)
            conv = attn.spatial_reduction  # a 1x1 conv: a Linear layer on the rows
            kv = F.gelu(_layer_norm(attn.layer_norm, F.linear(pooled, conv.weight[:, :, 0, 0], conv.bias)))
        elif r > 1:
            grid = _grid(y, B, C, h, w)
            # A map smaller than one reduction window is zero-padded to one window (as the model does); the pad
            # is a symbolic max(0, r - w), so the file keeps both cases.
            grid = F.pad(grid, (0, torch.sym_max(0, r - w), 0, torch.sym_max(0, r - h)))
            kv = _layer_norm(attn.layer_norm, _rows(attn.spatial_reduction(grid)))  # (B*M, C)
        else:
            kv = y
        q = attn.query(y).reshape(B, -1, heads, C // heads).transpose(1, 2)  # (B, heads, N, head_dim)
        k = attn.key(kv).reshape(B, -1, heads, C // heads).transpose(1, 2)  # (B, heads, M, head_dim)
        v = attn.value(kv).reshape(B, -1, heads, C // heads).transpose(1, 2)  # (B, heads, M, head_dim)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, C)  # (B*N, C)
        return attn.proj(out)

    def _mlp(self, mlp: nn.Module, y: torch.Tensor, B: int, C: int, h: int, w: int) -> torch.Tensor:
        if not self.nchw_mlp:
            z = mlp.dense1(y)  # (B*h*w, hidden)
            z = F.relu(z) if self.linear else z
            z = self.act(mlp.dwconv.dwconv(_grid(z, B, z.shape[-1], h, w)))  # (B, hidden, h, w)
            return mlp.dense2(_rows(z))  # (B*h*w, C)
        z = _conv1x1(mlp.dense1, _grid(y, B, C, h, w))  # (B, hidden, h, w)
        z = F.relu(z) if self.linear else z
        z = self.act(mlp.dwconv.dwconv(z))
        return _rows(_conv1x1(mlp.dense2, z))  # (B*h*w, C)


def _rows(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B*h*w, C) tokens in row-major order."""
    return grid.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1])


def _grid(rows: torch.Tensor, B: int, C: int, h: int, w: int) -> torch.Tensor:
    """(B*h*w, C) tokens -> (B, C, h, w)."""
    return rows.reshape(B, h * w, C).transpose(1, 2).reshape(B, C, h, w)


class ViTExportGraph(nn.Module):
    """ViT's inference forward written for export; it shares the model's parameters.

    With `interpolate` the position embeddings are always resized (bicubic, in fp32, as the model does) to the
    input's patch grid, so the graph keeps a dynamic size; at the nominal size the resize is the identity.

    Args:
        model: A `ViTForImageClassification` or `ViTModel` (in eval mode).
        interpolate: Resize the position embeddings to the input's grid (dynamic or non-nominal size).
    """

    def __init__(self, model: nn.Module, interpolate: bool) -> None:
        super().__init__()
        c = model.config
        self.model, self.interpolate = model, interpolate
        self.vit = model.vit if isinstance(model, ViTForImageClassification) else model
        self.heads, self.act = c.num_attention_heads, get_activation(c.hidden_act)
        grid = self.vit.embeddings.position_embeddings.shape[1] - 1
        ih, iw = _pair(c.image_size)
        ph, pw = _pair(c.patch_size)
        self.grid, self.patch = (ih // ph, iw // pw), (ph, pw)
        if self.grid[0] * self.grid[1] != grid:
            raise ValueError(f"position embeddings hold {grid} patches; image_size / patch_size give {self.grid}")
        if isinstance(model, ViTForImageClassification):
            self.output_names = ["logits"]
        else:
            self.output_names = ["last_hidden_state"] + (["pooler_output"] if model.pooler is not None else [])

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = pixel_values.shape[-2:]
        ph, pw = self.patch
        # a run-time assertion in the torch.export program (ONNX has no assertions: there a strided conv drops
        # the partial patches)
        torch._check(H % ph == 0 and W % pw == 0,
                     lambda: f"ViT input size {H}x{W} is not a multiple of the patch size {ph}x{pw}")  # fmt: skip
        emb = self.vit.embeddings
        x = emb.patch_embeddings.projection(pixel_values)  # (B, C, h, w)
        B, C, h, w = x.shape
        x = torch.cat((emb.cls_token.expand(B, -1, -1), x.flatten(2).transpose(1, 2)), dim=1)  # (B, 1 + h*w, C)
        x = x + (self._positions(emb.position_embeddings, h, w) if self.interpolate else emb.position_embeddings)
        for layer in self.vit.encoder.layer:
            x = x + self._attention(layer.attention, _layer_norm(layer.layernorm_before, x))
            y = self.act(layer.intermediate.dense(_layer_norm(layer.layernorm_after, x)))
            x = x + layer.output.dense(y)
        x = _layer_norm(self.vit.layernorm, x)
        if isinstance(self.model, ViTForImageClassification):
            return {"logits": self.model.classifier(x[:, 0])}  # the [CLS] token: (B, num_labels)
        out = {"last_hidden_state": x}
        if self.vit.pooler is not None:
            out["pooler_output"] = self.vit.pooler.activation(self.vit.pooler.dense(x[:, 0]))
        return out

    def _positions(self, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(1, 1 + gh*gw, C) position embeddings -> (1, 1 + h*w, C), bicubic, align_corners=False, in fp32."""
        C = pos.shape[-1]
        patches = pos[:, 1:].reshape(1, self.grid[0], self.grid[1], C).permute(0, 3, 1, 2)  # (1, C, gh, gw)
        patches = F.interpolate(patches.float(), size=(h, w), mode="bicubic", align_corners=False)
        patches = patches.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, C)  # (1, h*w, C)
        return torch.cat((pos[:, :1], patches), dim=1)

    def _attention(self, attention: nn.Module, y: torch.Tensor) -> torch.Tensor:
        B, N, C = y.shape
        qkv, heads = attention.attention, (B, N, self.heads, C // self.heads)
        q = qkv.query(y).reshape(heads).transpose(1, 2)  # (B, heads, N, head_dim)
        k = qkv.key(y).reshape(heads).transpose(1, 2)  # (B, heads, N, head_dim)
        v = qkv.value(y).reshape(heads).transpose(1, 2)  # (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return attention.output.dense(out)


class Preprocess(nn.Module):
    """Prepends the processor's rescale + normalize: uint8 RGB images (B, H, W, 3), already resized, -> `graph`.

    `(x * rescale_factor - mean) / std` is folded into one multiply-add per channel.
    """

    def __init__(self, graph: nn.Module, scale: Sequence[float], shift: Sequence[float], dtype: torch.dtype) -> None:
        super().__init__()
        # not `self.graph`: torch.export's unlifting confuses a submodule of that name with GraphModule.graph
        self.inner, self.output_names, self.compute_dtype = graph, graph.output_names, dtype
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift  # (B, 3, H, W)
        return self.inner(x.to(self.compute_dtype))


# ---------------------------------------------------------------------------------------------------------------
# What an export needs to know about the model: family, outputs, processor, sizes, shapes to check.


@dataclass
class Check:
    """One verification run: input shape and, per output, the largest absolute and relative difference."""

    shape: list[int]
    max_abs_diff: float
    max_rel_diff: float
    outputs: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportReport:
    """What `export_onnx` / `export_torch` wrote and how well it matched PyTorch.

    `max_rel_diff` is max |exported - torch| / max |torch| over every output and check; `verified` is False when
    the check was skipped (no onnxruntime, or `verify=False`), and `skipped` says why.
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
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines: the file, its signature, the check."""
        shape = "x".join(str(d) for d in self.input_shape)
        lines = [
            f"wrote {self.path} ({self.format}, {self.size_bytes / 1e6:.1f} MB, {self.dtype}"
            + (f", opset {self.opset}" if self.opset else "") + (f", {self.quantize} int8" if self.quantize else "")
            + f") in {self.export_seconds:.1f}s",
            f"  {self.input_name} [{shape}] -> {', '.join(self.output_names)}",
        ]  # fmt: skip
        for name, (lo, hi) in self.dynamic_ranges.items():
            lines.append(f"  {name}: {lo} .. {'any' if hi is None else hi}")
        if self.verified:
            for c in self.checks:
                lines.append(f"  check {'x'.join(map(str, c.shape))}: max abs diff {c.max_abs_diff:.3g}, "
                             f"relative {c.max_rel_diff:.3g}")  # fmt: skip
            lines.append(f"  largest relative difference {self.max_rel_diff:.3g} (tolerance {self.tolerance:g})")
        else:
            lines.append(f"  not verified: {self.skipped}")
        if self.quantization:
            q = self.quantization
            lines.append(f"  int8 vs fp32 on {q['images']} {q['source']}: top-1 agreement {q['top1_agreement']:.0%}, "
                         f"max logit drift {q['max_logit_drift']:.3g} (relative {q['max_rel_drift']:.3g})")  # fmt: skip
        return "\n".join(lines)


def _model_type(model: nn.Module) -> str:
    if not isinstance(model, SUPPORTED_CLASSES):
        names = ", ".join(c.__name__ for c in SUPPORTED_CLASSES)
        raise ValueError(f"cannot export {type(model).__name__}: export supports {names}")
    return model.config.model_type


def _processor_size(processor: Any, model: nn.Module) -> tuple[int, int]:
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    return _pair(model.config.image_size)


def _resolve_size(model: nn.Module, image_size: int | Sequence[int] | None, processor: Any) -> tuple[int, int]:
    """The example (and, for a static export, the fixed) input size; ViT's must be a multiple of the patch."""
    size = _pair(image_size) if image_size is not None else _processor_size(processor, model)
    if min(size) <= 0:
        raise ValueError(f"image size must be positive, got {size[0]}x{size[1]}")
    if model.config.model_type == "vit":
        ph, pw = _pair(model.config.patch_size)
        if size[0] % ph or size[1] % pw:
            near = f"{size[0] // ph * ph or ph}x{size[1] // pw * pw or pw}"
            raise ValueError(f"ViT cannot be exported at {size[0]}x{size[1]}: height and width must be multiples of "
                             f"the patch size {ph}x{pw} (e.g. {near})")  # fmt: skip
    return size


def _check_shapes(model: nn.Module, size: tuple[int, int], batch: int, dynamic_batch: bool, dynamic_size: bool,
                  min_side: int = 1) -> list[tuple[int, int, int]]:  # fmt: skip
    """(batch, height, width) of the verification runs: the export size, plus other batches and sizes when they
    are dynamic (odd and non-square for PVTv2, other multiples of the patch for ViT)."""
    H, W = size
    batches = [1, 3, 2] if dynamic_batch else [batch] * 3
    if not dynamic_size:
        sizes = [(H, W)] * 3
    elif model.config.model_type == "vit":
        ph, pw = _pair(model.config.patch_size)
        sizes = [(H, W), (H + 2 * ph, W), (max(ph, H - ph), W + 3 * pw)]
    else:
        sizes = [(H, W), (H - H // 7 | 1, W + W // 7 | 1), (H // 2 + 3, W // 2 + 5)]  # 224: 193x257, 115x117
        sizes = [(max(h, min_side), max(w, min_side)) for h, w in sizes]
    return list(dict.fromkeys((b, h, w) for b, (h, w) in zip(batches, sizes)))


def _preprocess_constants(processor: Any) -> tuple[list[float], list[float]]:
    """Per-channel (scale, shift) with `x * scale + shift == ((x * rescale_factor) - mean) / std`."""
    rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
    mean = np.broadcast_to(np.asarray(processor.image_mean, dtype=np.float64), (3,))
    std = np.broadcast_to(np.asarray(processor.image_std, dtype=np.float64), (3,))
    if not processor.do_normalize:
        mean, std = np.zeros(3), np.ones(3)
    return (rescale / std).tolist(), (-mean / std).tolist()


def _metadata(model: nn.Module, processor: Any, input_name: str, output_names: list[str], size: tuple[int, int],
              dynamic_batch: bool, dynamic_size: bool, dtype: str, with_preprocessing: bool,
              quantize: str | None) -> dict[str, str]:  # fmt: skip
    """The `metadata_props` (all strings; JSON where structured) a server needs to use the file on its own."""
    from . import __version__

    config = model.config
    meta = {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "input_names": json.dumps([input_name]),
        "output_names": json.dumps(output_names),
        "input_format": "uint8 RGB images (batch, height, width, 3), resized to `size`; rescale and normalize run "
                        "inside the graph" if with_preprocessing else
                        f"{dtype} pixel values (batch, 3, height, width): RGB, resized to `size`, rescaled and "
                        "normalized with `image_mean` / `image_std`",
        "size": json.dumps({"height": size[0], "width": size[1]}),
        "dynamic_batch": json.dumps(dynamic_batch),
        "dynamic_size": json.dumps(dynamic_size),
        "resample": str(int(processor.resample)),
        "resample_name": _RESAMPLE_NAMES.get(int(processor.resample), str(processor.resample)),
        "do_rescale": json.dumps(bool(processor.do_rescale)),
        "rescale_factor": repr(float(processor.rescale_factor)),
        "do_normalize": json.dumps(bool(processor.do_normalize)),
        "image_mean": json.dumps(list(np.broadcast_to(np.asarray(processor.image_mean, dtype=float), (3,)))),
        "image_std": json.dumps(list(np.broadcast_to(np.asarray(processor.image_std, dtype=float), (3,)))),
        "preprocessor_config": json.dumps(processor.to_dict(), sort_keys=True),
        "config": config.to_json_string() if hasattr(config, "to_json_string") else json.dumps(config.to_dict()),
        "dtype": dtype,
        "quantization": f"{quantize}-int8" if quantize else "none",
        "producer": f"pvtkit {__version__}",
    }  # fmt: skip
    if output_names == ["logits"] and getattr(config, "num_labels", 0) > 0:
        meta["id2label"] = json.dumps({str(k): v for k, v in sorted(config.id2label.items())}, ensure_ascii=False)
    if config.model_type == "vit":
        meta["patch_size"] = json.dumps(list(_pair(config.patch_size)))
    return meta


def _reference(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own forward (not the export graph), by output name."""
    kwargs = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}
    with torch.inference_mode():
        out = model(pixel_values, return_dict=True, **kwargs)
    if isinstance(model, (PvtV2ForImageClassification, ViTForImageClassification)):
        return {"logits": out.logits}
    if isinstance(model, PvtV2Backbone):
        return dict(zip(model.config.out_features, out.feature_maps))
    result = {"last_hidden_state": out.last_hidden_state}
    if getattr(out, "pooler_output", None) is not None:
        result["pooler_output"] = out.pooler_output
    return result


def _compare(shape: Sequence[int], got: dict[str, np.ndarray], ref: dict[str, torch.Tensor]) -> Check:
    per_output, abs_max, rel_max = {}, 0.0, 0.0
    for name, expected in ref.items():
        expected = expected.double().numpy()
        actual = np.asarray(got[name], dtype=np.float64)
        if actual.shape != expected.shape:
            raise ExportError(f"output {name!r} has shape {actual.shape} at input {list(shape)}, "
                              f"PyTorch gives {expected.shape}")  # fmt: skip
        diff = float(np.abs(actual - expected).max()) if actual.size else 0.0
        if not np.isfinite(actual).all():
            diff = math.inf
        rel = diff / max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-12)
        per_output[name] = rel
        abs_max, rel_max = max(abs_max, diff), max(rel_max, rel)
    return Check(list(shape), abs_max, rel_max, per_output)


class _Inputs:
    """Seeded random inputs of a given shape: normalized-looking floats, or uint8 images for preprocessing."""

    def __init__(self, with_preprocessing: bool, scale: Sequence[float], shift: Sequence[float]) -> None:
        self.with_preprocessing = with_preprocessing
        self.scale = torch.tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.shift = torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1)

    def make(self, b: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the exported file takes, the fp32 pixel values the model takes)."""
        gen = torch.Generator().manual_seed(seed)
        if not self.with_preprocessing:
            x = torch.randn(b, 3, h, w, generator=gen)
            return x, x
        images = torch.randint(0, 256, (b, h, w, 3), generator=gen, dtype=torch.uint8)
        return images, images.permute(0, 3, 1, 2).float() * self.scale + self.shift


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's chatter (torchvision-op notices, deprecation and tracer warnings) unless -v."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch._export", "torch.export",
             "torch.fx.experimental.symbolic_shapes", "")  # "": onnxruntime.quantization logs to the root logger
    noisy = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in noisy]
    verbose = logger.isEnabledFor(logging.INFO)  # `pvtkit -v`
    try:
        if not verbose:
            for lg in noisy:
                lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A temporary directory beside `path` to write into; removed on exit, whatever happens."""
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.exporting-"))
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, path: Path) -> None:
    """Move the staged files into place: external-data files first, the model file last (each an atomic rename)."""
    main = staging / path.name
    for f in sorted(staging.iterdir()):
        if f != main:
            os.replace(f, path.parent / f.name)
    os.replace(main, path)


def _prepare(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """(the model in `dtype` for export, the fp32 model for reference), copying only when the dtype differs."""
    params = list(model.parameters())
    on_cpu_fp32 = not params or (params[0].dtype == torch.float32 and params[0].device.type == "cpu")
    reference = model if on_cpu_fp32 else copy.deepcopy(model).float().cpu()  # exports trace on the CPU
    exported = reference if dtype == torch.float32 else copy.deepcopy(reference).to(dtype)
    return exported.eval(), reference.eval()


def _graph(model: nn.Module, size: tuple[int, int], dynamic_size: bool, nchw_mlp: bool) -> nn.Module:
    if model.config.model_type == "vit":
        return ViTExportGraph(model, interpolate=dynamic_size or size != _pair(model.config.image_size)).eval()
    return PvtV2ExportGraph(model, nchw_mlp=nchw_mlp).eval()


def _dynamic_shapes(model: nn.Module, dynamic_batch: bool, dynamic_size: bool, with_preprocessing: bool,
                    symbolic_names: bool) -> dict[int, Any]:  # fmt: skip
    """The input's dynamic dimensions: names for the ONNX exporter, `torch.export.Dim`s for torch.export."""
    h_axis, w_axis = (1, 2) if with_preprocessing else (2, 3)
    Dim = torch.export.Dim
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = "batch" if symbolic_names else Dim("batch", min=1, max=MAX_BATCH)
    if dynamic_size:
        if symbolic_names:
            dims[h_axis], dims[w_axis] = "height", "width"
        else:
            dims[h_axis], dims[w_axis] = Dim.DYNAMIC, Dim.DYNAMIC
    return dims


def _input_shape(dynamic_batch: bool, dynamic_size: bool, batch: int, size: tuple[int, int],
                 with_preprocessing: bool) -> list[Any]:  # fmt: skip
    b = "batch" if dynamic_batch else batch
    h, w = ("height", "width") if dynamic_size else size
    return [b, h, w, 3] if with_preprocessing else [b, 3, h, w]


def _validate_common(batch_size: int, dynamic_batch: bool) -> None:
    if not dynamic_batch and int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


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
    use_export_graph: bool = True,
) -> ExportReport:
    """Export `model` to one ONNX file, check it in ONNX Runtime, and return what was written and measured.

    Args:
        model: A PVTv2 (`ForImageClassification`, `Model`, `Backbone`) or ViT (`ForImageClassification`, `Model`).
        path: The `.onnx` file to write (atomically; a model over 2 GB gets a `.data` file beside it).
        opset: ONNX opset, 18 to 23; 20 (the default) is the first with a native Gelu, which ORT runs fastest.
        dtype: "fp32" or "fp16" (weights and input; checked against the fp32 model with a looser tolerance).
        dynamic_batch: Any batch size (else `batch_size` only).
        dynamic_size: Any height and width: any size for PVTv2, any multiple of the patch size for ViT (the
            position embeddings are interpolated in the graph). Else `image_size` only.
        batch_size: The fixed batch size when `dynamic_batch` is False.
        image_size: Example (and, when not dynamic, fixed) size; default: the processor's size.
        with_preprocessing: The graph takes uint8 RGB images `(batch, height, width, 3)` (NHWC, as decoders give
            them), already resized to `size`, and does the processor's rescale + normalize itself.
        processor: The image processor whose mean/std/size go into the metadata (default: the family's).
        quantize: None, or "dynamic": ONNX Runtime's dynamic int8 quantization of the weights; the drift against
            fp32 on real photos is measured and reported (not bounded).
        verify: Run the file in ONNX Runtime (when installed) at several shapes against the model's own forward
            and fail, writing nothing, if the largest relative difference is above `tolerance`.
        tolerance: Max |onnx - torch| / max |torch| per output; default 1e-4 (fp32), 1e-2 (fp16).
        calibration_images: Images (paths, PIL, arrays) for the quantization drift; default: scikit-image's photos
            when installed, else seeded random images.
        use_export_graph: False traces the model's own forward instead of the export graph (for comparison
            only: slower in ORT, and Linear SRA is then right only at the example size).

    Returns:
        An `ExportReport` (path, signature, checks, largest difference, metadata, quantization drift).

    Raises:
        MissingDependencyError: onnx / onnxscript (or onnxruntime, for `quantize`) is not installed.
        ValueError: Options the model cannot be exported with (opset, dtype, a ViT size that is not a multiple
            of the patch, an unsupported model class).
        ExportError: The file does not match PyTorch within the tolerance (nothing is written).
        OSError: The output cannot be written.
    """
    started = time.perf_counter()
    model_type = _model_type(model)
    if int(opset) not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} is not supported: pvtkit exports opsets {SUPPORTED_OPSETS[0]} to "
                         f"{SUPPORTED_OPSETS[-1]} ({DEFAULT_OPSET} recommended: native Gelu)")  # fmt: skip
    if dtype not in ONNX_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported for ONNX: expected fp32 or fp16")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize {quantize!r} is not supported: expected one of {', '.join(QUANTIZE_MODES)}")
    if quantize and ONNX_DTYPES[dtype] != torch.float32:
        raise ValueError("int8 quantization starts from the fp32 graph: use dtype fp32 with quantize")
    _validate_common(batch_size, dynamic_batch)
    processor = processor if processor is not None else default_image_processor(model)
    size = _resolve_size(model, image_size, processor)
    path = Path(path)
    torch_dtype = ONNX_DTYPES[dtype]
    dtype = "fp32" if torch_dtype == torch.float32 else "fp16"
    tolerance = tolerance if tolerance is not None else (FP32_TOLERANCE if dtype == "fp32" else FP16_TOLERANCE)
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    ort = None
    if verify or quantize:
        try:
            ort = require("onnxruntime", "checking the ONNX file" if not quantize else "int8 quantization")
        except MissingDependencyError:
            if quantize:
                raise
            logger.warning("onnxruntime is not installed, so the file is not checked: %s", INSTALL_HINT)

    with _eval_mode(model), _staging(path) as staging:
        exported, reference = _prepare(model, torch_dtype)
        # int8 quantization applies to MatMul/Gemm: keep the MLP's Linear layers as such when quantizing
        graph = _graph(exported, size, dynamic_size, not quantize) if use_export_graph else _ModelForward(exported)
        scale, shift = _preprocess_constants(processor)
        module = Preprocess(graph, scale, shift, torch_dtype) if with_preprocessing else graph
        input_name = "images" if with_preprocessing else "pixel_values"
        output_names = list(graph.output_names)
        inputs = _Inputs(with_preprocessing, scale, shift)
        b0 = 2 if dynamic_batch else int(batch_size)
        example, _ = inputs.make(b0, *size, seed=0)
        example = example if with_preprocessing else example.to(torch_dtype)
        dynamic = _dynamic_shapes(model, dynamic_batch, dynamic_size, with_preprocessing, symbolic_names=True)
        staged = staging / path.name
        logger.info("exporting %s to ONNX (opset %d, %s)", type(model).__name__, opset, dtype)
        with _quiet_exporter(), torch.no_grad():
            try:
                program = torch.onnx.export(
                    module, (example,), dynamo=True, input_names=[input_name], output_names=output_names,
                    dynamic_shapes={input_name: dynamic} if dynamic else None, opset_version=int(opset),
                    optimize=True, verbose=False, external_data=False,
                )  # fmt: skip
            except Exception as e:  # the exporter raises many types; one line says what failed
                raise ExportError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0]}") from e
        metadata = _metadata(model, processor, input_name, output_names, size, dynamic_batch, dynamic_size, dtype,
                             with_preprocessing, quantize)  # fmt: skip
        for key, value in metadata.items():
            program.model.metadata_props[key] = value
        program.model.producer_name = "pvtkit"
        program.save(staged)
        report = ExportReport(
            path=str(path), format="onnx", model_type=model_type, architecture=type(model).__name__, dtype=dtype,
            input_name=input_name, input_shape=_input_shape(dynamic_batch, dynamic_size, b0, size,
                                                            with_preprocessing),
            output_names=output_names, opset=int(opset), with_preprocessing=with_preprocessing, quantize=quantize,
            tolerance=tolerance, metadata=metadata,
        )  # fmt: skip
        shapes = _check_shapes(model, size, int(batch_size), dynamic_batch, dynamic_size)
        if ort is not None and verify:
            _verify_onnx(ort, staged, reference, inputs, shapes, input_name, output_names, tolerance, report)
        elif not verify:
            report.skipped = "verify=False"
        else:
            report.skipped = f"onnxruntime is not installed ({INSTALL_HINT})"
        if quantize:
            _quantize(ort, staged, staging, reference, processor, size, with_preprocessing, input_name,
                      calibration_images, report)  # fmt: skip
        report.size_bytes = sum(f.stat().st_size for f in staging.iterdir())
        _publish(staging, path)
    report.export_seconds = time.perf_counter() - started
    return report


class _ModelForward(nn.Module):
    """The model's own forward with named outputs (what a plain `torch.onnx.export(model)` traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        probe = PvtV2ExportGraph(model) if model.config.model_type == "pvt_v2" else ViTExportGraph(model, False)
        self.output_names = probe.output_names

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        kwargs = {"interpolate_pos_encoding": True} if self.model.config.model_type == "vit" else {}
        out = self.model(pixel_values, return_dict=True, **kwargs)
        if "logits" in self.output_names:
            return {"logits": out.logits}
        if isinstance(self.model, PvtV2Backbone):
            return dict(zip(self.output_names, out.feature_maps))
        return {name: getattr(out, name) for name in self.output_names}


def ort_session(ort: Any, path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimizations (what a deployment gets)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _verify_onnx(ort: Any, file: Path, reference: nn.Module, inputs: _Inputs, shapes: list[tuple[int, int, int]],
                 input_name: str, output_names: list[str], tolerance: float, report: ExportReport) -> None:  # fmt: skip
    try:
        session = ort_session(ort, file)
    except Exception as e:
        raise ExportError(f"ONNX Runtime cannot load the exported file: {str(e).splitlines()[0]}") from e
    feed_dtype = np.float16 if report.dtype == "fp16" else np.float32
    for seed, (b, h, w) in enumerate(shapes):
        feed, pixels = inputs.make(b, h, w, seed=seed + 1)
        array = feed.numpy() if inputs.with_preprocessing else feed.numpy().astype(feed_dtype)
        try:
            got = dict(zip(output_names, session.run(output_names, {input_name: array})))
        except Exception as e:
            raise ExportError(f"ONNX Runtime failed at input {list(feed.shape)}: {str(e).splitlines()[0]}") from e
        check = _compare(list(feed.shape), got, _reference(reference, pixels))
        report.checks.append(check)
        logger.info("check %s: max abs diff %.3g, relative %.3g", list(feed.shape), check.max_abs_diff,
                    check.max_rel_diff)  # fmt: skip
    report.max_abs_diff = max(c.max_abs_diff for c in report.checks)
    report.max_rel_diff = max(c.max_rel_diff for c in report.checks)
    report.verified = True
    if not report.max_rel_diff <= tolerance:
        worst = max(report.checks, key=lambda c: c.max_rel_diff)
        raise ExportError(f"the ONNX file differs from PyTorch by {report.max_rel_diff:.3g} (relative, at input "
                          f"{worst.shape}), above the tolerance {tolerance:g}; nothing was written")  # fmt: skip


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
        image = image.resize((size[1], size[0]), resample=int(processor.resample))
        images.append(np.asarray(image))
    return images, "scikit-image photos"


def _quantize(ort: Any, staged: Path, staging: Path, reference: nn.Module, processor: Any, size: tuple[int, int],
              with_preprocessing: bool, input_name: str, images: Sequence[Any] | None,
              report: ExportReport) -> None:  # fmt: skip
    """Replace the staged fp32 file by its dynamic-int8 version and measure the drift on real images."""
    quantization = require("onnxruntime.quantization", "int8 quantization")
    fp32 = staging / f"fp32-{staged.name}"
    os.replace(staged, fp32)
    with _quiet_exporter():
        quantization.quantize_dynamic(fp32, staged, weight_type=quantization.QuantType.QInt8,
                                      op_types_to_quantize=["MatMul", "Gemm"])  # fmt: skip
    _copy_metadata(fp32, staged)
    fp32.unlink()
    if images is None:
        arrays, source = sample_photos(processor, size)
    else:
        from .processing import load_image

        arrays = [np.asarray(load_image(im).convert("RGB").resize((size[1], size[0]))) if not isinstance(im, np.ndarray)
                  else im for im in images]  # fmt: skip
        source = "given images"
    batch = np.stack(arrays)  # (n, H, W, 3) uint8
    pixels = processor(list(batch), return_tensors="pt", do_resize=False, input_data_format="channels_last")
    pixels = pixels["pixel_values"].float()
    feed = batch if with_preprocessing else pixels.numpy()
    session = ort_session(ort, staged)
    got = session.run(None, {input_name: feed})[0]
    expected = _reference(reference, pixels)[report.output_names[0]].numpy()
    drift = float(np.abs(got - expected).max())
    q: dict[str, Any] = {"images": len(arrays), "source": source, "max_logit_drift": drift,
                         "max_rel_drift": drift / max(float(np.abs(expected).max()), 1e-12)}  # fmt: skip
    if report.output_names == ["logits"] and expected.ndim == 2 and expected.shape[1] > 1:
        q["top1_agreement"] = float((got.argmax(1) == expected.argmax(1)).mean())
    else:
        q["top1_agreement"] = float("nan")
    report.quantization = q


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(target))
    src = onnx.load(str(source), load_external_data=False)
    existing = {p.key for p in model.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in existing:
            model.metadata_props.add(key=prop.key, value=prop.value)
    for prop in model.metadata_props:
        if prop.key == "quantization":
            prop.value = "dynamic-int8"
    onnx.save(model, str(target))


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
    dynamic ranges are in `report.dynamic_ranges`: PVTv2 needs its last stage's map to be at least 2x2 (33 pixels
    with the standard strides); ViT takes multiples of the patch size.

    Raises:
        ValueError: Options the model cannot be exported with.
        ExportError: The program does not match the model within the tolerance (nothing is written).
        OSError: The output cannot be written.
    """
    started = time.perf_counter()
    model_type = _model_type(model)
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: expected fp32, fp16 or bf16")
    _validate_common(batch_size, dynamic_batch)
    torch_dtype = TORCH_DTYPES[dtype]
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[torch_dtype]
    tolerance = tolerance if tolerance is not None else (FP32_TOLERANCE if dtype == "fp32" else FP16_TOLERANCE * 5)
    processor = processor if processor is not None else default_image_processor(model)
    size = _resolve_size(model, image_size, processor)
    path = Path(path)
    with _eval_mode(model), _staging(path) as staging:
        exported, reference = _prepare(model, torch_dtype)
        graph = _graph(exported, size, dynamic_size, False)
        scale, shift = _preprocess_constants(processor)
        module = Preprocess(graph, scale, shift, torch_dtype) if with_preprocessing else graph
        input_name = "images" if with_preprocessing else "pixel_values"
        inputs = _Inputs(with_preprocessing, scale, shift)
        b0 = 2 if dynamic_batch else int(batch_size)
        example, _ = inputs.make(b0, *size, seed=0)
        example = example if with_preprocessing else example.to(torch_dtype)
        dynamic = _dynamic_shapes(model, dynamic_batch, dynamic_size, with_preprocessing, symbolic_names=False)
        with _quiet_exporter(), torch.no_grad():
            try:
                program = torch.export.export(module, (example,), dynamic_shapes={input_name: dynamic or None})
            except Exception as e:
                raise ExportError(f"torch.export of {type(model).__name__} failed: {str(e).splitlines()[0]}") from e
        metadata = _metadata(model, processor, input_name, list(graph.output_names), size, dynamic_batch,
                             dynamic_size, dtype, with_preprocessing, None)  # fmt: skip
        staged = staging / path.name
        torch.export.save(program, staged, extra_files={"pvtkit.json": json.dumps(metadata)})
        report = ExportReport(
            path=str(path), format="torch.export", model_type=model_type, architecture=type(model).__name__,
            dtype=dtype, input_name=input_name,
            input_shape=_input_shape(dynamic_batch, dynamic_size, b0, size, with_preprocessing),
            output_names=list(graph.output_names), with_preprocessing=with_preprocessing, tolerance=tolerance,
            metadata=metadata, dynamic_ranges=_ranges(model, dynamic_batch, dynamic_size),
        )  # fmt: skip
        if verify:
            _verify_torch(program, reference, inputs, model, size, batch_size, dynamic_batch, dynamic_size,
                          report, torch_dtype)  # fmt: skip
        else:
            report.skipped = "verify=False"
        report.size_bytes = staged.stat().st_size
        _publish(staging, path)
    report.export_seconds = time.perf_counter() - started
    return report


MAX_BATCH = 1 << 16  # upper bound of the torch.export program's batch dimension


def torch_export_min_side(model: nn.Module) -> int:
    """The smallest height/width a PVTv2 (ViT: one patch) `torch.export` program accepts.

    torch.export traces PyTorch's convolutions with guards that no feature map is a single row or column (a
    size-1 dimension changes the memory-format decision), so every stage's map, and SRA's reduced copy of it,
    must be at least 2 long: 61 pixels for the standard PVTv2 strides and reduction ratios, 33 for linear SRA.
    The ONNX file has no such limit.
    """
    c = model.config
    if c.model_type == "vit":
        return max(_pair(c.patch_size))
    for side in range(1, 1 << 16):
        n, fits = side, True
        for k, stride, r in zip(c.patch_sizes, c.strides, c.sr_ratios):
            n = (n + 2 * (k // 2) - k) // stride + 1
            reduced = n if c.linear_attention or r == 1 else max(n, r) // r
            if n < 2 or reduced < 2:
                fits = False
                break
        if fits:
            return side
    raise ValueError("no input size fits this PVTv2 configuration")


def _ranges(model: nn.Module, dynamic_batch: bool, dynamic_size: bool) -> dict[str, list[int | None]]:
    """The accepted range of each dynamic dimension of a torch.export program (None: no upper bound)."""
    ranges: dict[str, list[int | None]] = {"batch": [1, MAX_BATCH]} if dynamic_batch else {}
    if dynamic_size:
        low = torch_export_min_side(model)
        ranges["height"] = ranges["width"] = [low, None]
    return ranges


def _verify_torch(program: Any, reference: nn.Module, inputs: _Inputs, model: nn.Module, size: tuple[int, int],
                  batch_size: int, dynamic_batch: bool, dynamic_size: bool, report: ExportReport,
                  dtype: torch.dtype) -> None:  # fmt: skip
    """Run the program (as `torch.export.load(path).module()` gives it back, guards included) at several shapes."""
    loaded = program.module()
    shapes = _check_shapes(model, size, int(batch_size), dynamic_batch, dynamic_size, torch_export_min_side(model))
    for seed, (b, h, w) in enumerate(shapes):
        feed, pixels = inputs.make(b, h, w, seed=seed + 1)
        feed = feed if inputs.with_preprocessing else feed.to(dtype)
        try:
            with torch.inference_mode():
                got = {k: v.float().numpy() for k, v in loaded(feed).items()}
        except Exception as e:
            raise ExportError(f"the exported program failed at input {list(feed.shape)}: "
                              f"{str(e).splitlines()[0]}") from e  # fmt: skip
        report.checks.append(_compare(list(feed.shape), got, _reference(reference, pixels)))
    report.max_abs_diff = max(c.max_abs_diff for c in report.checks)
    report.max_rel_diff = max(c.max_rel_diff for c in report.checks)
    report.verified = True
    if not report.max_rel_diff <= report.tolerance:
        raise ExportError(f"the exported program differs from PyTorch by {report.max_rel_diff:.3g} (relative), "
                          f"above the tolerance {report.tolerance:g}; nothing was written")  # fmt: skip
