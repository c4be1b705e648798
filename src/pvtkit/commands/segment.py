"""`pvtkit segment`: a class per pixel for image files and folders: label PNGs, colour overlays, per-class areas."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import IO, Any

from ._common import (
    HelpFormatter,
    ResultFiles,
    UsageError,
    add_dense_arguments,
    add_model_arguments,
    image_job,
    output_folder,
    parse_size,
    write_all,
)
from ._video import VIDEO_HELP, add_video_arguments, check_video_arguments, has_videos, write_all_media


def write_label_png(path: Path, classes: Any, num_labels: int) -> None:
    """One class index per pixel: a palette PNG (indices 0..255, the colours as `visualize.palette`), or for more
    than 256 classes a 16-bit grayscale PNG. Written atomically."""
    import numpy as np
    import PIL.Image

    from .._files import atomic_write
    from ..visualize import palette

    if num_labels <= 256:
        image = PIL.Image.fromarray(classes.astype(np.uint8))
        image.putpalette(palette(256).reshape(-1).tolist())  # L -> P, the indices kept
    else:
        image = PIL.Image.fromarray(classes.astype(np.uint16))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


class SegmentFiles(ResultFiles):
    """Per image: the label PNG, the overlay (unless --no-overlay) and the record with each class's area."""

    def __init__(self, args: argparse.Namespace, items: list[Any], labels: list[str]) -> None:
        super().__init__(args.output, items, args.inputs)
        self.args, self.labels = args, labels

    def write(self, index: int, classes: Any) -> dict[str, Any]:
        from .._files import atomic_write
        from ..pipelines import class_areas
        from ..processing import load_image
        from ..visualize import label_overlay, palette

        stem = self.stem(index)
        label_path = stem.with_name(stem.name + ".png")
        write_label_png(label_path, classes, len(self.labels))
        record: dict[str, Any] = {
            "path": str(self.items[index]),
            "size": list(classes.shape),
            "label_png": str(label_path),
        }
        if self.args.overlay:
            overlay_path = stem.with_name(stem.name + "_overlay.jpg")
            image = load_image(self.items[index])
            blended = label_overlay(image, classes, palette(max(len(self.labels), 1)), self.args.alpha)
            atomic_write(overlay_path, lambda tmp: blended.save(tmp, format="JPEG", quality=90))
            record["overlay"] = str(overlay_path)
        record["classes"] = class_areas(classes, self.labels)
        return record


def write_record(stream: IO[str], fmt: str, path: str, record: dict[str, Any] | None, error: str | None) -> None:
    if fmt == "json":
        out = {"path": path, "error": error} if error is not None else record
        stream.write(json.dumps(out, ensure_ascii=False) + "\n")
    else:
        stream.write(f"{path}\n")
        if error is not None:
            stream.write(f"  error: {error}\n")
        else:
            for c in record["classes"][:5]:  # type: ignore[index]
                stream.write(f"  {100 * c['fraction']:6.2f}%  {c['label']}\n")
            stream.write(f"  -> {record.get('label_png') or record.get('video') or record['areas_csv']}\n")  # type: ignore[union-attr]
    stream.flush()


def slide_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's mode options from --mode/--crop/--stride, checked."""
    if args.mode == "whole":
        if args.crop or args.stride:
            raise UsageError("--crop and --stride belong to --mode slide")
        return {"mode": "whole"}
    crop = parse_size(args.crop, "--crop") if args.crop else None
    stride = parse_size(args.stride, "--stride") if args.stride else None
    if crop and stride and (stride[0] > crop[0] or stride[1] > crop[1]):
        raise UsageError(
            f"--stride {args.stride} is larger than --crop {args.crop}: pixels between windows would be skipped"
        )
    return {"mode": "slide", "crop": crop, "stride": stride}


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """--scales, --flip, --aligned-resize: segmentation's test-time augmentation (`pvtkit.tta`)."""
    parser.add_argument(
        "--scales",
        metavar="R,R,...",
        help="test-time augmentation: run the image resized by each of these ratios (whole mode: of the processor's "
        "size; slide mode: of the image) and average the softmax probabilities at the image's size, as "
        "mmsegmentation's multi-scale test; its ratios are 0.5,0.75,1,1.25,1.5,1.75 (default: 1 alone)",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="test-time augmentation: also run every scale mirrored and average its probabilities, mirrored back",
    )
    parser.add_argument(
        "--aligned-resize",
        action="store_true",
        help="round each view's sides up to a multiple of 32 (SegFormer's evaluation resize)",
    )


