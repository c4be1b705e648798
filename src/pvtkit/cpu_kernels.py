"""The CPU fast paths of the eager forward, and `choose`, the one function that decides which of them runs.

The models compute their heavy ops through the functions here (`linear`, `linears`, `conv`, `conv_act`,
`window_conv`, `sdpa`, `in_pieces`). Each asks `choose(x)` what the current call allows and runs either the plain
PyTorch op or a faster formulation of the same maths:

* **bf16 emulation**: under CPU bf16 autocast on a CPU without bf16 matrix instructions (no AVX512-BF16 / AMX,
  e.g. AVX2-only x86), PyTorch's bf16 kernels fall back to slow generic loops (a depth-wise conv runs one channel at
  a time), 10-20x slower than fp32. The ops then compute what a bf16 kernel computes, the product of bf16-rounded
  operands accumulated in fp32 and rounded to a bf16 result, on the fp32 units. Outputs are bf16 as under
  autocast; only the speed differs. Applies with and without autograd.
* **pieces**: in CPU inference the MLP runs a few images at a time, so its hidden activations (the model's largest
  tensors: B0 at batch 32 has 100 MB per stage-1 block) stay near `small_bytes`: allocations that big come fresh
  from the OS and are page-faulted in on every call; small ones reuse one block of memory and stay in cache.
* **fused** (fp32 CPU inference only): the depth-wise conv and the exact GELU in one oneDNN call (the fused kernel
  Inductor uses: the largest tensor is written once instead of twice), and the spatial-reduction conv (kernel =
  stride) as one matmul over gathered windows on inputs up to `small_bytes` (no oneDNN per-call layout work:
  0.43 -> 0.11 ms per stage-1 call of B0 at batch 1); and Deformable DETR's bilinear sampling as one embedding
  bag (`deformable_sampling`: 7x faster than `grid_sample` at 800x1333).
* **recompute** (fp32 CPU training): PVTv2's MLP runs in pieces and recomputes its hidden activations in its
  backward instead of storing them (`conv_mlp`): they are the model's largest tensors, and tensors that big are
  page-faulted in afresh on every step (PVTv2-B0 at batch 32 on the AVX-512 EPYC: 26.4 img/s and 246 MiB of
  training memory above the model; transformers 14.7 img/s and 1002 MiB).
* **nchw_mlp**: while exporting to ONNX, PVTv2's MLP runs on an NCHW map with its Linear layers as 1x1 convs, the
  layout ONNX Runtime runs fastest (see the PVTv2 MLP).

Traced, compiled and exported forwards take the plain maths (symbolic sizes, no Python loop over a symbolic
batch); so do non-CPU devices and autograd under bf16 autocast or a torch.func transform, except for the bf16
emulation. `flags(...)` changes the settings for a block of code (`enabled=False`: the plain reference maths
everywhere) and `record()` counts which fast paths ran: tests and users choose and see paths without patching
anything.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the fast paths may do (see the module docstring).

    Args:
        enabled: False runs the plain reference maths everywhere (no fast path at all).
        small_bytes: Size of the pieces the MLP runs in, and the largest input the SR matmul takes (bytes).
        native_bf16: Whether the CPU has bf16 matrix instructions; None asks oneDNN. False forces the emulation.
        onnx_nchw_mlp: Export PVTv2's MLP to ONNX in NCHW (faster in ONNX Runtime); False keeps its Linear layers
            as MatMul/Gemm (what int8 quantization rewrites).
        recompute_bytes: fp32 CPU training recomputes an MLP's hidden activations in its backward when they
            take more than this (bytes, whole batch); smaller ones are stored, as usual.
        keep_width: ... except the first Linear's output, which is stored when the MLP's input is at least this
            wide: recomputing it costs 2 x width FLOPs per value, storing it a fresh page per 1024 values (~1.4 us
            on the AVX-512 EPYC), even near width 100 (PVTv2-B2 training: +6% with 128).
    """

    enabled: bool = True
    small_bytes: int = 4 << 20
    recompute_bytes: int = 8 << 20
    keep_width: int = 128
    native_bf16: bool | None = None
    onnx_nchw_mlp: bool = True


@dataclasses.dataclass(frozen=True)
class Paths:
    """The fast paths one call may take, and why (`choose`'s answer)."""

    why: str
    symbolic: bool = False
    emulate_bf16: bool = False
    pieces: bool = False
    fused: bool = False
    nchw_mlp: bool = False
    recompute: bool = False


