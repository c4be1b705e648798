"""Model speed and memory: pvtkit against transformers and timm, side by side, in one process.

Every implementation gets the same random weights (timm's init converted with `pvtkit.convert.to_transformers`,
or pvtkit's own when timm is missing) and the same inputs; outputs are checked against transformers' before
anything is timed. Runs are interleaved, the order rotating every round (A B C, B C A, ...), and the median is
reported, so a burst of load from another process hits all implementations alike. Measured:

  * inference throughput (img/s) at batch 32 (ViT-B/16: 16) and latency (ms) at batch 1, fp32 and bf16 autocast;
  * peak inference memory, each model and implementation in a fresh subprocess (Linux VmHWM, reset before the
    forward, so the number is the forward's own high-water mark above the loaded model);
  * a training step (forward, backward, AdamW step) for B0 and B2;
  * linear SRA against SRA from 224 to 1024 pixels (B2-Linear vs B2, pvtkit, batch 1);
  * the machine's limit, in the same run: the rate of a square fp32 and a bf16 matmul (2048 and 4096) on the
    same threads, and for every row the GFLOP/s each implementation achieved (the model's FLOPs from
    `pvtkit.analysis.describe`, what `pvtkit info` prints; a training step counted as 3x the forward) and its
    share of that peak. Without bf16 instructions (AVX512-BF16 / AMX) the bf16 "peak" is what torch's fallback
    reaches, and pvtkit's bf16 mode is emulation on the fp32 units: its share is given against the fp32 peak.

    python benchmarks/bench_models.py [--quick] [--only b0,vit] [--markdown out.md] [--json out.json]

timm is optional: without it its column reads n/a. Run it in one environment holding torch, transformers,
timm and pvtkit (e.g. `pip install timm transformers && pip install --no-deps -e .`).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import pvtkit
from pvtkit.convert import to_transformers

IMPLS = ("pvtkit", "transformers", "timm")


@dataclass(frozen=True)
class Spec:
    """One benchmarked model: pvtkit's variant, timm's name, and the batch sizes it runs at."""

    key: str
    title: str
    family: str  # "pvt_v2" or "vit"
    variant: str
    timm_name: str
    batch: int  # throughput batch (fp32 and bf16)
    bf16_batch: int  # bf16 throughput batch: smaller for the big models, whose bf16 runs are slow without AMX
    train_batch: int = 0  # 0: no training-step row


SPECS = {
    "b0": Spec("b0", "PVTv2-B0", "pvt_v2", "b0", "pvt_v2_b0", 32, 32, 32),
    "b2": Spec("b2", "PVTv2-B2", "pvt_v2", "b2", "pvt_v2_b2", 32, 32, 16),
    "b2_linear": Spec("b2_linear", "PVTv2-B2-Linear", "pvt_v2", "b2_linear", "pvt_v2_b2_li", 32, 8),
    "b5": Spec("b5", "PVTv2-B5", "pvt_v2", "b5", "pvt_v2_b5", 32, 8),
    "vit": Spec("vit", "ViT-B/16", "vit", "base_patch16_224", "vit_base_patch16_224", 16, 16),
}
QUICK = {"batch": 4, "bf16_batch": 2, "train_batch": 4, "repeats": 2, "budget": 10.0, "sizes": (224, 448)}


def have_timm() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


# ---- building the models ----------------------------------------------------------------------------------------


def matmul_peak(dtype: str, device: str, sizes: tuple[int, ...] = (2048, 4096), budget: float = 4.0) -> float:
    """The best GFLOP/s of square `dtype` matmuls of `sizes` on this process's threads: the roofline rows are
    measured against (a large matmul is the best case of the units every model here spends its time in)."""
    best = 0.0
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    for n in sizes:
        a = torch.randn(n, n, device=device).to(kind)
        b = torch.randn(n, n, device=device).to(kind)
        torch.matmul(a, b)  # warm-up: kernel selection, packing buffers
        start = time.perf_counter()
        runs = 0
        while True:
            t0 = time.perf_counter()
            torch.matmul(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
            runs += 1
            if runs >= 3 and time.perf_counter() - start > budget / len(sizes):
                break
    return best


def model_gflops(spec: Spec) -> float:
    """GFLOPs of one forward at 224x224 (2 x multiply-accumulates), counted on the meta device."""
    from pvtkit.analysis import describe

    cls = pvtkit.ViTForImageClassification if spec.family == "vit" else pvtkit.PvtV2ForImageClassification
    return describe(cls, pvtkit_config(spec), 224, 224)["flops"] / 1e9


def share(images_per_second: float | None, gflops: float, peak: float) -> str:
    """`achieved GFLOP/s (share of peak)`."""
    if not images_per_second or not peak:
        return "n/a"
    rate = images_per_second * gflops
    return f"{rate:.0f} ({rate / peak:.0%})"


def pvtkit_config(spec: Spec) -> Any:
    if spec.family == "vit":
        return pvtkit.ViTConfig.from_variant(spec.variant, layer_norm_eps=1e-6)  # timm's ViT epsilon
    return pvtkit.PvtV2Config.from_variant(spec.variant)


def build(spec: Spec, impls: tuple[str, ...], seed: int = 0) -> dict[str, torch.nn.Module]:
    """The implementations in `impls`, holding identical weights (timm's random init when timm is there)."""
    import transformers

    torch.manual_seed(seed)
    config = pvtkit_config(spec)
    ours_cls = pvtkit.ViTForImageClassification if spec.family == "vit" else pvtkit.PvtV2ForImageClassification
    models: dict[str, torch.nn.Module] = {"pvtkit": ours_cls(config)}
    if "timm" in impls:
        import timm

        models["timm"] = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000)
        state, _ = to_transformers(models["timm"].state_dict(), spec.family, source=f"timm {spec.timm_name}")
        models["pvtkit"].load_state_dict(state)
    if "transformers" in impls:
        if spec.family == "vit":  # transformers 5 renames ViT's modules on load: go through its own loader
            with tempfile.TemporaryDirectory() as tmp:
                models["pvtkit"].save_pretrained(tmp)
                theirs = transformers.ViTForImageClassification.from_pretrained(tmp, attn_implementation="sdpa")
        else:
            theirs = transformers.PvtV2ForImageClassification(transformers.PvtV2Config(**config.to_dict()))
            theirs.load_state_dict(models["pvtkit"].state_dict())
        models["transformers"] = theirs
    return {name: models[name].eval() for name in impls}


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# ---- timing -----------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """The timings of one measurement for every implementation, and each one's error against transformers."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)

    def median(self, impl: str) -> float | None:
        return statistics.median(self.seconds[impl]) if self.seconds.get(impl) else None


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, budget: float, first: dict[str, float]) -> Cell:
    """Run every fn `repeats` times, interleaved and rotating (A B C, B C A, ...), stopping early once `budget`
    seconds are spent.

    `first` holds each fn's already-timed first (checking) run; when one round would blow the budget (the bf16
    runs of implementations without fast bf16 kernels), those first runs are the measurement.
    """
    cell = Cell({name: [] for name in fns})
    round_cost = sum(first.values())
    if round_cost * 2 > budget:
        cell.seconds = {name: [t] for name, t in first.items()}
        return cell
    start, names = time.perf_counter(), list(fns)
    for r in range(repeats):
        # The order rotates every round (A B C, B C A, C A B, ...): whichever runs first in a round was measured
        # up to 10% faster on a shared VM (a PVTv2-B0 training step, the same code either way).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            cell.seconds[name].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget:
            break
    return cell


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def autocast(dtype: str, device: str):
    """fp32: no autocast; bf16 / fp16: autocast to that dtype."""
    lowp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    return torch.autocast(device, dtype=lowp or torch.bfloat16, enabled=lowp is not None)


