"""`pvtkit.optimize`: the opt-in compiled forward (torch.compile), with what fits each case and a clean fallback.

What it picks, from measurements on 2-thread AMD EPYC CPUs (README "Speed"):

* **CPU inference**: Inductor with freezing (the weights become constants, so oneDNN gets pre-packed weights
  and fused conv/linear epilogues). The compiled graph takes the batches the eager forward would not split into
  pieces (`model.compiled_batch_limit`: PVTv2/SegFormer/GLPN 1, ViT any); larger batches take the eager fast
  paths, which measured faster on the CPU than every compiled graph (pvtkit's and its peers'): Inductor computes a
  whole batch at once, and tensors that big are page-faulted in on every call (PVTv2-B0 at batch 32 on the
  AVX-512 EPYC: eager 70-85 img/s, pvtkit compiled 51, transformers and timm compiled 49-58).
* **CPU training**: the eager forward, whose MLP recomputes its hidden activations in pieces (measured faster than
  the compiled training step); `train=True` compiles it anyway (Inductor, no freezing).
* **CUDA**: Inductor; small batches (up to `cuda_graph_batch`) with CUDA graphs ("reduce-overhead").

The model is changed in place (its `forward` is replaced by a `CompiledForward` with the same signature; state
dict, `save_pretrained` and the config are untouched; copies get the eager forward) and returned. `optimize_for`
is what pipelines and `--compile` call: it leaves a model eager, with a warning, when none of a job's batches
would compile. Where no compiler works (no C++ compiler for the CPU back end, a
Python torch.compile does not support, a graph Inductor fails on) a warning says why and the eager forward
runs: the same numbers, eager speed. `pvtkit.optimize(model, enabled=False)` restores the eager forward.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("pvtkit")

__all__ = ["CompiledForward", "compiler_problem", "optimize", "optimize_for"]


def compiler_problem(device: torch.device | str = "cpu") -> str | None:
    """Why torch.compile's default back end cannot run on `device` here, or None when it should."""
    if not hasattr(torch, "compile"):  # pragma: no cover - torch < 2.0 is not supported anyway
        return "this PyTorch has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python / platform"
    except Exception as e:  # noqa: BLE001 - an import failure is the answer
        return f"torch.compile cannot be imported ({type(e).__name__}: {e})"
    if torch.device(device).type == "cpu":
        try:
            from torch._inductor import cpp_builder

            cpp_builder.get_cpp_compiler()
        except (ImportError, AttributeError):  # another torch layout: let the first call tell
            return None
        except Exception as e:  # noqa: BLE001 - InvalidCxxCompiler and friends
            return f"Inductor's CPU back end needs a C++ compiler and found none ({type(e).__name__}; set CXX)"
    return None


class CompiledForward:
    """A model's forward, compiled where that pays and eager elsewhere; installed by `optimize`.

    Attributes:
        compile_seconds: Seconds each compiled input signature took on its first call (compilation included).
        fallback: Why the eager forward runs for good, or None while compiling works.

    It has the forward's signature (`inspect.signature`, which transformers' Trainer reads). Copies of the model
    (`copy.deepcopy`, pickling, `torch.save`) get the plain eager forward: call `optimize` on the copy.
    """

    def __init__(
        self,
        model: nn.Module,
        eager: Callable[..., Any],
        train: bool,
        freeze: bool,
        cuda_graph_batch: int,
        dynamic: bool,
        previous: Any,
    ) -> None:
        functools.update_wrapper(self, eager)
        self.eager, self.train, self.freeze, self.cuda_graph_batch = eager, train, freeze, cuda_graph_batch
        self.dynamic, self.previous = dynamic, previous
        self.limit: int | None = getattr(model, "compiled_batch_limit", None)
        self.compile_seconds: dict[str, float] = {}
        self.fallback: str | None = None
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._frozen: dict[str, tuple[list[torch.Tensor], int]] = {}  # kind -> its frozen tensors, their fingerprint
        self._model_name = type(model).__name__
        self._model = weakref.ref(model)
        self._lock = threading.Lock()

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """A copy of the model gets its class's plain forward, bound to the copy (compiled graphs do not copy)."""
        return _bound_forward, (self._model(),)

    def _weights(self) -> list[torch.Tensor]:
        model = self._model()
        return [] if model is None else [*model.parameters(), *model.buffers()]

    @staticmethod
    def _fingerprint(tensors: list[torch.Tensor]) -> int:
        """Changes when one of `tensors` is written in place through autograd-visible ops (an optimizer step,
        `load_state_dict`) or gets new storage; writes through `.data` are invisible to it (and to PyTorch's own
        guards). Weights replaced by new tensors, and new modules (an adapter), fail Dynamo's own guards, which
        compile again. 60 us for PVTv2-B2's 366 tensors, on every frozen call."""
        try:
            return hash(tuple([(t._version, t.data_ptr()) for t in tensors]))
        except RuntimeError:  # a weight made under inference_mode has no version counter: its storage must do
            return hash(tuple([(-1 if t.is_inference() else t._version, t.data_ptr()) for t in tensors]))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        kind = self._kind(pixels)
        if kind is None:
            return self.eager(*args, **kwargs)
        with self._lock:
            compiled = self._compiled.get(kind)
            frozen = self._frozen.get(kind)
            if frozen is not None and frozen[1] != self._fingerprint(frozen[0]):
                logger.info(
                    "pvtkit.optimize: %s's weights changed since they were frozen: compiling again", self._model_name
                )
                compiled = None
                self.compile_seconds = {k: v for k, v in self.compile_seconds.items() if not k.startswith(kind + " ")}
            if compiled is None:
                compiled = self._compiled[kind] = self._compile(kind)
        signature = f"{kind} {tuple(pixels.shape)} {pixels.dtype}"
        start = time.perf_counter()
        try:
            out = compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure; the eager call below tells input errors apart
            out = self.eager(*args, **kwargs)  # an input error raises here, as it would without optimize
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            self._give_up(f"compiling {self._model_name} failed ({type(e).__name__}: {first_line})")
            return out
        if signature not in self.compile_seconds:
            self.compile_seconds[signature] = seconds = time.perf_counter() - start
            logger.info("pvtkit.optimize: %s compiled for %s in %.1f s", self._model_name, signature, seconds)
        return out

    def _kind(self, pixels: Any) -> str | None:
        """Which compiled graph runs this call ("infer", "cudagraph", "train"), or None for the eager forward."""
        if self.fallback is not None or not isinstance(pixels, torch.Tensor) or pixels.ndim < 1:
            return None
        if _being_traced():  # torch.compile, torch.export, torch.jit.trace, FX: let the tracer see the model itself
            return None
        grad = torch.is_grad_enabled()
        if pixels.device.type == "cuda":
            if grad:
                return "train"
            return "cudagraph" if pixels.shape[0] <= self.cuda_graph_batch else "infer"
        if grad:
            return "train" if self.train else None
        if self.limit is not None and pixels.shape[0] > self.limit:
            return None
        return "infer"

    def _compile(self, kind: str) -> Callable[..., Any]:
        options: dict[str, Any] = {}
        if kind == "infer" and self.freeze:
            options["options"] = {"freezing": True}
            tensors = self._weights()
            self._frozen[kind] = (tensors, self._fingerprint(tensors))
        elif kind == "cudagraph":
            options["mode"] = "reduce-overhead"
        # Static shapes by default: each new input shape compiles its own graph (a symbolic batch costs speed on
        # the CPU); `dynamic=True` (the server: any batch size) makes the batch symbolic after batch 1.
        return torch.compile(self.eager, dynamic=self.dynamic, **options)

    def _give_up(self, why: str) -> None:
        self.fallback = why
        warnings.warn(f"pvtkit.optimize: {why}; running eagerly (same results, eager speed)", stacklevel=3)