def augmentation(args: argparse.Namespace) -> Any:
    """The `tta.Augmentation` of --scales/--flip/--aligned-resize; a scale that is not a positive number is a
    `UsageError` naming it."""
    from ..tta import Augmentation, parse_scales

    try:
        scales = parse_scales(args.scales) if args.scales is not None else (1.0,)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    return Augmentation(scales, bool(args.flip), bool(args.aligned_resize))


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    folder, mode = output_folder(args), slide_options(args)
    check_video_arguments(args)
    aug = augmentation(args)
    with image_job(args, "image-segmentation", **mode, aug=aug) as (ctx, items, segmenter):
        folder.mkdir(parents=True, exist_ok=True)
        files = SegmentFiles(args, items, segmenter.labels)
        if has_videos(items):
            from ..video import segment_video

            def video(i: int) -> dict[str, Any]:
                return segment_video(segmenter, items[i], files.stem(i), args.temporal_ema, args.overlay, args.alpha)

            return write_all_media(ctx, args, "segment", items, segmenter, files, video, write_record, "segmented")
        return write_all(ctx, args, "segment", items, segmenter, files, write_record, "segmented")


def register(sub: Any) -> None:
    from ..data.folders import IMAGE_EXTENSIONS

    parser = sub.add_parser(
        "segment",
        help="a class per pixel: label PNGs, colour overlays, class areas",
        description="Semantic segmentation with a SegFormer (or PVTv2 + SegFormer head) model. INPUT is any mix of "
        f"image files and folders (searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))}). Per image, "
        "OUT gets NAME.png (a palette PNG holding one class index per pixel, at the image's size; a 16-bit PNG "
        "for more than 256 classes) and NAME_overlay.jpg (the classes' colours over the image), NAME being the "
        "image's path inside the folder it was found in. One record per image goes to stdout (or --records): "
        "its size and each class's area. --mode slide runs mmsegmentation's sliding window over the image at "
        "its own resolution (for images much larger than the model's training crops), averaging the logits of "
        "overlapping windows. --scales and --flip add test-time augmentation (mmsegmentation's multi-scale and flip "
        "test: the softmax probabilities of every view, at the image's size, averaged; in either mode). An input "
        "that cannot be read is reported and the rest are still segmented. Exit "
        "status: 0 all done, 1 some inputs failed, 2 usage error. Under `torchrun --nproc_per_node N` the inputs "
        "are sharded over the processes, each writes its images' files and rank 0 the records. "
        f"{VIDEO_HELP} Per video: NAME_overlay.mp4 and NAME_areas.csv (frame, time, class_id, label, pixels, "
        "fraction per frame and class present); its record sums the areas over all frames.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders, video files")
    add_model_arguments(parser, default="nvidia/segformer-b0-finetuned-ade-512-512")
    parser.add_argument("--output", "-o", required=True, metavar="OUT", help="folder for the label PNGs and overlays")
    parser.add_argument(
        "--mode",
        choices=["whole", "slide"],
        default="whole",
        help="whole: resize to the processor's size and back; slide: sliding windows at full size",
    )
    parser.add_argument("--crop", help="slide mode: window size H or HxW (default: the processor's size)")
    parser.add_argument("--stride", help="slide mode: window step S or SxT (default: two thirds of the crop)")
    add_tta_arguments(parser)
    parser.add_argument("--no-overlay", dest="overlay", action="store_false", help="write the label PNGs only")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay")
    add_video_arguments(parser, "the per-pixel class probabilities")
    add_dense_arguments(parser)
    parser.set_defaults(run=run)