def inference(model: torch.nn.Module, x: torch.Tensor, dtype: str, device: str) -> Callable[[], torch.Tensor]:
    """One timed inference call of `model` on `x` (under autocast for bf16 / fp16)."""

    def run() -> torch.Tensor:
        with torch.inference_mode(), autocast(dtype, device):
            out = logits(model, x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def check_errors(cell: Cell, outs: dict[str, torch.Tensor], tol: float, what: str) -> None:
    """Each implementation's relative error against transformers' output into `cell`; one past `tol` stops the
    run (nothing is timed on wrong numbers)."""
    if "transformers" not in outs:
        return
    cell.error = {name: rel_err(out.float(), outs["transformers"].float()) for name, out in outs.items()}
    bad = {name: e for name, e in cell.error.items() if e > tol}
    if bad:
        raise SystemExit(f"{what} disagree with transformers (relative error > {tol:g}): {bad}")


def compared(fns: dict[str, Callable[[], torch.Tensor]], args: Any, tol: float, what: str) -> Cell:
    """Each fn's first call (which warms up: kernel selection, the allocator) checked against transformers' with
    `check_errors`, then all of them timed interleaved (`args.repeats`, `args.budget`)."""
    outs, first = {}, {}
    for name, fn in fns.items():
        outs[name], first[name] = timed(fn)
    cell = interleaved(fns, args.repeats, args.budget, first)
    check_errors(cell, outs, tol, what)
    return cell


def measure_inference(models, batch: int, dtype: str, args) -> Cell:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch), device="cpu").to(args.device)
    fns = {name: inference(m, x, dtype, args.device) for name, m in models.items()}
    # timm's 1e-5 epsilons in two LayerNorms shift its outputs ~1e-5; bf16 rounding ~1e-2
    return compared(fns, args, 1e-3 if dtype == "fp32" else 5e-2, "outputs")