def _bound_forward(model: nn.Module) -> Callable[..., Any]:
    return type(model).forward.__get__(model)


def _being_traced() -> bool:
    from torch.fx import _symbolic_trace as fx

    fx_tracing = getattr(fx, "is_fx_tracing_symbolic_tracing", None) or fx.is_fx_tracing
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting() or fx_tracing()


def optimize_for(model: nn.Module, batch_size: int, device: torch.device | str, **options: Any) -> nn.Module:
    """`optimize(model, **options)` for a job that runs batches of `batch_size` on `device` (pipelines, `--compile`):
    when none of them would compile (on the CPU a pyramid model compiles batch 1 only, and compiling for a last
    batch of one would cost tens of seconds for one image), a warning says so and the model stays eager."""
    limit = getattr(model, "compiled_batch_limit", None)
    if torch.device(device).type != "cpu" or limit is None or batch_size <= limit:
        return optimize(model, **options)
    logger.warning(
        "compile: on the CPU %s compiles batches of at most %d image(s), which run faster compiled; "
        "batches of %d run faster on the eager paths and stay there (batch size 1 for compiled latency)",
        type(model).__name__,
        limit,
        batch_size,
    )
    return model


def optimize(
    model: nn.Module,
    *,
    enabled: bool = True,
    train: bool = False,
    freeze: bool = True,
    cuda_graph_batch: int = 8,
    dynamic: bool = False,
) -> nn.Module:
    """Compile `model`'s forward where that pays (see the module docstring); returns the same model.

    Call it after the weights are loaded and the model is on its device. Under inference the compiled graph holds
    the weights as constants (freezing); when they change (an optimizer step, `load_state_dict`, new parameters
    such as an adapter) the next inference call compiles again, so answers are not stale; writes through `.data`
    (`p.data.mul_(...)`) cannot be seen: call `optimize` again after those, or pass `freeze=False`. The first call
    of each input shape compiles (tens of seconds on a CPU: logged, and kept in `model.forward.compile_seconds`).

    Args:
        model: A pvtkit model (or any `nn.Module` taking `pixel_values` first).
        enabled: False restores the forward the model had before.
        train: Also compile the CPU training forward (Inductor without freezing); by default CPU training keeps the
            eager forward, which measured faster.
        freeze: Freeze the weights into inference graphs (faster on the CPU); False for a model still training,
            whose evaluations would otherwise compile again after every step.
        cuda_graph_batch: On CUDA, batches up to this size run under CUDA graphs (their outputs are overwritten
            by the next call: copy what you keep).
        dynamic: One graph for every batch size above 1 (a symbolic batch) instead of one per size.

    With no working compiler it warns and leaves the model eager.
    """
    current = model.__dict__.get("forward")
    previous = current.previous if isinstance(current, CompiledForward) else current
    if isinstance(current, CompiledForward):
        if previous is None:
            del model.forward  # back to the class's forward
        else:
            model.forward = previous
    if not enabled:
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    problem = compiler_problem(device)
    if problem is not None:
        warnings.warn(f"pvtkit.optimize: {problem}; running eagerly (same results, eager speed)", stacklevel=2)
        return model
    eager = previous if previous is not None else _bound_forward(model)  # what torch.compile traces
    model.forward = CompiledForward(model, eager, train, freeze, cuda_graph_batch, dynamic, previous)
    return model
