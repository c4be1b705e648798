"""Image-processor throughput on real photos: pvtkit's PIL and tensor processors against transformers'.

transformers' tensor back end needs torchvision; where it does not import (this project's CPU machines) only its
PIL back end is measured. Every processor is checked against transformers' PIL output before it is timed.

    python benchmarks/bench_processing.py [--batch 32] [--repeats 5] [--device cpu|cuda] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import PIL.Image
import skimage.data
import torch

from pvtkit.processing import ViTImageProcessor, ViTImageProcessorFast

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat", "colorwheel")


def photos(batch: int) -> list[PIL.Image.Image]:
    images = [PIL.Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    return [images[i % len(images)] for i in range(batch)]


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    import transformers

    images = photos(args.batch)
    tensors = [torch.from_numpy(np.asarray(im)).permute(2, 0, 1).contiguous() for im in images]
    reference = transformers.ViTImageProcessorPil(do_convert_rgb=True)(images, return_tensors="pt").pixel_values

    runs = {
        "transformers ViTImageProcessorPil (PIL images)": lambda: (
            transformers.ViTImageProcessorPil(do_convert_rgb=True)(images, return_tensors="pt").pixel_values
        ),
        "pvtkit ViTImageProcessor (PIL images)": lambda: ViTImageProcessor()(images, return_tensors="pt").pixel_values,
        "pvtkit ViTImageProcessorFast (PIL images)": lambda: (
            ViTImageProcessorFast()(images, return_tensors="pt", device=args.device).pixel_values
        ),
        "pvtkit ViTImageProcessorFast (uint8 tensors)": lambda: (
            ViTImageProcessorFast()(tensors, return_tensors="pt", device=args.device).pixel_values
        ),
    }
    if transformers.utils.is_torchvision_available():
        runs["transformers ViTImageProcessor (torchvision)"] = lambda: (
            transformers.ViTImageProcessor(do_convert_rgb=True)(images, return_tensors="pt").pixel_values
        )
    rows = []
    for name, fn in runs.items():
        diff = (fn().float().cpu() - reference).abs().max().item()
        seconds = best_of(fn, args.repeats)
        rows.append((name, args.batch / seconds, diff))
    header = (
        f"Image processors, {args.batch} photos (512x512 and smaller, RGB) to 224x224, device {args.device}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    lines = [header, "", "| processor | images/s | max abs diff vs transformers PIL |", "|---|---|---|"]
    lines += [f"| {n} | {ips:.0f} | {d:.2g} |" for n, ips, d in rows]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
