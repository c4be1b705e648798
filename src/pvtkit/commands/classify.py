"""`pvtkit classify`: top-k labels for image files and folders, streamed in input order."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from itertools import islice
from pathlib import Path
from typing import IO, Any

from ..distributed import default_workers
from ._common import (
    UsageError, add_device_arguments, add_model_arguments, open_output, report_failure, resolve_device,
    resolve_dtype,
)  # fmt: skip


def expand_inputs(inputs: list[str]) -> list[Path | Exception]:
    """Files and folders -> image paths in order; an input that cannot be expanded becomes its error, in place."""
    from ..imagefolder import find_images

    items: list[Path | Exception] = []
    for item in inputs:
        try:
            items.extend(find_images([item]))
        except (OSError, ValueError) as e:
            items.append(e)
    return items


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
    from tqdm import tqdm

    from ..distributed import init_distributed, share_cpu_threads, shutdown_distributed
    from ..imagefolder import shard
    from ..pipeline import describe_error, pipeline

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    ctx = init_distributed(device)
    try:
        share_cpu_threads(ctx, device)
        items = expand_inputs(args.inputs)
        try:
            classifier = pipeline(
                "image-classification", model=args.model, device=device, dtype=dtype, top_k=args.top_k,
                batch_size=args.batch_size, num_workers=args.num_workers, revision=args.revision,
                local_files_only=args.offline,
            )  # fmt: skip
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load model {args.model!r}: {describe_error(e)}") from e
        mine = shard(items, ctx.rank, ctx.world_size)
        rounds = math.ceil(math.ceil(len(items) / ctx.world_size) / args.batch_size)
        results = classifier.run(mine)
        failed = 0
        with open_output(args.output if ctx.is_main else os.devnull) as stream:
            writer = Writer(stream, args.format)
            bar = tqdm(total=len(items), unit="img", disable=None if ctx.is_main else True, file=sys.stderr,
                       desc="classify")  # fmt: skip
            for _ in range(rounds):  # every rank takes part in every round, even with nothing left
                chunk = [(r.index * ctx.world_size + ctx.rank, r.output, r.error) for r in islice(results, args.batch_size)]
                if not ctx.is_main:
                    ctx.gather_objects(chunk)
                    continue
                for index, predictions, error in sorted(sum(ctx.gather_objects(chunk), [])):
                    item = items[index]
                    path = str(item) if not isinstance(item, Exception) else _input_of(item, args.inputs)
                    if error is not None:
                        failed += 1
                        bar.clear()
                        report_failure("classify", path, error)
                    writer.write(path, predictions, error)
                    bar.update(1)
            bar.close()
        if ctx.is_main and failed:
            print(f"pvtkit classify: {failed} of {len(items)} input(s) failed; the others were classified",
                  file=sys.stderr)  # fmt: skip
        return 1 if failed else 0
    finally:
        shutdown_distributed()


def _input_of(error: Exception, inputs: list[str]) -> str:
    """The user's input an expansion error is about (its message names it)."""
    text = str(error)
    return next((i for i in inputs if i in text), text.split(":")[0])


def register(sub: Any) -> None:
    from ..imagefolder import IMAGE_EXTENSIONS

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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="labels per image")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_device_arguments(parser)
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table",
                        help="table for humans; json = JSON Lines, one record per input; csv = one row per label")
    parser.add_argument("--output", "-o", help="write here (atomically) instead of stdout")
    parser.add_argument("--num-workers", type=int, default=default_workers(),
                        help="image-decoding worker processes (0: decode in the main process)")
    parser.set_defaults(run=run)
