"""Detection speed and memory: pvtkit's Deformable DETR against transformers', side by side, in one process.

Both hold the same random weights (pvtkit's init, loaded into transformers through the files pvtkit writes, which
are transformers' format) and get the same inputs; outputs are checked against transformers' before anything is
timed. Runs are interleaved with the order alternating every round and the median is reported (bench_models.py's
harness). Measured, fp32:

  * inference with a PVTv2-B0 and a PVTv2-B2 backbone (transformers runs pvtkit's configs through its own PVTv2), at
    800x1333 (COCO's test size) and 512x512, batch 1 and 4;
  * peak memory of each forward and training step, each implementation in a fresh subprocess (Linux VmHWM above
    the model (and, for the step, its optimizer state) before it);
  * a training step (train mode, forward with 3-object labels per image, Hungarian matching, focal + L1 + GIoU
    loss, backward, AdamW step), batch 2 at 512x512 by default (`--train-batch`, `--train-size`); the first step's
    losses are the check.

    python benchmarks/bench_detection.py [--quick] [--only b0,b2] [--sizes 800x1333,512x512] [--batches 1,4]
                                         [--train-batch 2] [--train-size 512x512] [--markdown out.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch

import pvtkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import compared, fmt, machine, print_peak, ratio, run_memory_child  # noqa: E402

IMPLS = ("pvtkit", "transformers")
BACKBONES = {"b0": "deformable_detr_pvt_v2_b0", "b2": "deformable_detr_pvt_v2_b2"}
QUICK = {"repeats": 2, "budget": 10.0}


def build(key: str, impls: tuple[str, ...], **overrides: Any) -> dict[str, torch.nn.Module]:
    import transformers

    torch.manual_seed(0)
    config = pvtkit.DeformableDetrConfig.from_variant(BACKBONES[key], **overrides)
    ours = pvtkit.DeformableDetrForObjectDetection(config)
    models = {"pvtkit": ours}
    if "transformers" in impls:
        with tempfile.TemporaryDirectory() as tmp:
            ours.save_pretrained(tmp)
            models["transformers"] = transformers.DeformableDetrForObjectDetection.from_pretrained(tmp)
    return {name: models[name].eval() for name in impls}


def inputs(shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """Pixels and a mask that pads the last image of a batch by a quarter on the right and bottom (a batch of mixed
    sizes, as a processor pads it)."""
    b, _, h, w = shape
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(b, h, w, dtype=torch.long)
    if b > 1:
        mask[-1, h * 3 // 4 :] = 0
        mask[-1, :, w * 3 // 4 :] = 0
    return {"pixel_values": x, "pixel_mask": mask}


def measure(models: dict[str, torch.nn.Module], shape: tuple[int, ...], args: Any):
    feed = inputs(shape)

    def forward(model):
        def run():
            with torch.inference_mode():
                out = model(**feed)
            return torch.cat([out.logits.flatten(), out.pred_boxes.flatten()])

        return run

    return compared({name: forward(m) for name, m in models.items()}, args, 1e-4, "outputs")


def labels_for(batch: int, num_labels: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(batch):
        centres = torch.rand(3, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(3, 2, generator=g) * 0.2 + 0.05
        out.append(
            {
                "class_labels": torch.randint(0, num_labels, (3,), generator=g),
                "boxes": torch.cat([centres, sizes], 1),
            }
        )
    return out


def training_step(model: torch.nn.Module, feed: dict[str, torch.Tensor], labels: list[dict]) -> Any:
    """One training step of `model` (train mode, AdamW) as a function returning the step's loss."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> torch.Tensor:
        loss = model(**feed, labels=[dict(t) for t in labels]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure_training(key: str, shape: tuple[int, ...], args: Any):
    """One training step each on the same starting weights (dropout off, so the first losses must agree; the
    auxiliary losses on, as training has them)."""
    models = build(key, IMPLS, dropout=0.0, auxiliary_loss=True)
    feed = inputs(shape, seed=1)
    labels = labels_for(shape[0], models["pvtkit"].config.num_labels)
    fns = {name: training_step(model, feed, labels) for name, model in models.items()}
    return compared(fns, args, 1e-4, "training losses")  # the first step (identical weights) is the check


def memory_child(key: str, impl: str, batch: int, height: int, width: int, train: bool = False) -> None:
    """In a fresh process: build one model, reset the RSS high-water mark, run one forward (with `train`: one
    training step after a first one, so the optimizer state exists), print the peaks (MiB)."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if train:
        model = build(key, (impl,), dropout=0.0, auxiliary_loss=True)[impl]
        run = training_step(
            model, inputs((batch, 3, height, width), seed=1), labels_for(batch, model.config.num_labels)
        )
        run()
    else:
        model = build(key, (impl,))[impl]
        feed = inputs((batch, 3, height, width))

        def run() -> None:
            with torch.inference_mode():
                model(**feed)

    print_peak(run)


def measure_memory(
    key: str, impl: str, shape: tuple[int, ...], threads: int, train: bool = False
) -> dict[str, float] | None:
    b, _, h, w = shape
    return run_memory_child(__file__, [key, impl, str(b), str(h), str(w), *(["train"] if train else [])], threads)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH (e.g. 800x1333), got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"{text}: sides of at least 32 pixels")
    return h, w


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512x512 batch 1 only, 2 repeats: a smoke run")
    parser.add_argument("--only", help=f"comma-separated backbones among {','.join(BACKBONES)} (default: all)")
    parser.add_argument("--sizes", default="800x1333,512x512", help="HxW inputs (default 800x1333,512x512)")
    parser.add_argument("--batches", default="1,4", help="batch sizes (default 1,4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per measurement (median)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds one measurement may spend repeating")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--train-batch", type=int, default=2, help="batch of the training-step rows (0: none)")
    parser.add_argument("--train-size", type=parse_size, default=(512, 512), help="HxW of the training step")
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        key, impl, *dims = args.memory_child
        memory_child(key, impl, *map(int, dims[:3]), train=dims[3:] == ["train"])
        return 0
    keys = list(BACKBONES) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BACKBONES]
    if unknown:
        parser.error(f"--only: unknown backbone(s) {unknown}; expected some of {','.join(BACKBONES)}")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        args.repeats, args.budget, sizes, batches = QUICK["repeats"], QUICK["budget"], [(512, 512)], [1]
    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg(), time.time()
    info, results, rows, train_rows = machine(), {}, [], []
    for key in keys:
        models = build(key, IMPLS)
        for h, w in sizes:
            for batch in batches:
                shape = (batch, 3, h, w)
                cell = measure(models, shape, args)
                ours, theirs = cell.median("pvtkit"), cell.median("transformers")
                memory = (
                    {} if args.no_memory else {impl: measure_memory(key, impl, shape, args.threads) for impl in IMPLS}
                )
                mem = {impl: (m or {}).get("forward_mib") for impl, m in memory.items()}
                results[f"{key}_{h}x{w}_b{batch}"] = {
                    "shape": list(shape),
                    "seconds": cell.seconds,
                    "error": cell.error,
                    "memory": memory,
                }
                rows.append(
                    f"| PVTv2-{key.upper()} | {h}x{w} | {batch} | {fmt(ours * 1000, 0)} | {fmt(theirs * 1000, 0)} | "
                    f"{ratio(theirs, ours)} | {fmt(mem.get('pvtkit'), 0)} | {fmt(mem.get('transformers'), 0)} | "
                    f"{cell.error.get('pvtkit', float('nan')):.1e} |"
                )
                print(rows[-1], flush=True)
        del models
        gc.collect()
        if args.train_batch > 0:
            th, tw = (512, 512) if args.quick else args.train_size
            shape = (args.train_batch, 3, th, tw)
            cell = measure_training(key, shape, args)
            ours, theirs = cell.median("pvtkit"), cell.median("transformers")
            memory = (
                {}
                if args.no_memory
                else {impl: measure_memory(key, impl, shape, args.threads, train=True) for impl in IMPLS}
            )
            mem = {impl: (m or {}).get("forward_mib") for impl, m in memory.items()}
            results[f"{key}_train_b{args.train_batch}"] = {
                "shape": list(shape),
                "seconds": cell.seconds,
                "error": cell.error,
                "memory": memory,
            }
            train_rows.append(
                f"| PVTv2-{key.upper()} | {th}x{tw} | {args.train_batch} | {fmt(ours * 1000, 0)} | "
                f"{fmt(theirs * 1000, 0)} | {ratio(theirs, ours)} | {fmt(mem.get('pvtkit'), 0)} | "
                f"{fmt(mem.get('transformers'), 0)} | {cell.error.get('pvtkit', float('nan')):.1e} |"
            )
            print(train_rows[-1], flush=True)
            gc.collect()
    load_after = os.getloadavg()
    lines = [
        f"{info['cpu']}, {args.threads} threads, torch {info['torch']}, transformers {info.get('transformers')}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.time() - started:.0f} s",
        "",
        "Deformable DETR (300 queries, 91 classes, 6+6 layers), fp32 inference:",
        "",
        "| backbone | input | batch | pvtkit ms | transformers ms | speed-up | pvtkit forward MiB | "
        "transformers forward MiB | rel. error |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if train_rows:
        lines += [
            "",
            "Training step (forward with labels, Hungarian matching, focal + L1 + GIoU loss, backward, AdamW):",
            "",
            "| backbone | input | batch | pvtkit ms | transformers ms | speed-up | pvtkit step MiB | "
            "transformers step MiB | first-step loss rel. error |",
            "|---|---|---|---|---|---|---|---|---|",
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
