"""`pvtkit attention`: attention maps of a PVTv2 or ViT model overlaid on an image, one panel per stage/layer."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ._common import UsageError, add_device_arguments, add_model_arguments, hub_kwargs, resolve_device


def key_grid(num_keys: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) of a flattened key map of `num_keys` cells whose aspect is closest to height x width."""
    best: tuple[float, tuple[int, int]] | None = None
    for rows in range(1, num_keys + 1):
        if num_keys % rows == 0:
            cols = num_keys // rows
            score = abs(math.log((rows / cols) / (height / width)))
            if best is None or score < best[0]:
                best = (score, (rows, cols))
    assert best is not None
    return best[1]


def parse_point(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as e:
        raise UsageError(f"--query {text!r}: expected X,Y as fractions of the image width and height, e.g. "
                         "0.5,0.4") from e  # fmt: skip
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise UsageError(f"--query {text!r}: X and Y are fractions of the width and height, between 0 and 1")
    return x, y


def attention_maps(model: Any, pixels: Any, query: tuple[float, float] | None, layers: int = 4) -> list[tuple[str, Any]]:
    """[(title, 2-d NumPy map)]: per PVTv2 stage (its last block) or for `layers` ViT layers spread over the depth.

    Without `query`, a map shows how much attention each key position receives on average (PVTv2), or what the
    [CLS] token attends to (ViT); with `query` = (x, y) fractions, what the token at that point attends to.
    Heads are averaged.
    """
    import torch

    from ..layers import pair

    with torch.inference_mode():
        out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    maps: list[tuple[str, Any]] = []
    if model.config.model_type == "pvt_v2":
        for i, (stage, hidden) in enumerate(zip(out.attentions, out.hidden_states)):
            attn = stage[-1][0].float().mean(0)  # (queries, keys)
            h, w = hidden.shape[-2:]
            if query is None:
                weights = attn.mean(0)
            else:
                qy, qx = min(int(query[1] * h), h - 1), min(int(query[0] * w), w - 1)
                weights = attn[qy * w + qx]
            rows, cols = key_grid(weights.numel(), h, w)
            maps.append((f"stage {i + 1} ({rows}x{cols} keys)", weights.reshape(rows, cols).cpu().numpy()))
    else:
        p = pair(model.config.patch_size)[0]
        gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
        n = len(out.attentions)
        chosen = sorted({max(0, round(n * (k + 1) / layers) - 1) for k in range(layers)})
        for j in chosen:
            attn = out.attentions[j][0].float().mean(0)
            if query is None:
                row = 0
            else:
                row = 1 + min(int(query[1] * gh), gh - 1) * gw + min(int(query[0] * gw), gw - 1)
            maps.append((f"layer {j + 1}", attn[row, 1:].reshape(gh, gw).cpu().numpy()))
    return maps


def run(args: argparse.Namespace) -> int:
    import PIL.ImageDraw

    from .._files import atomic_write
    from ..pipeline import describe_error, load_encoder
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
        from .info import parse_size

        h, w = parse_size(args.image_size)
        overrides["size"] = {"height": h, "width": w}
    pixels = processor(image, return_tensors="pt", **overrides)["pixel_values"].to(device)
    if model.config.model_type == "vit" and overrides:
        model.config.interpolate_pos_encoding = True
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
    print(f"wrote {args.output}: {len(maps)} attention map(s) of {type(model).__name__} over {args.image}",
          file=sys.stderr)  # fmt: skip
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "attention",
        help="attention maps overlaid on an image (PNG)",
        description="Draw where the model looks: for PVTv2 one panel per stage (its last block; the keys are the "
        "spatially reduced map, 7x7 for linear SRA), for ViT a few layers spread over the depth. Without --query "
        "a PVTv2 panel shows the attention each position receives on average and a ViT panel what the [CLS] "
        "token attends to; with --query X,Y, what the token at that point attends to. Heads are averaged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("image", help="the image file")
    add_model_arguments(parser)
    parser.add_argument("--output", "-o", required=True, help="picture to write (.png, or .jpg)")
    parser.add_argument("--query", help="X,Y of a query point as fractions of width and height (e.g. 0.5,0.3)")
    parser.add_argument("--layers", type=int, default=4, help="ViT: how many layers to show")
    parser.add_argument("--image-size", help="model input size, 224 or HxW (default: the processor's)")
    parser.add_argument("--height", type=int, default=224, help="height of each panel in pixels")
    parser.add_argument("--alpha", type=float, default=0.55, help="opacity of the heat map")
    add_device_arguments(parser)
    parser.set_defaults(run=run)
