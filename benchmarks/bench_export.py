"""ONNX Runtime against PyTorch eager, same weights and inputs: latency at batch 1, throughput at batch 32.

For each model three runs are timed on the CPU: PyTorch eager (`inference_mode`), ONNX Runtime on the model's
own forward exported in its plain layout ("ORT plain", `export_onnx(..., fast_layout=False)`: the layout
whai362/PVT#103 measured), and ONNX Runtime on `pvtkit.export.export_onnx`'s default file ("ORT pvtkit", the MLP in
the layout ONNX Runtime runs fastest). Every ONNX output is checked against eager on the timed inputs
before it is timed; optionally the dynamic-int8 file too (`--int8`). Random weights (timing does not depend on
them).

    python benchmarks/bench_export.py [--models b0,b2_linear] [--batches 1,32] [--size 224] [--threads N]
                                      [--repeats 10] [--int8 b0] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import pvtkit
from pvtkit.export import export_onnx

TOL = 1e-4


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("vit_"):
        return pvtkit.ViTForImageClassification(pvtkit.ViTConfig.from_variant(name.removeprefix("vit_"))).eval()
    return pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config.from_variant(name)).eval()


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_session(path: Path, threads: int, x: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds per run, the output) of an ONNX Runtime session on `x`."""
    s = session(path, threads)
    out = s.run(None, {"pixel_values": x})[0]
    return timed(lambda: s.run(None, {"pixel_values": x}), repeats), out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="b0,b2_linear", help="PVTv2 variants, or vit_<variant>")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="threads for both runtimes (default: all cores)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--int8", default="", help="models whose dynamic-int8 file is also timed, e.g. b0")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    batches = [int(b) for b in args.batches.split(",")]
    int8 = set(filter(None, args.int8.split(",")))
    columns = ["eager", "ORT plain", "ORT pvtkit"] + (["ORT pvtkit int8"] if int8 else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = build(name)
            files = {"ORT plain": Path(tmp, f"{name}-plain.onnx"), "ORT pvtkit": Path(tmp, f"{name}.onnx")}
            export_onnx(model, files["ORT plain"], fast_layout=False, verify=False, image_size=args.size)
            report = export_onnx(model, files["ORT pvtkit"], image_size=args.size)
            print(f"{name}: pvtkit export verified, largest relative difference {report.max_rel_diff:.2g}")
            if name in int8:
                files["ORT pvtkit int8"] = Path(tmp, f"{name}-int8.onnx")
                q = export_onnx(model, files["ORT pvtkit int8"], quantize="dynamic", image_size=args.size).quantization
                print(
                    f"{name}: int8 top-1 agreement {q['top1_agreement']:.0%} on {q['images']} {q['source']}, "
                    f"max logit drift {q['max_logit_drift']:.3g}"
                )
            for batch in batches:
                x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
                with torch.inference_mode():
                    expected = model(x).logits.numpy()
                    seconds = {"eager": timed(lambda model=model, x=x: model(x), args.repeats)}
                diffs = {}
                for column, file in files.items():
                    seconds[column], got = time_session(file, threads, x.numpy(), args.repeats)
                    diffs[column] = rel(got, expected)
                    if column != "ORT pvtkit int8" and diffs[column] > TOL:
                        raise SystemExit(f"{name} {column}: relative difference {diffs[column]:.3g} > {TOL}")
                    gc.collect()  # the session's threads go before the next one starts
                rows.append((name, batch, seconds, diffs))
                shown = "  ".join(f"{c} {seconds[c] * 1e3:.1f} ms" for c in columns if c in seconds)
                print(f"{name} batch {batch}: {shown}", flush=True)

    cpu = _cpu_name()
    head = (
        f"CPU {cpu}, {threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{args.size}x{args.size}, median of {args.repeats}"
    )
    lines = [
        head,
        "",
        "| model | batch | " + " | ".join(columns) + " | pvtkit vs eager | max rel diff (pvtkit) |",
        "|---|---:|" + "---:|" * len(columns) + "---:|---:|",
    ]
    for name, batch, seconds, diffs in rows:
        if batch == 1:
            cells = [f"{seconds[c] * 1e3:.1f} ms" if c in seconds else "" for c in columns]
        else:
            cells = [f"{batch / seconds[c]:.3g} img/s" if c in seconds else "" for c in columns]
        speed = seconds["eager"] / seconds["ORT pvtkit"]
        lines.append(f"| {name} | {batch} | " + " | ".join(cells) + f" | {speed:.2f}x | {diffs['ORT pvtkit']:.1e} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
