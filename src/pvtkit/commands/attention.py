"""`pvtkit attention`: attention maps of a PVTv2 or ViT model overlaid on an image, one panel per stage/layer."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (
    HelpFormatter,
    UsageError,
    add_device_arguments,
    add_model_arguments,
    hub_kwargs,
    parse_size,
    resolve_device,
)


def parse_point(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as e:
        raise UsageError(
            f"--query {text!r}: expected X,Y as fractions of the image width and height, e.g. 0.5,0.4"
        ) from e
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise UsageError(f"--query {text!r}: X and Y are fractions of the width and height, between 0 and 1")
    return x, y


def run(args: argparse.Namespace) -> int:
    import PIL.ImageDraw

    from .._files import atomic_write
    from ..analysis import attention_maps
    from ..pipelines import describe_error, load_encoder
    from ..processing import load_image
    from ..visualize import overlay, titled_strip
    from ._common import load_processor

    query = parse_point(args.query)
    if args.layers < 1:
        raise UsageError(f"--layers must be at least 1, got {args.layers}")
    device = resolve_device(args.device)
    image = load_image(args.image)  # a bad image fails here, before the model is loaded (exit 1)
    try:
        model = load_encoder(args.model, hub_kwargs(args)).to(device).float().eval()
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {args.model!r}: {describe_error(e)}") from e
    processor = load_processor(args, model)
    overrides = {}
    if args.image_size:
        h, w = parse_size(args.image_size)  # type: ignore[misc]
        overrides["size"] = {"height": h, "width": w}
        try:
            model.set_input_size((h, w))
        except ValueError as e:
            raise UsageError(f"--image-size {args.image_size}: {e}") from e
    pixels = processor(image, return_tensors="pt", **overrides)["pixel_values"].to(device)
    maps = attention_maps(model, pixels, query, layers=args.layers)
    scale = args.height / image.height
    shown = image.resize((max(1, round(image.width * scale)), args.height))
    panels = [("image", shown)]
    for title, heat in maps:
        panel = overlay(shown, heat, alpha=args.alpha)
        if query is not None:
            draw = PIL.ImageDraw.Draw(panel)
            x, y = query[0] * panel.width, query[1] * panel.height
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline="cyan", width=2)
        panels.append((title, panel))
    picture = titled_strip(panels)
    fmt = "JPEG" if args.output.lower().endswith((".jpg", ".jpeg")) else "PNG"
    atomic_write(args.output, lambda tmp: picture.save(tmp, format=fmt))
    print(
        f"wrote {args.output}: {len(maps)} attention map(s) of {type(model).__name__} over {args.image}",
        file=sys.stderr,
    )
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "attention",
        help="attention maps overlaid on an image (PNG)",
        description="Draw where the model looks: for PVTv2 one panel per stage (its last block; the keys are the "
        "spatially reduced map, 7x7 for linear SRA), for ViT a few layers spread over the depth. Without --query "
        "a PVTv2 panel shows the attention each position receives on average and a ViT panel what the [CLS] "
        "token attends to; with --query X,Y, what the token at that point attends to. Heads are averaged.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("image", help="the image file")
    add_model_arguments(parser)
    parser.add_argument("--output", "-o", required=True, help="picture to write (.png, or .jpg)")
    parser.add_argument("--query", help="X,Y of a query point as fractions of width and height (e.g. 0.5,0.3)")
    parser.add_argument("--layers", type=int, default=4, help="how many stages (PVTv2) or layers (ViT) to show")
    parser.add_argument("--image-size", help="model input size, 224 or HxW (default: the processor's)")
    parser.add_argument("--height", type=int, default=224, help="height of each panel in pixels")
    parser.add_argument("--alpha", type=float, default=0.55, help="opacity of the heat map")
    add_device_arguments(parser)
    parser.set_defaults(run=run)