_settings = Settings()
_recording: collections.Counter | None = None

_OFF = Paths("fast paths are switched off (cpu_kernels.flags(enabled=False))")
_TRACED = Paths("traced, compiled or exported: the plain maths, with symbolic sizes", symbolic=True)
_TRACED_BF16 = Paths("traced or compiled under emulated bf16 autocast", symbolic=True, emulate_bf16=True)
_ONNX = Paths(
    "exporting to ONNX: the plain maths with symbolic sizes, the PVTv2 MLP in NCHW", symbolic=True, nchw_mlp=True
)
_DEVICE = Paths("not on the CPU: the plain maths")
_GRAD = Paths("fp32 CPU training: the MLP in pieces, its hidden activations recomputed in the backward", recompute=True)
_FUNC = Paths("autograd under a torch.func transform (grad, vmap, ...): the whole batch, unfused")
_GRAD_BF16 = Paths("autograd under emulated bf16 autocast: bf16 maths on fp32 units", emulate_bf16=True)
_INFER = Paths("CPU inference in a low-precision dtype: the MLP in pieces", pieces=True)
_INFER_BF16 = Paths(
    "CPU inference under emulated bf16 autocast: bf16 maths on fp32 units, the MLP in pieces",
    emulate_bf16=True,
    pieces=True,
)
_INFER_FP32 = Paths(
    "fp32 CPU inference: the MLP in pieces, fused conv + GELU, SR conv as a matmul, deformable sampling gathered",
    pieces=True,
    fused=True,
)


def settings() -> Settings:
    """The settings in force."""
    return _settings


def configure(**changes: Any) -> Settings:
    """Change the settings for the rest of the process (fields of `Settings`); returns the previous ones."""
    global _settings
    previous, _settings = _settings, dataclasses.replace(_settings, **changes)
    return previous


@contextlib.contextmanager
def flags(**changes: Any) -> Iterator[Settings]:
    """Change the settings inside a `with` block, e.g. `with cpu_kernels.flags(enabled=False):` for the plain
    reference maths, or `flags(small_bytes=1)` for one image per MLP piece."""
    previous = configure(**changes)
    try:
        yield _settings
    finally:
        configure(**dataclasses.asdict(previous))


@contextlib.contextmanager
def record() -> Iterator[collections.Counter]:
    """Count the fast paths that run inside the block: `{"pieces": 4, "conv_gelu": 5, "sr_matmul": 4, ...}`."""
    global _recording
    outer, _recording = _recording, collections.Counter()
    try:
        yield _recording
    finally:
        if outer is not None:
            outer.update(_recording)
        _recording = outer


def _ran(path: str) -> None:
    if _recording is not None:
        _recording[path] += 1


def tracing() -> bool:
    """Whether the forward is being traced, compiled or exported rather than run eagerly."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


@functools.cache
def _onednn_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: leave autocast alone


def _functorch_wrapped(x: torch.Tensor) -> bool:
    """Whether `x` is a torch.func transform's wrapper (custom autograd Functions need more to run under those)."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))
    except AttributeError:  # pragma: no cover - older or newer torch without the query: assume plain tensors
        return False


def native_bf16() -> bool:
    """Whether oneDNN has bf16 matmul/conv kernels for this CPU (AVX512-BF16, AMX, or Arm BF16)."""
    return _onednn_has_bf16() if _settings.native_bf16 is None else _settings.native_bf16


def choose(x: torch.Tensor) -> Paths:
    """Decide which fast paths a call on `x` may take, and say why (`choose(x).why`).

    In order: traced, compiled or exported -> symbolic sizes and no fast path (the MLP in NCHW while exporting to
    ONNX; bf16 emulation where it applies, as below); switched off -> none; not on the CPU -> none; under CPU bf16
    autocast without native bf16 kernels, for an fp32/bf16 `x` -> bf16 emulation; with autograd recording ->
    nothing else; CPU inference -> the MLP in pieces, and for an fp32 `x` outside emulation the fused paths. The
    size limits (`small_bytes`) are applied by the ops themselves.
    """
    s = _settings
    cpu = x.device.type == "cpu"
    emulate = (
        s.enabled
        and cpu
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and x.dtype in (torch.float32, torch.bfloat16)
        and not native_bf16()
    )
    if tracing():  # symbolic sizes even when switched off: no Python branch on a size
        if s.enabled and s.onnx_nchw_mlp and torch.onnx.is_in_onnx_export():
            return _ONNX
        return _TRACED_BF16 if emulate else _TRACED
    if not s.enabled:
        return _OFF
    if not cpu:
        return _DEVICE
    if torch.is_grad_enabled():
        if emulate:
            return _GRAD_BF16
        return _FUNC if _functorch_wrapped(x) else _GRAD
    if emulate:
        return _INFER_BF16
    return _INFER_FP32 if x.dtype == torch.float32 else _INFER


