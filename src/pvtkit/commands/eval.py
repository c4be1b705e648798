"""`pvtkit eval`: accuracy, top-5 accuracy, per-class accuracy and a confusion matrix on class folders."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from ._common import (
    UsageError, add_device_arguments, add_model_arguments, load_model, load_processor, on_every_rank, open_output,
    resolve_device, resolve_dtype,
)  # fmt: skip


def register(sub: Any) -> None:
    from ..distributed import default_workers

    parser = sub.add_parser(
        "eval",
        help="accuracy, top-5 and per-class accuracy of a classifier on class folders",
        description="Evaluate an image classifier on a folder of class folders (or on DIR/val/ or DIR/validation/ "
        "when DIR has one). Folders are matched to the model's labels (id2label) by name; images go through the "
        "model's own image processor. Unreadable images are skipped and listed. Runs sharded under torchrun.",
    )
    add_model_arguments(parser, default=None)
    parser.add_argument("--data", "-d", required=True, help="folder of class folders, or a dataset with val/")
    parser.add_argument("--val-fraction", type=float, help="evaluate only the stratified hold-out that `pvtkit "
                        "train --val-fraction` validated on (for data without a val/ folder)")  # fmt: skip
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="table for people, json (one object) for scripts (default table)")  # fmt: skip
    parser.add_argument("--output", "-o", help="write the report to this file (atomically) instead of stdout")
    parser.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix into this PNG file")
    parser.add_argument("--batch-size", "-b", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=default_workers(),
                        help="data-loading processes (default %(default)s)")  # fmt: skip
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def write_table(stream: IO[str], report: dict[str, Any]) -> None:
    classes = report["per_class"]
    stream.write(f"model     {report['model']}\n")
    stream.write(f"data      {report['data']} ({report['num_images']} images, {len(classes)} classes)\n")
    stream.write(f"accuracy  {report['accuracy']:.2%}\n")
    stream.write(f"top-5     {report['top5_accuracy']:.2%}\n")
    stream.write(f"loss      {report['loss']:.4f}\n")
    if report["skipped"]:
        stream.write(f"skipped   {len(report['skipped'])} unreadable image(s):\n")
        for path, reason in report["skipped"].items():
            stream.write(f"  {path}: {reason}\n")
    width = max(5, *(len(name) for name in classes))
    stream.write(f"\n{'class':<{width}}  accuracy  correct / images\n")
    for name, row in classes.items():
        accuracy = f"{row['accuracy']:.2%}" if row["accuracy"] is not None else "-"
        stream.write(f"{name:<{width}}  {accuracy:>8}  {row['correct']:>7} / {row['num_images']}\n")


def run(args: argparse.Namespace) -> int:
    from ..auto import AutoModelForImageClassification
    from ..distributed import init_distributed
    from ..evaluation import evaluate

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    with on_every_rank():
        ctx = init_distributed(device)
        model = load_model(AutoModelForImageClassification, args)
        processor = load_processor(args, model)
        result = evaluate(
            model, args.data, processor=processor, val_fraction=args.val_fraction, batch_size=args.batch_size,
            num_workers=args.num_workers, device=device, dtype=dtype, confusion=args.confusion,
            progress=not args.quiet,
        )  # fmt: skip
    if not ctx.is_main:
        return 0
    report = {"model": args.model, "data": args.data, **result.to_dict()}
    with open_output(args.output) as stream:
        if args.format == "json":
            stream.write(json.dumps(report, ensure_ascii=False) + "\n")
        else:
            write_table(stream, report)
    return 0
