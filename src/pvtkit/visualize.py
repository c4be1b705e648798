"""Pictures drawn with PIL and NumPy alone: heat-map colours, class colours, overlays, titled panels side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

# Anchor colours of a perceptually ordered dark-to-bright map (black-purple-red-orange-yellow, like "inferno").
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to uint8 RGB (shape + (3,)), dark for 0 and bright for 1."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (v - low)[..., None]
    return np.round(_ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac).astype(np.uint8)


def normalize(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (a constant map becomes all zeros)."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


def overlay(image: PIL.Image.Image, heat: np.ndarray, alpha: float = 0.55) -> PIL.Image.Image:
    """`heat` (h x w, any scale) stretched smoothly over `image` and blended in with weight `alpha`."""
    colours = PIL.Image.fromarray(colormap(normalize(heat)))
    colours = colours.resize(image.size, PIL.Image.Resampling.BICUBIC)
    return PIL.Image.blend(image.convert("RGB"), colours, alpha)


def palette(count: int) -> np.ndarray:
    """`count` distinct uint8 RGB colours, (count, 3): class k's colour spreads the bits of k over the three
    channels, high bits first, so neighbouring classes differ strongly (the scheme PASCAL VOC's label PNGs use)."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for k in range(count):
        value, bit = k, 7
        while value and bit >= 0:
            for channel in range(3):
                colours[k, channel] |= ((value >> channel) & 1) << bit
            value >>= 3
            bit -= 1
    return colours


def label_overlay(
    image: PIL.Image.Image, classes: np.ndarray, colours: np.ndarray, alpha: float = 0.5
) -> PIL.Image.Image:
    """Each pixel of `image` blended with its class's colour (`classes`: (H, W) indices at the image's size)."""
    coloured = PIL.Image.fromarray(colours[classes])
    return PIL.Image.blend(image.convert("RGB"), coloured, alpha)


def titled_strip(panels: Sequence[tuple[str, PIL.Image.Image]], pad: int = 6) -> PIL.Image.Image:
    """Panels side by side on white, each under its title."""
    font = PIL.ImageFont.load_default()
    title_h = 16
    width = sum(p.width for _, p in panels) + pad * (len(panels) + 1)
    height = max(p.height for _, p in panels) + title_h + 2 * pad
    canvas = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    x = pad
    for title, panel in panels:
        draw.text((x, pad // 2), title, fill="black", font=font)
        canvas.paste(panel.convert("RGB"), (x, pad + title_h))
        x += panel.width + pad
    return canvas


def draw_boxes(
    image: PIL.Image.Image,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | np.ndarray | None = None,
    class_ids: Sequence[int] | None = None,
) -> PIL.Image.Image:
    """A copy of `image` with each box (`xmin, ymin, xmax, ymax` pixels) outlined in its class's colour and captioned
    "label 0.93" on a filled tag above its top-left corner (inside the box when there is no room above). Colours
    follow `class_ids` (default: the order of first appearance of each label)."""
    canvas = image.convert("RGB")
    draw = PIL.ImageDraw.Draw(canvas)
    font = PIL.ImageFont.load_default()
    names = list(dict.fromkeys(labels))
    ids = list(class_ids) if class_ids is not None else [names.index(label) for label in labels]
    colours = palette(max(ids, default=0) + 2)[1:]  # palette 0 is black
    width = max(2, round(min(canvas.size) / 250))
    for k, (box, label) in enumerate(zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels)):
        colour = tuple(int(c) for c in colours[ids[k]])
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, max(x1, x0), max(y1, y0)), outline=colour, width=width)
        caption = label if scores is None else f"{label} {float(scores[k]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tag_w, tag_h = right - left + 4, bottom - top + 4
        tag_y = y0 - tag_h if y0 - tag_h >= 0 else y0
        draw.rectangle((x0, tag_y, x0 + tag_w, tag_y + tag_h), fill=colour)
        text = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((x0 + 2 - left, tag_y + 2 - top), caption, fill=text, font=font)
    return canvas