# ---- bf16 emulation: the matmul-like ops ----------------------------------------------------------------------


def rounded_bf16(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` rounded to bf16 and held in fp32 (exact: every bf16 value is an fp32 value)."""
    if t is None:
        return None
    return t.float() if t.dtype == torch.bfloat16 else t.to(torch.bfloat16).float()


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` (the module is called: what wraps or replaces it, a LoRA adapter, still applies)."""
    return layer(x) if not choose(x).emulate_bf16 else affine(x, layer.weight, layer.bias)


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, for a weight that is not one layer's (the decode head's folded projections)."""
    if not choose(x).emulate_bf16:
        return F.linear(x, weight, bias)
    _ran("bf16_emulation")
    with torch.autocast("cpu", enabled=False):
        return F.linear(rounded_bf16(x), rounded_bf16(weight), rounded_bf16(bias)).to(torch.bfloat16)


def linears(x: torch.Tensor, layers: Sequence[nn.Linear]) -> list[torch.Tensor]:
    """`[layer(x) for layer in layers]` (query, key, value). Under bf16 emulation the weights are rounded on every
    call anyway, so they are rounded into one matrix and run as one matmul. Otherwise separate matmuls: fusing them
    measured no faster on CPU in fp32, and keeps transformers' numbers."""
    if not choose(x).emulate_bf16:
        return [layer(x) for layer in layers]
    _ran("bf16_emulation")
    weight = rounded_bf16(torch.cat([layer.weight for layer in layers]))  # (sum of out, in)
    biases = [layer.bias for layer in layers]
    bias = None if any(b is None for b in biases) else rounded_bf16(torch.cat(biases))  # type: ignore[arg-type]
    with torch.autocast("cpu", enabled=False):
        fused = F.linear(rounded_bf16(x), weight, bias).to(torch.bfloat16)  # type: ignore[arg-type]
    return list(fused.split([layer.out_features for layer in layers], dim=-1))


def conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """`layer(x)` for an `nn.Conv2d`."""
    if not choose(x).emulate_bf16:
        return layer(x)
    _ran("bf16_emulation")
    weight, bias = rounded_bf16(layer.weight), rounded_bf16(layer.bias)
    with torch.autocast("cpu", enabled=False):
        return layer._conv_forward(rounded_bf16(x), weight, bias).to(torch.bfloat16)  # type: ignore[arg-type]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)`."""
    if not choose(q).emulate_bf16:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    _ran("bf16_emulation")
    q, k, v = rounded_bf16(q), rounded_bf16(k), rounded_bf16(v)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p).to(torch.bfloat16)  # type: ignore[arg-type]


# ---- fused and restated ops -----------------------------------------------------------------------------------


def _conv_pointwise_kernel() -> Any:
    """oneDNN's convolution with a fused pointwise epilogue (the op Inductor uses on CPU), or None if absent."""
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_CONV_POINTWISE = _conv_pointwise_kernel()


_EPILOGUES = {F.gelu: "gelu", F.relu: "relu", torch.sigmoid: "sigmoid"}  # oneDNN's names (exact GELU)


