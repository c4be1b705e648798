"""Dense prediction speed and memory: pvtkit's SegFormer and GLPN against transformers', side by side, in one process.

Both implementations hold the same random weights (pvtkit's init, loaded into transformers through the files
pvtkit writes, which are transformers' format) and get the same inputs; outputs are checked against transformers'
before anything is timed. Runs are interleaved with the order alternating every round, the median is reported
(the harness of bench_models.py). Measured, fp32 inference:

  * SegFormer-B0 (ADE20k head, 150 classes) at 512x512, batch 1 and 8;
  * SegFormer-B2 (Cityscapes head, 19 classes) at 1024x1024, batch 1 and 8;
  * GLPN (MiT-B4, NYU) at 480x640, batch 1 and 8;
  * peak memory of each forward, each model and implementation in a fresh subprocess (Linux VmHWM);
  * a GLPN training step (forward with depth labels, the scale-invariant log loss, backward, AdamW step) on the same
    weights, batch 2 at 480x640 (`--train-batch`, `--train-size`; the first step's losses are checked).

    python benchmarks/bench_dense.py [--quick] [--only b0,b2,glpn] [--train-batch 2] [--train-size 480x640]
                                     [--markdown out.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

import pvtkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import compared, fmt, machine, print_peak, ratio, run_memory_child  # noqa: E402

IMPLS = ("pvtkit", "transformers")


@dataclass(frozen=True)
class Spec:
    key: str
    title: str
    family: str  # "segformer" or "glpn"
    variant: str
    num_labels: int
    size: tuple[int, int]
    batches: tuple[int, ...]


SPECS = {
    "b0": Spec("b0", "SegFormer-B0 (ADE20k, 150 classes)", "segformer", "b0", 150, (512, 512), (1, 8)),
    "b2": Spec("b2", "SegFormer-B2 (Cityscapes, 19 classes)", "segformer", "b2", 19, (1024, 1024), (1, 8)),
    "glpn": Spec("glpn", "GLPN (MiT-B4, NYU)", "glpn", "nyu", 0, (480, 640), (1, 8)),
}
QUICK = {"repeats": 2, "budget": 10.0, "scale": 4}  # --quick: inputs a quarter the side, batch 1 only


def build(spec: Spec, impls: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    import transformers

    torch.manual_seed(0)
    if spec.family == "segformer":
        ours: torch.nn.Module = pvtkit.SegformerForSemanticSegmentation(
            pvtkit.SegformerConfig.from_variant(spec.variant, num_labels=spec.num_labels)
        )
        theirs_cls = transformers.SegformerForSemanticSegmentation
    else:
        ours = pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig.from_variant(spec.variant))
        theirs_cls = transformers.GLPNForDepthEstimation
    models = {"pvtkit": ours}
    if "transformers" in impls:
        with tempfile.TemporaryDirectory() as tmp:  # transformers 5 renames modules on load: its own loader
            ours.save_pretrained(tmp)
            models["transformers"] = theirs_cls.from_pretrained(tmp)
    return {name: models[name].eval() for name in impls}


def output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.predicted_depth


def measure(models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: Any):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))

    def forward(model):
        def run():
            with torch.inference_mode():
                return output(model, x)

        return run

    fns = {name: forward(m) for name, m in models.items()}
    return compared(fns, args, 1e-4, "outputs")  # the first call checks the outputs and warms up


def measure_training(spec: Spec, shape: tuple[int, ...], args: Any):
    """One training step each (train mode, forward with labels, backward, AdamW step) on the same starting weights;
    the first step's losses (identical weights, identical inputs) are the check."""
    models = build(spec, IMPLS)
    b, _, h, w = shape
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    labels = torch.rand(b, h, w, generator=torch.Generator().manual_seed(2)) * 9.0 + 0.5
    labels[:, : h // 8] = 0  # rows without ground truth, as real depth maps have
    fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            loss = model(x, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        fns[name] = step
    return compared(fns, args, 1e-4, "training losses")  # the first step (identical weights) is the check


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH (e.g. 480x640), got {text!r}") from None
    if h % 32 or w % 32 or h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"{text}: transformers' GLPN takes sides that are multiples of 32 only")
    return h, w


def memory_child(key: str, impl: str, batch: int, height: int, width: int) -> None:
    """In a fresh process: build one model, reset the RSS high-water mark, run one forward, print the peaks (MiB)."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = build(SPECS[key], (impl,))[impl]
    x = torch.randn(batch, 3, height, width)

    def run() -> None:
        with torch.inference_mode():
            output(model, x)

    print_peak(run)


def measure_memory(key: str, impl: str, shape: tuple[int, ...], threads: int) -> dict[str, float] | None:
    b, _, h, w = shape
    return run_memory_child(__file__, [key, impl, str(b), str(h), str(w)], threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quarter-side inputs, batch 1, 2 repeats: a smoke run")
    parser.add_argument("--only", help=f"comma-separated models among {','.join(SPECS)} (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per measurement (median)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds one measurement may spend repeating")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--train-batch", type=int, default=2, help="batch of the GLPN training-step row (default 2; 0: no such row)"
    )
    parser.add_argument(
        "--train-size", type=parse_size, default=(480, 640), help="HxW of the GLPN training step (default 480x640)"
    )
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        key, impl, *dims = args.memory_child
        memory_child(key, impl, *map(int, dims))
        return 0
    keys = list(SPECS) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SPECS]
    if unknown:
        parser.error(f"--only: unknown model(s) {unknown}; expected some of {','.join(SPECS)}")
    if args.quick:
        args.repeats, args.budget = QUICK["repeats"], QUICK["budget"]
    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg(), time.time()
    info, results, rows, train_rows = machine(), {}, [], []
    for key in keys:
        spec = SPECS[key]
        models = build(spec, IMPLS)
        # --quick: a quarter the side, kept a multiple of 32 (transformers' GLPN takes only those)
        h, w = (max(s // QUICK["scale"] // 32 * 32, 32) for s in spec.size) if args.quick else spec.size
        for batch in (1,) if args.quick else spec.batches:
            shape = (batch, 3, h, w)
            cell = measure(models, shape, args)
            ours, theirs = cell.median("pvtkit"), cell.median("transformers")
            memory = {} if args.no_memory else {impl: measure_memory(key, impl, shape, args.threads) for impl in IMPLS}
            mem = {impl: (m or {}).get("forward_mib") for impl, m in memory.items()}
            results[f"{key}_b{batch}"] = {
                "shape": list(shape),
                "seconds": cell.seconds,
                "error": cell.error,
                "memory": memory,
            }
            rows.append(
                f"| {spec.title} | {h}x{w} | {batch} | {fmt(batch / ours, 2)} | {fmt(batch / theirs, 2)} | "
                f"{ratio(theirs, ours)} | {fmt(mem.get('pvtkit'), 0)} | {fmt(mem.get('transformers'), 0)} | "
                f"{cell.error.get('pvtkit', float('nan')):.1e} |"
            )
            print(rows[-1], flush=True)
        del models
        gc.collect()
        if spec.family == "glpn" and args.train_batch > 0:
            th, tw = (
                (max(v // QUICK["scale"] // 32 * 32, 32) for v in args.train_size) if args.quick else args.train_size
            )
            shape = (args.train_batch, 3, th, tw)
            cell = measure_training(spec, shape, args)
            ours, theirs = cell.median("pvtkit"), cell.median("transformers")
            results[f"{key}_train_b{args.train_batch}"] = {
                "shape": list(shape),
                "seconds": cell.seconds,
                "error": cell.error,
            }
            train_rows.append(
                f"| {spec.title} | {th}x{tw} | {args.train_batch} | {fmt(args.train_batch / ours, 2)} | "
                f"{fmt(args.train_batch / theirs, 2)} | {ratio(theirs, ours)} | {cell.error.get('pvtkit', float('nan')):.1e} |"
            )
            print(train_rows[-1], flush=True)
            gc.collect()
    header = [
        "| model | input | batch | pvtkit img/s | transformers img/s | speed-up | pvtkit forward MiB | "
        "transformers forward MiB | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    load_after = os.getloadavg()
    lines = [
        f"{info['cpu']}, {args.threads} threads, torch {info['torch']}, transformers {info.get('transformers')}, "
        f"huge pages {'on' if info['huge_pages'] else 'off'}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {time.time() - started:.0f} s",
        "",
        *header,
        *rows,
    ]
    if train_rows:
        lines += [
            "",
            "Training step (train mode, forward with depth labels, scale-invariant log loss, backward, AdamW step):",
            "",
            "| model | input | batch | pvtkit img/s | transformers img/s | speed-up | first-step loss rel. error |",
            "|---|---|---|---|---|---|---|",
            *train_rows,
        ]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "load": [load_before, load_after], "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
