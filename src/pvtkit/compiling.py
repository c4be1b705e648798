"""`pvtkit.optimize`: the opt-in compiled forward (torch.compile), with what fits each case and a clean fallback.

What it picks, from measurements on 2-thread AMD EPYC CPUs (README "Speed"):

* **CPU inference**: Inductor with freezing (the weights become constants, so oneDNN gets pre-packed weights
  and fused conv/linear epilogues). The compiled graph takes the batches the eager forward would not split into
  pieces (`model.compiled_batch_limit`: PVTv2/SegFormer/GLPN 1, ViT any); larger batches take the eager fast
  paths, which measured faster on the CPU than every compiled graph (pvtkit's and its peers'): Inductor computes a
  whole batch at once, and tensors that big are page-faulted in on every call (PVTv2-B0 at batch 32: eager
  75 img/s, compiled 51, transformers compiled 50).
* **CPU training**: the eager forward, whose MLP recomputes its hidden activations in pieces (measured faster than
  the compiled training step); `train=True` compiles it anyway (Inductor, no freezing).
* **CUDA**: Inductor; small batches (up to `cuda_graph_batch`) with CUDA graphs ("reduce-overhead").

The model is changed in place (its `forward` is replaced by a `CompiledForward`; state dict, `save_pretrained`
and the config are untouched) and returned. Where no compiler works (no C++ compiler for the CPU back end, a
Python torch.compile does not support, a graph Inductor fails on) a warning says why and the eager forward
runs: the same numbers, eager speed. `pvtkit.optimize(model, enabled=False)` restores the eager forward.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("pvtkit")

__all__ = ["CompiledForward", "compiler_problem", "optimize"]


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
    """

    def __init__(self, model: nn.Module, eager: Callable[..., Any], train: bool, freeze: bool,
                 cuda_graph_batch: int) -> None:  # fmt: skip
        self.eager, self.train, self.freeze, self.cuda_graph_batch = eager, train, freeze, cuda_graph_batch
        self.limit: int | None = getattr(model, "compiled_batch_limit", None)
        self.compile_seconds: dict[str, float] = {}
        self.fallback: str | None = None
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._frozen: dict[str, int] = {}  # kind -> the weights' fingerprint its frozen graph holds
        self._params = list(model.parameters()) + list(model.buffers())
        self._model_name = type(model).__name__

    def _fingerprint(self) -> int:
        """Changes when any weight is replaced or written in place (an optimizer step, `load_state_dict`)."""
        return hash(tuple((id(p), p._version) for p in self._params))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        kind = self._kind(pixels)
        if kind is None:
            return self.eager(*args, **kwargs)
        compiled = self._compiled.get(kind)
        if kind in self._frozen and self._frozen[kind] != self._fingerprint():
            logger.info("pvtkit.optimize: %s's weights changed since they were frozen: compiling again",
                        self._model_name)  # fmt: skip
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
            self._give_up(f"compiling {self._model_name} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            return out
        if signature not in self.compile_seconds:
            self.compile_seconds[signature] = seconds = time.perf_counter() - start
            logger.info("pvtkit.optimize: %s compiled for %s in %.1f s", self._model_name, signature, seconds)
        return out

    def _kind(self, pixels: Any) -> str | None:
        """Which compiled graph runs this call ("infer", "cudagraph", "train"), or None for the eager forward."""
        if self.fallback is not None or not isinstance(pixels, torch.Tensor) or pixels.ndim < 1:
            return None
        if torch.compiler.is_compiling():  # inside someone else's compiled region: let theirs trace us
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
            self._frozen[kind] = self._fingerprint()
        elif kind == "cudagraph":
            options["mode"] = "reduce-overhead"
        # Static shapes: each new input shape compiles its own graph (a symbolic batch costs speed on the CPU)
        return torch.compile(self.eager, dynamic=False, **options)

    def _give_up(self, why: str) -> None:
        self.fallback = why
        warnings.warn(f"pvtkit.optimize: {why}; running eagerly (same results, eager speed)", stacklevel=3)


def optimize(model: nn.Module, *, enabled: bool = True, train: bool = False, freeze: bool = True,
             cuda_graph_batch: int = 8) -> nn.Module:  # fmt: skip
    """Compile `model`'s forward where that pays (see the module docstring); returns the same model.

    Call it after the weights are loaded and the model is on its device. Under inference the compiled graph holds
    the weights as constants (freezing); when they change (an optimizer step, `load_state_dict`) the next
    inference call compiles again, so answers are never stale. The first call of each input shape compiles (tens
    of seconds on a CPU: logged, and kept in `model.forward.compile_seconds`).

    Args:
        model: A pvtkit model (or any `nn.Module` taking `pixel_values` first).
        enabled: False restores the eager forward.
        train: Also compile the CPU training forward (Inductor without freezing); by default CPU training keeps the
            eager forward, which measured faster.
        freeze: Freeze the weights into inference graphs (faster on the CPU); False for a model still training,
            whose evaluations would otherwise compile again after every step.
        cuda_graph_batch: On CUDA, batches up to this size run under CUDA graphs.

    With no working compiler it warns and leaves the model eager.
    """
    current = model.__dict__.get("forward")
    if isinstance(current, CompiledForward):
        del model.forward  # back to the class's forward
    if not enabled:
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    problem = compiler_problem(device)
    if problem is not None:
        warnings.warn(f"pvtkit.optimize: {problem}; running eagerly (same results, eager speed)", stacklevel=2)
        return model
    eager = type(model).forward.__get__(model)  # the class's forward, bound: what torch.compile traces
    model.forward = CompiledForward(model, eager, train, freeze, cuda_graph_batch)
    return model