def measure_training(spec: Spec, impls, batch: int, args) -> Cell:
    models = build(spec, impls)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(args.device)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2)).to(args.device)
    fns = {}
    for name, model in models.items():
        model.to(args.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            loss = torch.nn.functional.cross_entropy(logits(model, x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if args.device == "cuda":
                torch.cuda.synchronize()
            return loss.detach()

        fns[name] = step
    # the first step (before any update: identical weights) is the check
    return compared(fns, args, 1e-3, f"{spec.title} training losses")


def measure_compiled(spec: Spec, impls, batch: int, args) -> tuple[Cell, dict[str, float]]:
    """fp32 inference, compiled: pvtkit through `pvtkit.optimize` (which compiles where that pays and runs eagerly
    elsewhere), the others through `torch.compile` with what fits CPU inference (Inductor, freezing, static
    shapes), as a user compiling them would; pvtkit's plain eager forward beside them. Returns the timings and
    each one's first call (compilation included), in seconds."""
    models = build(spec, impls)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)).to(args.device)
    fns: dict[str, Callable[[], Any]] = {}
    for name, model in models.items():
        model.to(args.device)
        if name == "pvtkit":
            fns["pvtkit eager"] = inference(copy.deepcopy(model), x, "fp32", args.device)
            compiled = pvtkit.optimize(model)
        else:
            compiled = torch.compile(model, dynamic=False, options={"freezing": True})
        fns[name] = inference(compiled, x, "fp32", args.device)
    outs, first, warm = {}, {}, {}
    for name, fn in fns.items():
        outs[name], first[name] = timed(fn)
        warm[name] = timed(fn)[1]  # what one round costs, compiled
    cell = interleaved(fns, args.repeats, args.budget, warm)
    check_errors(cell, outs, 1e-3, f"{spec.title} compiled outputs")
    return cell, first


# ---- peak memory, one fresh process per model and implementation -----------------------------------------------


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def memory_child(key: str, impl: str, batch: int, train: bool = False) -> None:
    """In a fresh process: build one model, reset the RSS high-water mark, run one forward (with `train`: one
    training step after a first one, so the optimizer state exists), print the peaks (MiB)."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = build(SPECS[key], (impl,) if impl != "transformers" else ("transformers",))[impl]
    x = torch.randn(batch, 3, 224, 224)
    if train:
        model.train()
        y = torch.randint(0, 1000, (batch,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run() -> None:
            torch.nn.functional.cross_entropy(logits(model, x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        run()
    else:

        def run() -> None:
            with torch.inference_mode():
                logits(model, x)

    print_peak(run)


def print_peak(run: Callable[[], Any]) -> None:
    """In a memory child: reset the RSS high-water mark, `run()`, print the peaks (MiB) as one JSON line."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _status_kb("VmRSS")
    run()
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_mib": peak / 1024, "forward_mib": (peak - base) / 1024}))


def run_memory_child(script: str, child_args: list[str], threads: int) -> dict[str, float] | None:
    """`script --memory-child ARGS...` in a fresh process (Linux only): the peaks it prints, or None."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = {**os.environ, "BENCH_THREADS": str(threads)}
    cmd = [sys.executable, os.path.abspath(script), "--memory-child", *child_args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        print(f"memory run {child_args} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(spec: Spec, impl: str, batch: int, threads: int, train: bool = False) -> dict[str, float] | None:
    return run_memory_child(__file__, [spec.key, impl, str(batch), *(["train"] if train else [])], threads)


# ---- linear SRA vs SRA ------------------------------------------------------------------------------------------


def measure_scaling(sizes, args) -> dict[str, dict[int, float]]:
    """Seconds per image (batch 1, pvtkit, fp32) of B2 and B2-Linear at each input side."""
    models = {k: build(SPECS[k], ("pvtkit",))["pvtkit"] for k in ("b2", "b2_linear")}
    result: dict[str, dict[int, float]] = {k: {} for k in models}
    for size in sizes:
        x = torch.randn(1, 3, size, size).to(args.device)
        fns = {}
        for k, m in models.items():

            def run(m=m, x=x):
                with torch.inference_mode():
                    return logits(m, x)

            fns[k] = run
        first = {k: timed(fn)[1] for k, fn in fns.items()}
        cell = interleaved(fns, args.repeats, args.budget, first)
        for k in models:
            result[k][size] = cell.median(k)  # type: ignore[assignment]
    return result


# ---- the report -------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if have_timm():
        import timm

        info["timm"] = timm.__version__
    cpu, flags = platform.processor() or platform.machine(), set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    info["cpu"] = cpu
    info["cores"] = os.cpu_count()
    info["isa"] = torch.backends.cpu.get_cpu_capability()
    info["avx512"] = "avx512f" in flags
    info["avx512_bf16"] = "avx512_bf16" in flags
    info["amx_bf16"] = "amx_bf16" in flags
    try:
        info["native_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        info["native_bf16"] = None
    # PyTorch reads THP_MEM_ALLOC_ENABLE at its first allocation: huge pages change every implementation's CPU time
    info["huge_pages"] = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches, 2 repeats, 2 sizes: a smoke run")
    parser.add_argument("--only", help=f"comma-separated models among {','.join(SPECS)} (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per measurement (median)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds one measurement may spend repeating")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-train", action="store_true", help="skip the training steps")
    parser.add_argument("--no-scaling", action="store_true", help="skip linear SRA vs SRA")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also compiled rows: pvtkit.optimize against "
        "torch.compile of transformers' and timm's models (Inductor, freezing), with compile times",
    )
    parser.add_argument("--compile-only", action="store_true", help="only the compiled rows (implies --compile)")
    parser.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        key, impl, batch, *train = args.memory_child
        memory_child(key, impl, int(batch), train == ["train"])
        return 0
    args.compile = args.compile or args.compile_only
    if args.compile_only:
        args.no_train = args.no_memory = args.no_scaling = True
    keys = list(SPECS) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SPECS]
    if unknown:
        parser.error(f"--only: unknown model(s) {unknown}; expected some of {','.join(SPECS)}")
    if args.quick:
        args.repeats, args.budget = QUICK["repeats"], QUICK["budget"]
    torch.set_num_threads(args.threads)
    impls = tuple(i for i in IMPLS if i != "timm" or have_timm())
    load_before = os.getloadavg()
    info, results = machine(), {"models": {}}
    started = time.time()
    print("matmul peak ...", file=sys.stderr, flush=True)
    peaks = {d: matmul_peak(d, args.device, (1024, 2048) if args.quick else (2048, 4096)) for d in ("fp32", "bf16")}
    native_bf16 = args.device == "cuda" or info["avx512_bf16"] or info["amx_bf16"]
    results["matmul_peak_gflops"] = peaks
    print(f"  fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", file=sys.stderr, flush=True)
    # (model, run, GFLOPs, images per second per implementation, which peak): formatted once the peak is final
    rows_roof: list[tuple[str, str, float, dict[str, float | None], str]] = []

    rows_speed, rows_train, rows_mem, rows_compiled = [], [], [], []
    for key in keys:
        spec = SPECS[key]
        batch = QUICK["batch"] if args.quick else spec.batch
        bf16_batch = QUICK["bf16_batch"] if args.quick else spec.bf16_batch
        models = {name: m.to(args.device) for name, m in build(spec, impls).items()}
        gflops = model_gflops(spec)
        entry: dict[str, Any] = {"gflops": gflops}
        plan = [("fp32", batch), ("bf16", bf16_batch), ("fp32", 1), ("bf16", 1)]
        if args.device == "cuda":  # fast bf16 everywhere: same batch, and fp16 too
            plan = [(dtype, b) for b in (batch, 1) for dtype in ("fp32", "bf16", "fp16")]
        if args.compile_only:
            plan = []
        for dtype, b in plan:
            label = f"{dtype} b{b}"
            print(f"{spec.title} {label} ...", file=sys.stderr, flush=True)
            cell = measure_inference(models, b, dtype, args)
            entry[label] = {"seconds": cell.seconds, "error": cell.error}
            med = {i: cell.median(i) for i in IMPLS}
            if b == 1:
                values = [fmt(med[i] * 1e3 if med[i] else None, unit=" ms") for i in IMPLS]
            else:
                values = [fmt(b / med[i] if med[i] else None, unit=" img/s") for i in IMPLS]
            runs = min(len(v) for v in cell.seconds.values())
            rows_speed.append(
                [
                    spec.title,
                    label,
                    *values,
                    ratio(med["transformers"], med["pvtkit"]),
                    ratio(med["timm"], med["pvtkit"]),
                    str(runs),
                    f"{cell.error.get('pvtkit', float('nan')):.1g}",
                ]
            )
            print("  " + " | ".join(rows_speed[-1]), file=sys.stderr, flush=True)  # partial results as they come
            # bf16 emulated on fp32 units is measured against the fp32 peak; native bf16 against the bf16 one
            rates = {i: b / med[i] if med[i] else None for i in IMPLS}
            rows_roof.append((spec.title, label, gflops, rates, "bf16" if dtype != "fp32" and native_bf16 else "fp32"))
        del models
        gc.collect()
        for b in (1, batch) if args.compile else ():
            print(f"{spec.title} compiled fp32 b{b} ...", file=sys.stderr, flush=True)
            cell, first = measure_compiled(spec, impls, b, args)
            entry[f"compiled fp32 b{b}"] = {"seconds": cell.seconds, "first_call": first, "error": cell.error}
            names = ("pvtkit", "transformers", "timm", "pvtkit eager")
            med = {i: cell.median(i) for i in names}
            if b == 1:
                values = [fmt(med[i] * 1e3 if med[i] else None, unit=" ms") for i in names]
            else:
                values = [fmt(b / med[i] if med[i] else None, unit=" img/s") for i in names]
            runs = min(len(v) for v in cell.seconds.values())
            compile_s = " / ".join(fmt(first.get(i), 0) for i in names[:3])
            rows_compiled.append(
                [
                    spec.title,
                    f"fp32 b{b}",
                    *values,
                    ratio(med["transformers"], med["pvtkit"]),
                    ratio(med["timm"], med["pvtkit"]),
                    compile_s,
                    str(runs),
                ]
            )
            print("  " + " | ".join(rows_compiled[-1]), file=sys.stderr, flush=True)
        train_batch = QUICK["train_batch"] if args.quick else spec.train_batch
        if spec.train_batch and not args.no_train:
            print(f"{spec.title} training step b{train_batch} ...", file=sys.stderr, flush=True)
            cell = measure_training(spec, impls, train_batch, args)
            entry["train"] = {"batch": train_batch, "seconds": cell.seconds, "error": cell.error}
            med = {i: cell.median(i) for i in IMPLS}
            values = [fmt(train_batch / med[i] if med[i] else None, unit=" img/s") for i in IMPLS]
            runs = min(len(v) for v in cell.seconds.values())
            rows_train.append(
                [
                    spec.title,
                    f"fp32 b{train_batch}",
                    *values,
                    ratio(med["transformers"], med["pvtkit"]),
                    ratio(med["timm"], med["pvtkit"]),
                    str(runs),
                ]
            )
            print("  " + " | ".join(rows_train[-1]), file=sys.stderr, flush=True)
            rates = {i: train_batch / med[i] if med[i] else None for i in IMPLS}
            rows_roof.append((spec.title, f"train fp32 b{train_batch}", 3 * gflops, rates, "fp32"))
        if not args.no_memory and args.device == "cpu":
            print(f"{spec.title} peak memory ...", file=sys.stderr, flush=True)
            runs_mem = [("inference", batch, False)]
            if spec.train_batch and not args.no_train:
                runs_mem.append(("training step", train_batch, True))
            for what, b, train in runs_mem:
                mem = {i: measure_memory(spec, i, b, args.threads, train) for i in impls}
                entry["memory" if not train else "train_memory"] = mem
                cells = [fmt(mem[i]["forward_mib"], 0) if mem.get(i) else "n/a" for i in IMPLS]
                rss = [fmt(mem[i]["peak_mib"], 0) if mem.get(i) else "n/a" for i in IMPLS]
                rows_mem.append([spec.title, f"{what} fp32 b{b}", *[f"{c} ({p})" for c, p in zip(cells, rss)]])
                print("  " + " | ".join(rows_mem[-1]), file=sys.stderr, flush=True)
        results["models"][key] = entry

    scaling = None
    if not args.no_scaling and {"b2", "b2_linear"} & set(keys):
        sizes = QUICK["sizes"] if args.quick else (224, 512, 768, 1024)
        print("linear SRA vs SRA ...", file=sys.stderr, flush=True)
        scaling = measure_scaling(sizes, args)
        results["scaling"] = scaling

    if rows_roof:  # the peak again at the end, the better of the two kept: one slow moment must not set the limit
        print("matmul peak again ...", file=sys.stderr, flush=True)
        for d in peaks:
            peaks[d] = max(peaks[d], matmul_peak(d, args.device, (1024, 2048) if args.quick else (2048, 4096)))
        print(f"  fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    minutes = (time.time() - started) / 60
    gpu = f", {info['gpu']}" if args.device == "cuda" else ""
    header = (
        f"{info['cpu']} ({info['cores']} cores, {info['isa']}, AVX-512: {'yes' if info['avx512'] else 'no'}, "
        f"AVX512-BF16: {'yes' if info['avx512_bf16'] else 'no'}, AMX-BF16: {'yes' if info['amx_bf16'] else 'no'})"
        f"{gpu}; torch {info['torch']}, transformers {info.get('transformers', 'n/a')}, "
        f"timm {info.get('timm', 'n/a')}, pvtkit {pvtkit.__version__}; {info['threads']} threads, "
        f"device {args.device}; allocator: {'THP_MEM_ALLOC_ENABLE=1' if info['huge_pages'] else 'default'}; "
        f"load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at end; "
        f"{minutes:.0f} min" + (" (--quick)" if args.quick else "")
    )
    lines = [header, ""]
    if rows_speed:
        lines += [
            "| model | run | pvtkit | transformers | timm | vs transformers | vs timm | runs | pvtkit rel. err. |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows_speed]
    if rows_compiled:
        lines += [
            "",
            "Compiled (fp32 inference): pvtkit through `pvtkit.optimize`, transformers and timm through "
            "`torch.compile(model, dynamic=False, options={'freezing': True})`; pvtkit's eager forward beside "
            "them; first call in seconds (compilation included):",
            "",
            "| model | run | pvtkit optimize | transformers compiled | timm compiled | pvtkit eager | "
            "vs transformers | vs timm | first call s (pvtkit / transformers / timm) | runs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows_compiled]
    if rows_train:
        lines += [
            "",
            "Training step (forward, backward, AdamW step):",
            "",
            "| model | run | pvtkit | transformers | timm | vs transformers | vs timm | runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows_train]
    if rows_roof:
        bf16_note = (
            "native bf16 rows against the bf16 peak"
            if native_bf16
            else "no bf16 instructions here: bf16 rows against the fp32 peak (pvtkit emulates bf16 on the fp32 "
            "units; torch's bf16 fallback is far slower)"
        )
        lines += [
            "",
            f"Against the machine's limit: GFLOP/s achieved (share of the measured matmul peak: fp32 "
            f"{peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; {bf16_note}); batch-1 rows are "
            "latency-bound and far from the peak by nature:",
            "",
            "| model | run | GFLOPs per image | pvtkit | transformers | timm |",
            "|---|---|---|---|---|---|",
        ]
        for title, run, gflops, rates, peak in rows_roof:
            shares = [share(rates[i], gflops, peaks[peak]) for i in IMPLS]
            lines.append("| " + " | ".join([title, run, f"{gflops:.2f}", *shares]) + " |")
    if rows_mem:
        lines += [
            "",
            "Peak memory, MiB: the run's own high-water mark above the loaded model (a training step: "
            "above the model and AdamW's state, after a first step; in brackets: the process's peak RSS), one fresh process each:",
            "",
            "| model | run | pvtkit | transformers | timm |",
            "|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows_mem]
    if scaling:
        sizes = sorted(next(iter(scaling.values())))
        lines += [
            "",
            "Linear SRA vs SRA (pvtkit, fp32, batch 1), ms per image:",
            "",
            "| model | " + " | ".join(f"{s}px" for s in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for k, title in (("b2", "PVTv2-B2 (SRA)"), ("b2_linear", "PVTv2-B2-Linear")):
            lines.append(f"| {title} | " + " | ".join(fmt(scaling[k][s] * 1e3, 0) for s in sizes) + " |")
        lines.append(
            "| B2 / B2-Linear | " + " | ".join(ratio(scaling["b2"][s], scaling["b2_linear"][s]) for s in sizes) + " |"
        )
    text = "\n".join(lines)
    print(text)
    results["machine"], results["load"] = info, {"start": load_before, "end": load_after}
    if args.markdown:
        from pvtkit._files import atomic_open

        with atomic_open(args.markdown) as f:
            f.write(text + "\n")
    if args.json:
        from pvtkit._files import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
