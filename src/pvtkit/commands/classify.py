"""`pvtkit classify`: top-k labels for image files and folders, streamed in input order."""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import IO, Any

from ._common import (
    HelpFormatter,
    UsageError,
    add_compile_argument,
    add_device_arguments,
    add_model_arguments,
    add_workers_argument,
    image_job,
    input_name,
    open_output,
    report_failure,
    stream_sharded,
    summarize_failures,
)


class Writer:
    """Writes one result at a time as a table (humans), JSON Lines or CSV."""

    def __init__(self, stream: IO[str], fmt: str) -> None:
        self.stream, self.fmt = stream, fmt
        self.csv = csv.writer(stream) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["path", "rank", "label", "score", "error"])

    def write(self, path: str, predictions: list[dict[str, Any]] | None, error: str | None) -> None:
        if self.fmt == "json":
            record = {"path": path, "error": error} if error is not None else {"path": path, "predictions": predictions}
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.csv is not None:
            if error is not None:
                self.csv.writerow([path, "", "", "", error])
            for rank, p in enumerate(predictions or [], 1):
                self.csv.writerow([path, rank, p["label"], f"{p['score']:.6f}", ""])
        else:
            self.stream.write(f"{path}\n")
            if error is not None:
                self.stream.write(f"  error: {error}\n")
            for rank, p in enumerate(predictions or [], 1):
                self.stream.write(f"  {rank:>2}  {p['score']:7.4f}  {p['label']}\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    with image_job(args, "image-classification", top_k=args.top_k) as (ctx, items, classifier):
        failed = 0
        with open_output(args.output if ctx.is_main else os.devnull) as stream:
            writer = Writer(stream, args.format)
            for index, predictions, error in stream_sharded(ctx, items, classifier.run, args.batch_size, "classify"):
                path = input_name(items[index], args.inputs)
                if error is not None:
                    failed += 1
                    report_failure("classify", path, error)
                writer.write(path, predictions, error)
        return summarize_failures("classify", failed, len(items), "classified") if ctx.is_main else 0


def register(sub: Any) -> None:
    from ..data.folders import IMAGE_EXTENSIONS

    parser = sub.add_parser(
        "classify",
        help="top-k labels for images (files and folders)",
        description="Classify images with a PVTv2 or ViT classifier. INPUT is any mix of image files and folders "
        f"(searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))}). Images are decoded in worker "
        "processes while the model runs; results stream in input order. An input that cannot be read is "
        "reported (one line on stderr and an error record in the output) and the rest are still classified. "
        "Exit status: 0 all classified, 1 some inputs failed, 2 usage error (bad flag, no such model). Under "
        "`torchrun --nproc_per_node N pvtkit classify ...` the inputs are sharded over the processes and rank 0 "
        "writes the one complete output.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="labels per image")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_device_arguments(parser)
    add_compile_argument(parser)
    parser.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table for humans; json = JSON Lines, one record per input; csv = one row per label",
    )
    parser.add_argument("--output", "-o", help="write here (atomically) instead of stdout")
    add_workers_argument(parser, "image-decoding worker processes (0: decode in the main process)")
    parser.set_defaults(run=run)