def conv_act(
    x: torch.Tensor, layer: nn.Conv2d, act: Callable[[torch.Tensor], torch.Tensor], norm: nn.BatchNorm2d | None = None
) -> torch.Tensor:
    """`act(norm(layer(x)))` (no norm: `act(layer(x))`). In fp32 CPU inference, for a GELU, ReLU or sigmoid, one
    oneDNN call: an eval-mode BatchNorm folded into the conv's weights and bias, the activation run in the conv's
    epilogue, so no extra pass over the map (no autograd: inference only)."""
    paths = choose(x)
    foldable = norm is None or (not norm.training and norm.running_mean is not None and norm.affine)
    if act in _EPILOGUES and _CONV_POINTWISE is not None and paths.fused and foldable:
        _ran(f"conv_{_EPILOGUES[act]}")
        c, weight, bias = layer, layer.weight, layer.bias
        if norm is not None:  # norm(y) = (y - mean) * scale + beta, scale = gamma / sqrt(var + eps)
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            weight = weight * scale[:, None, None, None]
            bias = ((bias if bias is not None else 0) - norm.running_mean) * scale + norm.bias
        return _CONV_POINTWISE(x, weight, bias, c.padding, c.stride, c.dilation, c.groups, _EPILOGUES[act], [], "none")
    out = conv(x, layer)
    if norm is not None:
        out = norm(out)
    if not paths.symbolic and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        # An elementwise op runs up to 2x slower on a channels-last map than on the same memory seen as a
        # contiguous (B, h, w, C) tensor (bf16 GELU on B0's stage-1 activations: 3.4 vs 1.8 ms): use that view.
        return act(out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return act(out)


def window_conv(x: torch.Tensor, h: int, w: int, layer: nn.Conv2d) -> torch.Tensor:
    """A conv whose kernel equals its stride (no padding) over `(B, h*w, C)` tokens -> `(B, h'*w', C')` tokens.

    A map smaller than one window is zero-padded to one window instead of failing (PVTv2's spatial reduction);
    the pad is symbolic when traced, so an exported graph keeps both cases. A remainder that does not fill a window
    is dropped, as the conv drops it. In fp32 CPU inference on inputs up to `small_bytes` the conv is computed as
    one matmul: it reads each window once, so gathering the windows into rows of `r*r*C` and multiplying by the
    kernel laid out the same way is the same sum, without oneDNN's per-call layout work (for large inputs gathering
    costs more than it saves: 3.2 -> 4.5 ms at B0 batch 32).
    """
    B, N, C = x.shape
    r, c = layer.stride[0], layer.stride[1]
    paths = choose(x)
    if paths.fused and x.numel() * x.element_size() <= _settings.small_bytes and h >= r and w >= c:
        _ran("sr_matmul")
        h2, w2 = h // r, w // c
        windows = x.view(B, h, w, C)[:, : h2 * r, : w2 * c].view(B, h2, r, w2, c, C).permute(0, 1, 3, 2, 4, 5)
        kernel = layer.weight.permute(0, 2, 3, 1).reshape(layer.out_channels, r * c * C)  # (out, r, c, in)
        return F.linear(windows.reshape(B, h2 * w2, r * c * C), kernel, layer.bias)  # (B, h2*w2, out)
    grid = x.transpose(1, 2).reshape(B, C, h, w)  # (B, C, h, w)
    if paths.symbolic:
        grid = F.pad(grid, (0, torch.sym_max(0, c - w), 0, torch.sym_max(0, r - h)))
    elif h < r or w < c:
        grid = F.pad(grid, (0, max(0, c - w), 0, max(0, r - h)))
    return conv(grid, layer).flatten(2).transpose(1, 2)  # (B, h'*w', C')


def in_pieces(fn: Callable[..., torch.Tensor], x: torch.Tensor, bytes_per_image: int, *args: Any) -> torch.Tensor:
    """`fn(x, *args)` for a batch `x`; in CPU inference a few images at a time, so that each piece's activations
    (`bytes_per_image` each) stay near `small_bytes` (see the module docstring), and the pieces concatenated."""
    if choose(x).pieces:
        rows = max(1, _settings.small_bytes // max(1, bytes_per_image))
        if rows < x.shape[0]:
            _ran("pieces")
            return torch.cat([fn(part, *args) for part in x.split(rows)])
    return fn(x, *args)


# ---- training: the conv MLP in pieces, recomputed in its backward ---------------------------------------------


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (transformers' "gelu_new", "gelu_pytorch_tanh", "gelu_fast")."""
    return F.gelu(x, approximate="tanh")


_GELUS = {F.gelu: "none", gelu_tanh: "tanh"}  # aten's `approximate` for the GELUs with a direct backward


def conv_mlp(
    x: torch.Tensor,
    h: int,
    w: int,
    dense1: nn.Linear,
    dwconv: nn.Conv2d,
    dense2: nn.Linear,
    act: Callable[[torch.Tensor], torch.Tensor],
    relu_first: bool,
) -> torch.Tensor | None:
    """PVTv2's MLP, `dense2(act(dwconv(relu?(dense1(x)))))` on `(B, h*w, C)` tokens, for fp32 CPU training where
    `choose(x).recompute` (the caller asks); None where this path does not apply (the caller runs the plain layers).

    The hidden activations are the largest tensors of the model (PVTv2-B0 at batch 32: three of 103 MB per
    stage-1 block, stored for the backward, and four more made by it). Tensors that big come fresh from the OS and
    are page-faulted in on every step (about 37 ms per 103 MB on the AVX-512 EPYC), so the step spends more time
    faulting than computing there. Here the forward runs a few images at a time (`small_bytes` of hidden
    activations per piece), stores its input (and, for inputs at least `keep_width` wide, `dense1`'s output), and
    the backward recomputes each piece's hidden activations (the depth-wise conv, the activation, for narrow
    inputs `dense1`) and takes its gradients while they are in cache: at most one hidden-sized tensor is stored,
    none is allocated by the backward, and the gradients are the plain path's up to the order of the sums. MLPs
    whose hidden activations take at most `recompute_bytes` are left to the plain layers (no faults to save).
    Applies to plain `nn.Linear` / `nn.Conv2d` layers with biases, fp32, no autocast, eager, no MLP dropout.
    """
    layers = (dense1, dwconv, dense2)
    big = x.shape[0] * x.shape[1] * dense1.out_features * 4 > _settings.recompute_bytes
    if not (
        big
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and all(_plain_layer(m, x.device) for m in layers)
        and not _global_module_hooks()
    ):
        return None
    params = (dense1.weight, dense1.bias, dwconv.weight, dwconv.bias, dense2.weight, dense2.bias)
    _ran("mlp_recompute")
    c = dwconv
    meta = (h, w, act, _GELUS.get(act), relu_first, (c.stride, c.padding, c.dilation, c.groups))
    return _RecomputedMlp.apply(x, *params, meta)


def _plain_layer(module: nn.Module, device: torch.device) -> bool:
    """A bare `nn.Linear` / `nn.Conv2d` whose call is exactly its maths: no hooks (forward, pre-forward, backward:
    pruning, hook-based weight norm, per-sample-gradient and ZeRO-3 hooks run there), no parametrization, plain fp32
    parameters with a bias, on `device`. Anything else must be called, so the plain layers run."""
    if type(module) not in (nn.Linear, nn.Conv2d):
        return False
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
        return False
    params = module._parameters
    weight, bias = params.get("weight"), params.get("bias")
    return all(type(p) is nn.Parameter and p.dtype == torch.float32 and p.device == device for p in (weight, bias))


def _global_module_hooks() -> bool:
    """Whether hooks registered for every module (`nn.modules.module.register_module_forward_hook`, ...) exist."""
    m = nn.modules.module
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(m, name, None) for name in names)


class _RecomputedMlp(torch.autograd.Function):
    """`conv_mlp`'s forward and backward (see there); saves the input and the weights only."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        wc: torch.Tensor,
        bc: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        meta: tuple,
    ) -> torch.Tensor:
        h, w, act, gelu, relu_first, conv_args = meta
        x = x.contiguous()
        B, N, C = x.shape
        hidden = w1.shape[0]
        rows = max(1, _settings.small_bytes // max(1, N * hidden * 4))
        out = x.new_empty(B, N, w2.shape[0])
        fused = gelu == "none" and _CONV_POINTWISE is not None
        # dense1's output is kept where recomputing it costs more than storing it (wide inputs: see `conv_mlp`)
        kept = x.new_empty(B, N, hidden) if C >= _settings.keep_width else None
        for start in range(0, B, rows):
            piece = x[start : start + rows]
            target = None if kept is None else kept[start : start + rows]
            grid = _hidden_map(piece, w1, b1, h, w, relu_first, target)  # (b, hidden, h, w), channels-last
            if fused:  # the depth-wise conv and the exact GELU in one oneDNN call
                a = _CONV_POINTWISE(
                    grid, wc, bc, conv_args[1], conv_args[0], conv_args[2], conv_args[3], "gelu", [], "none"
                )
            else:
                a = act(F.conv2d(grid, wc, bc, *conv_args))
            target = out[start : start + rows].view(-1, out.shape[-1])
            torch.addmm(b2, _rows(a), w2.t(), out=target)
        ctx.save_for_backward(x, w1, b1, wc, bc, w2, b2, kept)
        ctx.meta, ctx.rows = meta, rows
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w1, b1, wc, bc, w2, b2, kept = ctx.saved_tensors
        h, w, act, gelu, relu_first, conv_args = ctx.meta
        stride, padding, dilation, groups = conv_args
        grad = grad.contiguous()
        B, N, C = x.shape
        need = ctx.needs_input_grad  # frozen weights (adapters elsewhere, saliency maps) get no gradient work
        gx = torch.empty_like(x) if need[0] else None
        g1, gb1, gc, gbc, g2 = (torch.zeros_like(t) if n else None for t, n in zip((w1, b1, wc, bc, w2), need[1:6]))
        below_act = any(need[:5])  # anything beneath the activation: the input, dense1, the conv
        below_conv = any(need[:3])
        for start in range(0, B, ctx.rows) if (below_act or need[5]) else ():
            piece, g = x[start : start + ctx.rows], grad[start : start + ctx.rows].reshape(-1, grad.shape[-1])
            if kept is None:  # recomputed: (b, hidden, h, w), channels-last
                grid = _hidden_map(piece, w1, b1, h, w, relu_first)
            else:
                grid = kept[start : start + ctx.rows].view(piece.shape[0], h, w, -1).permute(0, 3, 1, 2)
            pre = F.conv2d(grid, wc, bc, stride, padding, dilation, groups)  # the activation's input
            rows = _rows(pre)
            if gelu is not None:
                a = F.gelu(rows, approximate=gelu)
                if g2 is not None:
                    g2.addmm_(g.t(), a)
                if not below_act:
                    continue
                ga = torch.mm(g, w2, out=a)  # a is spent: its memory takes the gradient
                ga = torch.ops.aten.gelu_backward.grad_input(ga, rows, approximate=gelu, grad_input=ga)
            else:
                with torch.enable_grad():
                    leaf = rows.detach().requires_grad_()
                    a = act(leaf)
                if g2 is not None:
                    g2.addmm_(g.t(), a.detach())
                if not below_act:
                    continue
                (ga,) = torch.autograd.grad(a, leaf, torch.mm(g, w2))
            g_pre = ga.view(pre.shape[0], h, w, -1).permute(0, 3, 1, 2)  # channels-last, like `pre`
            # Two calls: oneDNN's combined one ran 2.4x slower than both apart at PVTv2's stage-2 pieces (512 x 28^2)
            conv_grad = functools.partial(
                torch.ops.aten.convolution_backward,
                g_pre,
                grid,
                wc,
                [wc.shape[0]],
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
            )
            if gc is not None or gbc is not None:
                _, g_wc, g_bc = conv_grad([False, gc is not None, gbc is not None])
                if gc is not None:
                    gc += g_wc
                if gbc is not None:
                    gbc += g_bc
            if not below_conv:
                continue
            g_grid = conv_grad([True, False, False])[0]
            g_hidden = _rows(g_grid.contiguous(memory_format=torch.channels_last))
            if relu_first:
                g_hidden = g_hidden.masked_fill_(_rows(grid) <= 0, 0.0)
            if g1 is not None:
                g1.addmm_(g_hidden.t(), piece.reshape(-1, C))
            if gb1 is not None:
                gb1 += g_hidden.sum(0)
            if gx is not None:
                torch.mm(g_hidden, w1, out=gx[start : start + ctx.rows].view(-1, C))
        gb2 = grad.reshape(-1, grad.shape[-1]).sum(0) if need[6] else None
        return gx, g1, gb1, gc, gbc, g2, gb2, None


def _hidden_map(
    piece: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, h: int, w: int, relu: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`relu?(piece @ w1.T + b1)` for `(b, h*w, C)` tokens (into `out`, `(b, h*w, hidden)`, if given), seen as a
    `(b, hidden, h, w)` channels-last map."""
    b = piece.shape[0]
    rows = piece.reshape(-1, piece.shape[-1])
    if out is None:
        hidden = torch.addmm(b1, rows, w1.t())
    else:
        hidden = torch.addmm(b1, rows, w1.t(), out=out.view(len(rows), -1))
    if relu:
        hidden.relu_()
    return hidden.view(b, h, w, -1).permute(0, 3, 1, 2)


def _rows(grid: torch.Tensor) -> torch.Tensor:
    """A channels-last `(b, C, h, w)` map as `(b*h*w, C)` rows (a view)."""
    return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])


