"""`pvtkit eval`: accuracy, top-5 accuracy, per-class accuracy and a confusion matrix on class folders; mIoU,
per-class IoU and pixel accuracies of a segmentation model on images and masks; AbsRel, RMSE, delta and the other
depth metrics of a depth model on images and depth maps; COCO mAP (pycocotools) of a detector on COCO-format data."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import (
    HelpFormatter,
    UsageError,
    add_compile_argument,
    add_device_arguments,
    add_model_arguments,
    add_workers_argument,
    checkpoint_task,
    load_model,
    load_processor,
    on_every_rank,
    open_output,
    resolve_device,
    resolve_dtype,
)


def register(sub: Any) -> None:
    from .. import tasks

    parser = sub.add_parser(
        "eval",
        help="accuracy of a classifier on class folders, mIoU of a segmentation model on images and masks, the "
        "depth metrics of a depth model on images and depth maps, or COCO mAP of a detector on COCO-format data",
        description="Evaluate an image classifier on a folder of class folders (or on DIR/val/ or DIR/validation/ "
        "when DIR has one). Folders are matched to the model's labels (id2label) by name; images go through the "
        "model's own image processor. Unreadable images are skipped and listed. Runs sharded under torchrun.\n\n"
        "A segmentation model (or --task semantic-segmentation) is evaluated on images and masks in the layouts of "
        "`pvtkit train --help`: intersection and union per class summed over the whole set (as mmsegmentation and "
        "evaluate's mean_iou count them), then mIoU, per-class IoU, pixel accuracy and mean class accuracy, Dice (= F1), "
        "precision and recall, and Boundary IoU (each class's pixels within 2% of the image diagonal of its contour, "
        "in the masks and in the predictions; Cheng et al. 2021); logits are upsampled to each image's own size.\n\n"
        "A depth model (or --task depth) is evaluated on images and depth maps (`pvtkit train --help`): AbsRel, SqRel, "
        "RMSE, RMSE-log, log10, delta < 1.25^i and SILog per image over its valid pixels, then the mean over images."
        "\n\nA detection model (or --task detection) is evaluated on COCO-format data (`pvtkit train --help`): COCO's "
        "AP @[.50:.95], AP50, AP75, AP and AR by object size and per-class AP by pycocotools, over each image's 100 "
        "best (query, class) detections; --detections also writes them in COCO's results format.\n\n"
        "--compare MODEL_A MODEL_B evaluates two segmentation models on the same data and prints their per-class "
        "IoU side by side with the difference (and the means: mIoU, mDice, boundary mIoU, accuracies).\n\n"
        "When the model is a `pvtkit train` run whose training_args.json names this same data folder and the "
        "evaluation is not on a split that run held out, a warning on stderr says so: most of the images were "
        "seen in training, and it says how to get the honest number.",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser, default=argparse.SUPPRESS)
    parser.set_defaults(model=None)  # required unless --compare names the models
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("MODEL_A", "MODEL_B"),
        help="segmentation: evaluate these two models (instead of --model) on the same data and print their "
        "per-class IoU side by side, with B - A",
    )
    parser.add_argument(
        "--data",
        "-d",
        required=True,
        help="folder of class folders, or a dataset with val/; for segmentation, images "
        "and masks in a layout of `pvtkit train --help`",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="evaluate only the stratified hold-out that `pvtkit "
        "train --val-fraction` validated on (for data without a val/ folder)",
    )
    parser.add_argument(
        "--format", choices=["table", "json"], default="table", help="table for people, json (one object) for scripts"
    )
    parser.add_argument("--output", "-o", help="write the report to this file (atomically) instead of stdout")
    parser.add_argument("--confusion", metavar="PNG", help="also draw the confusion matrix into this PNG file")
    parser.add_argument(
        "--task",
        choices=[name for t in tasks.trainable() for name in t.names],
        help="what the model does: " + " or ".join(t.name for t in tasks.trainable()) + " (or their "
        "short names; default: read from its config's architectures)",
    )
    parser.add_argument(
        "--mode",
        choices=["whole", "slide"],
        default="whole",
        help="segmentation: whole images "
        "resized by the processor, or sliding windows of its size over the image resized to that "
        "short side (mmsegmentation's 'slide')",
    )
    parser.add_argument(
        "--reduce-labels",
        action="store_const",
        const=True,
        help="segmentation: mask value 0 is "
        "'other' (ignored), k is class k-1 (default: the processor's do_reduce_labels)",
    )
    parser.add_argument(
        "--depth-scale",
        type=float,
        help="depth: 16-bit PNG maps hold metres x this (default 1000, NYU's millimetres; KITTI 256)",
    )
    parser.add_argument("--min-depth", type=float, help="depth: ground truth below is invalid (default 0.001 m)")
    parser.add_argument(
        "--max-depth",
        type=float,
        help="depth: ground truth above is invalid, predictions clipped to it (default: the model's max_depth)",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="depth and segmentation (test-time augmentation): average each prediction with the mirrored image's, "
        "mirrored back (depth: GLPN's evaluation; segmentation: the softmax probabilities, at every --scales)",
    )
    parser.add_argument(
        "--scales",
        metavar="R,R,...",
        help="segmentation, test-time augmentation: also run the image resized by these ratios (of the processor's "
        "size; in slide mode of the image the windows slide over) and average the softmax probabilities at the "
        "image's size, as mmsegmentation's multi-scale test; its ratios are 0.5,0.75,1,1.25,1.5,1.75 (default: 1)",
    )
    parser.add_argument(
        "--aligned-resize",
        action="store_true",
        help="segmentation: round each view's sides up to a multiple of 32 (SegFormer's evaluation resize)",
    )
    parser.add_argument(
        "--crop",
        choices=["eigen", "garg"],
        help="depth: count only the pixels inside the standard KITTI evaluation crop (Garg: rows 0.408-0.992, "
        "columns 0.036-0.964 of the map; Eigen: rows 0.332-0.914, the same columns)",
    )
    parser.add_argument(
        "--median-scaling",
        action="store_true",
        help="depth: scale each prediction by median(ground truth) / median(prediction) over its valid pixels first",
    )
    parser.add_argument(
        "--per-image",
        metavar="CSV",
        help="depth: also write one CSV row per image (path, each metric, valid pixels) to this file",
    )
    parser.add_argument(
        "--worst",
        metavar="PNG",
        help="depth: also draw the 6 images with the highest AbsRel into this PNG, one row each (image, ground "
        "truth, prediction, absolute error; captioned with the path, AbsRel and delta1)",
    )
    parser.add_argument(
        "--detections",
        metavar="JSON",
        help="detection: also write the scored detections (COCO's results format: image_id, category_id, bbox, "
        "score; what pycocotools' COCO.loadRes reads) to this file",
    )
    parser.add_argument(
        "--batch-size", "-b", type=int, help="images per batch (default 64; 8 for segmentation, 4 for detection)"
    )
    add_workers_argument(parser, "data-loading processes")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_device_arguments(parser)
    add_compile_argument(parser)
    parser.set_defaults(run=run)


# The task-specific options and their defaults (a task's `eval_options` says which it takes).
EVAL_OPTIONS = {
    "reduce_labels": None,
    "mode": "whole",
    "depth_scale": None,
    "min_depth": None,
    "max_depth": None,
    "flip": False,
    "scales": None,
    "aligned_resize": False,
    "crop": None,
    "median_scaling": False,
    "per_image": None,
    "worst": None,
    "detections": None,
}


def _task(args: argparse.Namespace) -> Any:
    """--task, else the task of the model's class (its config's `architectures`); classification for a checkpoint
    that does not say."""
    from .. import tasks

    if args.task is not None:
        return tasks.get(args.task)
    head = checkpoint_task(args)
    return tasks.task_for_head(head) if head else tasks.default()


def run(args: argparse.Namespace) -> int:
    if args.compare is not None:
        return _compare(args)
    if args.model is None:
        raise UsageError("--model is required: the model to evaluate (or --compare MODEL_A MODEL_B for two)")
    task, report = _report(args)
    if report is None:
        return 0
    return _write(args, report, task.report_table)


def _compare(args: argparse.Namespace) -> int:
    """`--compare MODEL_A MODEL_B`: both evaluated as `--model` would be, then the task's side-by-side report."""
    if args.model is not None:
        raise UsageError("--model and --compare: give one model with --model, or two with --compare MODEL_A MODEL_B")
    if args.confusion is not None:
        raise UsageError("--confusion draws one model's confusion matrix; evaluate each model alone for it")
    each = [argparse.Namespace(**{**vars(args), "model": model, "compare": None}) for model in args.compare]
    task, task_b = (_task(one) for one in each)
    if task_b is not task:
        raise UsageError(
            f"--compare: {args.compare[0]} is a {task.title} model and {args.compare[1]} a {task_b.title} model; "
            "compare two models of one task"
        )
    if not task.comparable:
        raise UsageError(f"--compare compares segmentation models; {args.compare[0]} is a {task.title} model")
    (_, report_a), (_, report_b) = (_report(one) for one in each)
    if report_a is None or report_b is None:
        return 0
    comparison = task.compare_report(report_a, report_b)
    return _write(args, comparison, task.compare_table)


