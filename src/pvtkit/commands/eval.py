"""`pvtkit eval`: accuracy, top-5 accuracy, per-class accuracy and a confusion matrix on class folders; mIoU,
per-class IoU and pixel accuracies of a segmentation model on images and masks."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from ._common import (
    HelpFormatter, add_workers_argument,
    UsageError, add_compile_argument, add_device_arguments,
    add_model_arguments, checkpoint_task, load_model, load_processor, on_every_rank,
    open_output, resolve_device, resolve_dtype,
)  # fmt: skip


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "eval",
        help="accuracy of a classifier on class folders, or mIoU of a segmentation model on images and masks",
        description="Evaluate an image classifier on a folder of class folders (or on DIR/val/ or DIR/validation/ "
        "when DIR has one). Folders are matched to the model's labels (id2label) by name; images go through the "
        "model's own image processor. Unreadable images are skipped and listed. Runs sharded under torchrun.\n\n"
        "A segmentation model (or --task semantic-segmentation) is evaluated on images and masks in the layouts of "
        "`pvtkit train --help`: intersection and union per class summed over the whole set (as mmsegmentation and "
        "evaluate's mean_iou count them), then mIoU, per-class IoU, pixel accuracy and mean class accuracy; logits "
        "are upsampled to each image's own size.",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, default=None)
    parser.add_argument("--data", "-d", required=True, help="folder of class folders, or a dataset with val/; for segmentation, images "
                        "and masks in a layout of `pvtkit train --help`")
    parser.add_argument("--val-fraction", type=float, help="evaluate only the stratified hold-out that `pvtkit "
                        "train --val-fraction` validated on (for data without a val/ folder)")  # fmt: skip
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="table for people, json (one object) for scripts")  # fmt: skip
    parser.add_argument("--output", "-o", help="write the report to this file (atomically) instead of stdout")
    parser.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix into this PNG file")
    parser.add_argument("--task", choices=["image-classification", "semantic-segmentation"],
                        help="what the model does (default: read from its config's architectures)")  # fmt: skip
    parser.add_argument("--mode", choices=["whole", "slide"], default="whole", help="segmentation: whole images "
                        "resized by the processor, or sliding windows of its size over the image resized to that "
                        "short side (mmsegmentation's 'slide')")  # fmt: skip
    parser.add_argument("--reduce-labels", action="store_const", const=True, help="segmentation: mask value 0 is "
                        "'other' (ignored), k is class k-1 (default: the processor's do_reduce_labels)")  # fmt: skip
    parser.add_argument("--batch-size", "-b", type=int, help="images per batch (default 64; 8 for segmentation)")
    add_workers_argument(parser, "data-loading processes")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_device_arguments(parser)
    add_compile_argument(parser)
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


def write_segmentation_table(stream: IO[str], report: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    classes = report["per_class"]
    stream.write(f"model             {report['model']}\n")
    stream.write(f"data              {report['data']} ({report['num_images']} images, {len(classes)} classes, "
                 f"{report['mode']} mode)\n")  # fmt: skip
    stream.write(f"mIoU              {pct(report['mean_iou'])}\n")
    stream.write(f"pixel accuracy    {pct(report['overall_accuracy'])}\n")
    stream.write(f"mean class acc    {pct(report['mean_accuracy'])}\n")
    stream.write(f"loss              {report['loss']:.4f}\n" if report["loss"] is not None else "loss              -\n")
    if report["skipped"]:
        stream.write(f"skipped           {len(report['skipped'])} unreadable pair(s):\n")
        for path, reason in report["skipped"].items():
            stream.write(f"  {path}: {reason}\n")
    width = max(5, *(len(name) for name in classes))
    stream.write(f"\n{'class':<{width}}       IoU  accuracy      pixels   predicted\n")
    for name, row in classes.items():
        stream.write(f"{name:<{width}}  {pct(row['iou']):>8}  {pct(row['accuracy']):>8}  {row['pixels']:>10}  "
                     f"{row['predicted_pixels']:>10}\n")  # fmt: skip
    stream.write("\n(-: the class is in neither the masks nor the predictions (IoU) / not in the masks (accuracy); "
                 "left out of the means)\n")  # fmt: skip


def _is_segmentation(args: argparse.Namespace) -> bool:
    """--task, else the task of the model's class (its config's `architectures`)."""
    if args.task is not None:
        return args.task == "semantic-segmentation"
    return checkpoint_task(args) == "semantic-segmentation"


def run(args: argparse.Namespace) -> int:
    from ..auto import AutoModelForImageClassification, AutoModelForSemanticSegmentation
    from ..distributed import init_distributed
    from ..evaluation import LayoutError, evaluate, evaluate_segmentation

    segmentation = _is_segmentation(args)
    if args.batch_size is None:
        args.batch_size = 8 if segmentation else 64
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not segmentation and (args.reduce_labels or args.mode != "whole"):
        raise UsageError("--reduce-labels and --mode are for segmentation models (or --task semantic-segmentation)")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    with on_every_rank():
        ctx = init_distributed(device)
        model = load_model(AutoModelForSemanticSegmentation if segmentation else AutoModelForImageClassification, args)
        processor = load_processor(args, model)
        if args.compile:
            from ..compiling import optimize_for

            optimize_for(model.to(device), args.batch_size, device)
        common = dict(processor=processor, val_fraction=args.val_fraction, batch_size=args.batch_size,
                      num_workers=args.num_workers, device=device, dtype=dtype, confusion=args.confusion,
                      progress=not args.quiet)  # fmt: skip
        try:
            if segmentation:
                result: Any = evaluate_segmentation(model, args.data, reduce_labels=args.reduce_labels,
                                                    mode=args.mode, **common)  # fmt: skip
            else:
                result = evaluate(model, args.data, **common)
        except LayoutError as e:
            raise UsageError(str(e)) from e
    if not ctx.is_main:
        return 0
    report = {"model": args.model, "data": args.data, **result.to_dict()}
    with open_output(args.output) as stream:
        if args.format == "json":
            stream.write(json.dumps(report, ensure_ascii=False) + "\n")
        elif segmentation:
            write_segmentation_table(stream, report)
        else:
            write_table(stream, report)
    return 0
