"""`pvtkit detect`: object detection for image files and folders: JSON records and pictures with the boxes drawn."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from ._common import (
    HelpFormatter,
    ResultFiles,
    UsageError,
    add_dense_arguments,
    add_model_arguments,
    image_job,
    output_folder,
    write_all,
)


class DetectFiles(ResultFiles):
    """Per image: the picture with its boxes drawn (unless --no-draw) and the record of its detections."""

    def __init__(self, args: argparse.Namespace, items: list[Any], labels: list[str]) -> None:
        super().__init__(args.output, items, args.inputs)
        self.args, self.labels = args, labels

    def write(self, index: int, found: dict[str, Any]) -> dict[str, Any]:
        import torch

        from .._files import atomic_write
        from ..pipelines import detection_records
        from ..processing import load_image
        from ..visualize import draw_boxes

        detections = detection_records({k: torch.from_numpy(v) for k, v in found.items()}, self.labels)
        record: dict[str, Any] = {"path": str(self.items[index]), "size": found["size"].tolist()}
        if self.args.draw:
            image = load_image(self.items[index])
            names = [d["label"] for d in detections]
            drawn = draw_boxes(image, found["boxes"], names, found["scores"], [int(k) for k in found["labels"]])
            path = self.stem(index)
            path = path.with_name(path.name + "_boxes.jpg")
            atomic_write(path, lambda tmp: drawn.save(tmp, format="JPEG", quality=90))
            record["picture"] = str(path)
        record["detections"] = detections
        return record


def write_record(stream: IO[str], fmt: str, path: str, record: dict[str, Any] | None, error: str | None) -> None:
    if fmt == "json":
        out = {"path": path, "error": error} if error is not None else record
        stream.write(json.dumps(out, ensure_ascii=False) + "\n")
    elif error is not None:
        stream.write(f"{path}\n  error: {error}\n")
    else:
        r = record or {}
        stream.write(f"{path}: {len(r['detections'])} object(s)\n")
        for d in r["detections"]:
            b = d["box"]
            stream.write(f"  {d['score']:.3f}  {d['label']}  ({b['xmin']}, {b['ymin']}) - ({b['xmax']}, {b['ymax']})\n")
        if r.get("picture"):
            stream.write(f"  -> {r['picture']}\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be a score in [0, 1], got {args.threshold}")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    folder = output_folder(args)
    with image_job(args, "object-detection", threshold=args.threshold, top_k=args.top_k) as (ctx, items, detector):
        folder.mkdir(parents=True, exist_ok=True)
        files = DetectFiles(args, items, detector.labels)
        return write_all(ctx, args, "detect", items, detector, files, write_record, "processed")


def register(sub: Any) -> None:
    from ..data.folders import IMAGE_EXTENSIONS

    parser = sub.add_parser(
        "detect",
        help="object detection: boxes, labels and scores, and pictures with the boxes drawn",
        description="Object detection with a Deformable DETR model (a ResNet-50 or PVTv2 backbone). INPUT is any mix "
        f"of image files and folders (searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))}). Per image, "
        "OUT gets NAME_boxes.jpg, the image with each detection's box drawn and captioned with its label and score, "
        "NAME being the image's path inside the folder it was found in. One record per image goes to stdout (or "
        "--records): its detections as transformers' object-detection pipeline gives them (score, label, box "
        "with xmin, ymin, xmax, ymax in the image's pixels), best first. Images of different sizes share a batch "
        "(padded, the model told which pixels are padding). An input that cannot be read is reported and the rest "
        "are still processed. Exit status: 0 all done, 1 some inputs failed, 2 usage error. Under `torchrun "
        "--nproc_per_node N` the inputs are sharded over the processes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_arguments(parser, default="SenseTime/deformable-detr")
    parser.add_argument("--output", "-o", required=True, metavar="OUT", help="folder for the pictures")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep the detections scoring above this")
    parser.add_argument(
        "--top-k", type=int, default=100, help="consider at most this many (query, class) pairs per image"
    )
    parser.add_argument("--no-draw", dest="draw", action="store_false", help="write the records only, no pictures")
    add_dense_arguments(parser)
    parser.set_defaults(run=run)