def _write(args: argparse.Namespace, report: dict[str, Any], table: Any) -> int:
    """The report to --output (or stdout): one JSON line with --format json, else `table(report)`."""
    with open_output(args.output) as stream:
        stream.write(json.dumps(report, ensure_ascii=False) + "\n" if args.format == "json" else table(report))
    return 0


def _report(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """Evaluate `args.model`: (its task, the report on the main process, None on the others). Warns on stderr when
    the images are mostly ones the model was trained on (`evaluation.seen_in_training_warning`)."""
    from ..data.folders import LayoutError
    from ..distributed import init_distributed
    from ..evaluation import seen_in_training_warning

    task = _task(args)
    if not task.trainable:
        raise UsageError(
            f"pvtkit eval evaluates {', '.join(t.title for t in _trainable())} models; "
            f"{args.model} is a {task.title} model"
        )
    if args.batch_size is None:
        args.batch_size = task.eval_batch_size
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.scales is not None:
        from ..tta import parse_scales

        try:
            args.scales = parse_scales(args.scales)
        except ValueError as e:
            raise UsageError(f"--{e}") from None
    given = {name: getattr(args, name) for name, default in EVAL_OPTIONS.items() if getattr(args, name) != default}
    stray = [name for name in given if name not in task.eval_options]
    if stray:
        owners = [t.name for t in _trainable() if set(stray) <= set(t.eval_options)]
        raise UsageError(
            f"{' and '.join('--' + n.replace('_', '-') for n in stray)}: only for "
            f"{' or '.join(owners) or 'other'} models (or --task {owners[0] if owners else '...'})"
        )
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    with on_every_rank():
        ctx = init_distributed(device)
        model = load_model(task.auto_class(), args)
        processor = load_processor(args, model)
        if args.compile:
            from ..compiling import optimize_for

            optimize_for(model.to(device), args.batch_size, device)
        options = dict(
            processor=processor,
            val_fraction=args.val_fraction,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            dtype=dtype,
            confusion=args.confusion,
            progress=not args.quiet,
            **{name: getattr(args, name) for name in task.eval_options},
        )
        try:
            result = task.evaluate(model, args.data, **options)
        except LayoutError as e:
            raise UsageError(str(e)) from e
    if not ctx.is_main:
        return task, None
    warning = seen_in_training_warning(args.model, args.data, args.val_fraction, getattr(result, "held_out", "folder"))
    if warning:
        print(warning, file=sys.stderr)
    return task, {"model": args.model, "data": args.data, **result.to_dict()}


def _trainable() -> list[Any]:
    from .. import tasks

    return tasks.trainable()