# ---- multi-scale deformable attention: bilinear samples gathered by one embedding bag ---------------------------


def deformable_sampling(
    value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor | None:
    """`layers.multi_scale_deformable_attention` in fp32 CPU inference (`choose(value).fused`); None where this path
    does not apply (the caller runs `grid_sample`).

    Each bilinear sample is four corner reads, so a query-head's output is a weighted sum of `levels x points x 4`
    rows of the value table: one `F.embedding_bag` (mode "sum", per-sample weights = bilinear x attention weight)
    over `value` as it lies, `(B*S*heads, head_dim)`, writes the `(B, Q, heads*head_dim)` result directly. Nothing
    of `grid_sample`'s `(B*heads, head_dim, Q, points)` samples per level, nor the copies of `value` per level, is
    built. The corners' indices and weights are computed level by level with scalar sizes, the pixel coordinate
    rounded once from the exact product, as `grid_sample`'s CPU kernel rounds it, so the two agree to ~1e-7.
    Deformable DETR at 800x1333 on the 2-core AVX-512 EPYC: an encoder layer's sampling ~0.1 s against 0.74 s for
    transformers' `grid_sample` path (0.63 s for pvtkit's); a decoder layer's, 2 images: 2.4 ms against 37.
    """
    if not choose(value).fused or value.dtype != torch.float32 or locations.dtype != torch.float32:
        return None
    B, S, heads, dim = value.shape
    _, Q, _, levels, points, _ = locations.shape
    if B * S * heads >= 2**31:  # int32 row indices
        return None
    _ran("deformable_gather")
    grid = 2 * locations - 1  # the plain path's grid_sample coordinates, rounded as there
    index = torch.empty(B, Q, heads, levels, points, 4, dtype=torch.int32)
    weight = torch.empty(B, Q, heads, levels, points, 4, dtype=value.dtype)
    start = 0
    for level, (h, w) in enumerate(shapes):
        g = grid[:, :, :, level].double()  # (B, Q, heads, points, 2)
        # grid_sample's pixel coordinate ((g + 1) * size - 1) / 2, rounded once; clamped, so the ints below hold it
        x = (g[..., 0] * (w / 2) + (w - 1) / 2).float().clamp_(-2, w + 1)
        y = (g[..., 1] * (h / 2) + (h - 1) / 2).float().clamp_(-2, h + 1)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        a = weights[:, :, :, level]
        top = (1 - fy) * a * ((y0 >= 0) & (y0 < h))  # attention x row weight x "row inside the map"
        bottom = fy * a * ((y0 >= -1) & (y0 < h - 1))
        left = (1 - fx) * ((x0 >= 0) & (x0 < w))
        right = fx * ((x0 >= -1) & (x0 < w - 1))
        xi, yi = x0.int(), y0.int()
        xl, xr = xi.clamp(0, w - 1), (xi + 1).clamp_(0, w - 1)
        rt = yi.clamp(0, h - 1).mul_(w).add_(start)
        rb = (yi + 1).clamp_(0, h - 1).mul_(w).add_(start)
        # the four corners, top-left to bottom-right, written 16 values at a time (points x corners)
        index[:, :, :, level] = torch.stack((rt + xl, rt + xr, rb + xl, rb + xr), -1)
        weight[:, :, :, level] = torch.stack((top * left, top * right, bottom * left, bottom * right), -1)
        start += h * w
    # row of `value` (B, S, heads, head_dim) seen as (B*S*heads, head_dim): (b * S + s) * heads + head
    offset = torch.arange(B, dtype=torch.int32).view(B, 1, 1) * (S * heads) + torch.arange(heads, dtype=torch.int32)
    index.mul_(heads).add_(offset.view(B, 1, heads, 1, 1, 1))
    bags = B * Q * heads
    out = F.embedding_bag(
        index.view(bags, -1), value.reshape(-1, dim), per_sample_weights=weight.view(bags, -1), mode="sum"
    )
    return out.view(B, Q, heads * dim)
