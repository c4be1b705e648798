"""`pvtkit depth`: monocular depth for image files and folders: 16-bit depth PNGs and coloured views."""

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
    write_all,
)
from ._video import VIDEO_HELP, add_video_arguments, check_video_arguments, has_videos, write_all_media


def write_depth_png(path: Path, depth: Any, scale: float) -> int:
    """`round(depth * scale)` as a 16-bit grayscale PNG (0 = no value), the scale in its `depth_scale` text chunk;
    returns how many pixels were clipped at 65535. Written atomically."""
    from .._files import atomic_write
    from ..tasks.depth import depth_png

    data, clipped = depth_png(depth, scale)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return clipped


class DepthFiles(ResultFiles):
    """Per image: the 16-bit depth PNG, the coloured view (unless --no-color) and the record."""

    def __init__(self, args: argparse.Namespace, items: list[Any]) -> None:
        super().__init__(args.output, items, args.inputs)
        self.args = args

    def write(self, index: int, depth: Any) -> dict[str, Any]:
        import PIL.Image

        from .._files import atomic_write
        from ..visualize import colormap, normalize

        stem = self.stem(index)
        depth_path = stem.with_name(stem.name + "_depth.png")
        clipped = write_depth_png(depth_path, depth, self.args.scale)
        record: dict[str, Any] = {
            "path": str(self.items[index]),
            "size": list(depth.shape),
            "depth_png": str(depth_path),
            "depth_scale": self.args.scale,
            "min": round(float(depth.min()), 6),
            "max": round(float(depth.max()), 6),
            "mean": round(float(depth.mean()), 6),
        }
        if clipped:
            record["clipped_pixels"] = clipped
        if self.args.color:
            color_path = stem.with_name(stem.name + "_depth_color.png")
            view = PIL.Image.fromarray(colormap(normalize(depth)))
            atomic_write(color_path, lambda tmp: view.save(tmp, format="PNG"))
            record["color_png"] = str(color_path)
        return record


def write_record(stream: IO[str], fmt: str, path: str, record: dict[str, Any] | None, error: str | None) -> None:
    if fmt == "json":
        stream.write(
            json.dumps({"path": path, "error": error} if error is not None else record, ensure_ascii=False) + "\n"
        )
    elif error is not None:
        stream.write(f"{path}\n  error: {error}\n")
    else:
        r = record or {}
        where = r.get("depth_png") or r.get("video") or r["stats_csv"]
        stream.write(f"{path}\n  depth {r['min']:.3f} .. {r['max']:.3f} (mean {r['mean']:.3f})  -> {where}\n")
        if r.get("clipped_pixels"):
            stream.write(f"  {r['clipped_pixels']} pixel(s) clipped at 65535 / {r['depth_scale']}: lower --scale\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    if not args.scale > 0:
        raise UsageError(f"--scale must be positive, got {args.scale}")
    folder = output_folder(args)
    check_video_arguments(args)
    with image_job(args, "depth-estimation", flip=args.flip) as (ctx, items, estimator):
        folder.mkdir(parents=True, exist_ok=True)
        files = DepthFiles(args, items)
        if has_videos(items):
            from ..video import depth_video

            def video(i: int) -> dict[str, Any]:
                return depth_video(estimator, items[i], files.stem(i), args.temporal_ema, args.color)

            return write_all_media(ctx, args, "depth", items, estimator, files, video, write_record, "estimated")
        return write_all(ctx, args, "depth", items, estimator, files, write_record, "estimated")


def register(sub: Any) -> None:
    from ..data.folders import IMAGE_EXTENSIONS

    parser = sub.add_parser(
        "depth",
        help="monocular depth: 16-bit depth PNGs and coloured views",
        description="Monocular depth estimation with a GLPN model. INPUT is any mix of image files and folders "
        f"(searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))}). Per image, OUT gets NAME_depth.png, "
        "the depth at the image's size as 16-bit integers of depth x --scale (the KITTI convention with the "
        "default 256: metres to 1/256 m, up to 255 m; the scale is also stored in the PNG's `depth_scale` text "
        "chunk), and NAME_depth_color.png, a coloured view (dark near, bright far), NAME being the image's path "
        "inside the folder it was found in. One record per image goes to stdout (or --records). An input that "
        "cannot be read is reported and the rest are still processed. Exit status: 0 all done, 1 some inputs "
        "failed, 2 usage error. Under `torchrun --nproc_per_node N` the inputs are sharded over the processes. "
        f"{VIDEO_HELP} Per video: NAME_depth.mp4 (coloured on one scale for the whole clip: the first frame's "
        "minimum to maximum) and NAME_depth_stats.csv (frame, time, min, median, max).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders, video files")
    add_model_arguments(parser, default="vinvino02/glpn-nyu")
    parser.add_argument("--output", "-o", required=True, metavar="OUT", help="folder for the depth PNGs")
    parser.add_argument("--scale", type=float, default=256.0, help="16-bit PNG value per unit of depth")
    parser.add_argument("--no-color", dest="color", action="store_false", help="write the 16-bit PNGs only")
    add_video_arguments(parser, "the depth maps")
    parser.add_argument(
        "--flip",
        action="store_true",
        help="average each depth with the depth of the mirrored image, mirrored back (GLPN's test-time "
        "augmentation; two forward passes)",
    )
    add_dense_arguments(parser)
    parser.set_defaults(run=run)
