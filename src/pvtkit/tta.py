"""How a segmentation model sees a whole image: mmsegmentation's sliding windows (`slide_windows`,
`sliding_window_logits`) and test-time augmentation, the way mmsegmentation's `aug_test` runs it: the image seen at
several scales and mirrored, each view forwarded (whole, or by sliding windows), its logits resized to the input's
size, turned into probabilities (softmax), mirrored back, and the probabilities of all views averaged. Optionally
SegFormer's "aligned resize": each view's sides rounded up to a multiple of 32, the models' output stride.

The evaluator (`pvtkit eval --scales ... --flip`), the pipeline (`aug=`), `pvtkit segment` and `pvtkit serve` all
run these views (`view_logits`) and this average (`add_view`); with the default `Augmentation()` (scale 1, no flip)
they run their plain single forward instead.
Depth's flip (GLPN's evaluation) is `tasks.depth.predict_depth`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# mmsegmentation's multi-scale test ratios (its configs' `img_ratios`), which SegFormer reports its MS numbers with.
MMSEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
ALIGN = 32  # SegFormer's aligned resize: sides rounded up to a multiple of the encoder's total stride

# `aug=` shorthands of `ImageSegmentationPipeline`.
PRESETS = {
    "none": {},
    "flip": {"flip": True},
    "ms": {"scales": MMSEG_SCALES},
    "ms-flip": {"scales": MMSEG_SCALES, "flip": True},
}


@dataclass(frozen=True)
class Augmentation:
    """Which views of an image test-time augmentation averages.

    Args:
        scales: Resize ratios, each view's sides `round(side * scale)` of the image as the model would otherwise
            see it (whole mode: the processor's size; slide mode: the image the windows slide over).
        flip: Also run every scale mirrored left-right (its probabilities mirrored back).
        aligned: Round each view's sides up to a multiple of 32 (SegFormer's `AlignedResize`).
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    aligned: bool = False

    def __post_init__(self) -> None:
        scales = self.scales
        if isinstance(scales, numbers.Real) and not isinstance(scales, bool):
            scales = (scales,)
        if isinstance(scales, str):
            scales = parse_scales(scales)
        scales = tuple(scales)
        if not scales:
            raise ValueError("scales must hold at least one ratio, got none")
        for scale in scales:
            if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
                raise ValueError(f"scale {scale!r}: expected a positive number (a resize ratio such as 0.5 or 1.25)")
        if not isinstance(self.flip, bool) or not isinstance(self.aligned, bool):
            raise ValueError(f"flip and aligned must be True or False, got {self.flip!r} and {self.aligned!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))

    @property
    def active(self) -> bool:
        """Whether anything differs from the plain single forward."""
        return self.scales != (1.0,) or self.flip or self.aligned

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def to_dict(self) -> dict[str, Any]:
        """`{"scales": [...], "flip": bool, "aligned_resize": bool}`: what the evaluation report records."""
        return {"scales": list(self.scales), "flip": self.flip, "aligned_resize": self.aligned}


def describe(tta: Mapping[str, Any] | None) -> str:
    """One line for people from `Augmentation.to_dict()`: `scales 0.5, 1, 1.5 + flip (6 views), aligned resize`."""
    if not tta:
        return "none"
    scales = tta["scales"]
    views = len(scales) * (2 if tta["flip"] else 1)
    text = "scales " + ", ".join(f"{s:g}" for s in scales) + (" + flip" if tta["flip"] else "")
    return text + f" ({views} view{'s' if views > 1 else ''})" + (", aligned resize" if tta["aligned_resize"] else "")


def parse_scales(text: str) -> tuple[float, ...]:
    """`"0.5,0.75,1"` -> `(0.5, 0.75, 1.0)`; a ValueError naming the part that is not a positive number."""
    parts = [part.strip() for part in str(text).split(",")]
    scales = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"scales {text!r}: {part!r} is not a positive number; expected comma-separated resize ratios "
                "such as 0.5,0.75,1,1.25"
            )
        scales.append(value)
    return tuple(scales)


def as_augmentation(aug: Any) -> Augmentation:
    """An `Augmentation` from what `aug=` takes: None (none), an `Augmentation`, a preset name (`PRESETS`: "flip",
    "ms" = mmsegmentation's six ratios, "ms-flip" = both), or a mapping with `scales`, `flip`, `aligned` (or
    `aligned_resize`)."""
    if aug is None:
        return Augmentation()
    if isinstance(aug, Augmentation):
        return aug
    if isinstance(aug, str):
        if aug not in PRESETS:
            raise ValueError(f"aug {aug!r}: expected one of {', '.join(PRESETS)}, or a dict with scales and flip")
        return Augmentation(**PRESETS[aug])
    if isinstance(aug, Mapping):
        options = dict(aug)
        if "aligned_resize" in options:
            options["aligned"] = options.pop("aligned_resize")
        unknown = sorted(set(options) - {"scales", "flip", "aligned"})
        if unknown:
            raise ValueError(f"aug: unknown key(s) {', '.join(map(repr, unknown))}; expected scales, flip, aligned")
        return Augmentation(**options)
    raise ValueError(f"aug: expected None, a preset name, a dict or an Augmentation, got {type(aug).__name__}")


def scaled_size(height: int, width: int, scale: float, aligned: bool = False) -> tuple[int, int]:
    """A view's `(height, width)`: each side times `scale`, rounded (at least 1), then with `aligned` rounded up to
    a multiple of 32."""
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    if aligned:
        h, w = math.ceil(h / ALIGN) * ALIGN, math.ceil(w / ALIGN) * ALIGN
    return h, w


def resize_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Preprocessed pixels `(B, C, h, w)` resized to `size` (bilinear, antialiased when shrinking, as PIL's resize
    is), in float32 and back to their dtype; unchanged when already that size."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    resized = F.interpolate(pixels.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.to(pixels.dtype)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmsegmentation's `slide` grid: `(top, bottom, left, right)` windows of `crop` (clipped to the image) every
    `stride`, the last row and column shifted back to end at the image's edge; together they cover every pixel."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(bottom - ch, 0), bottom, max(right - cw, 0), right))
    return windows


def sliding_window_logits(
    model: Any, pixels: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int = 8
) -> torch.Tensor:
    """Logits `(1, num_labels, H, W)` of one image `(1, C, H, W)` by sliding windows (`slide_windows`), each
    window's logits upsampled to the window and averaged where windows overlap; `batch_size` windows per forward."""
    height, width = pixels.shape[-2:]
    windows = slide_windows(height, width, crop, stride)
    total = pixels.new_zeros((1, model.config.num_labels, height, width), dtype=torch.float32)
    count = pixels.new_zeros((1, 1, height, width), dtype=torch.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crops = torch.cat([pixels[..., t:b, left:r] for t, b, left, r in chunk])  # windows share one size
        logits = model(pixel_values=crops).logits.float()
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        for (t, b, left, r), window in zip(chunk, logits):
            total[0, :, t:b, left:r] += window
            count[0, :, t:b, left:r] += 1
    return total / count


def view_logits(
    model: Any,
    pixels: torch.Tensor,
    aug: Augmentation,
    mode: str = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    batch_size: int = 8,
) -> Iterator[tuple[torch.Tensor, bool]]:
    """Per view of a batch `(B, C, h, w)` (every scale, then mirrored when `aug.flip`): its float32 logits `(B, K,
    h', w')` as the model gives them (whole) or at the view's size (slide: `sliding_window_logits` with `crop`,
    `stride`), and whether the view was mirrored."""
    height, width = pixels.shape[-2:]
    for scale in aug.scales:
        scaled = resize_pixels(pixels, scaled_size(height, width, scale, aug.aligned))
        for flipped in (False, True) if aug.flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            if mode == "whole":
                logits = model(pixel_values=view).logits.float()
            elif mode == "slide":
                logits = torch.cat([sliding_window_logits(model, v[None], crop, stride, batch_size) for v in view])
            else:
                raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
            yield logits, flipped


def add_view(total: torch.Tensor | None, logits: torch.Tensor, flipped: bool, size: tuple[int, int]) -> torch.Tensor:
    """`total` (None for the first view) plus one view's probabilities at `size`: its logits `(1, K, h, w)` resized
    (bilinear) to `size`, softmaxed (one channel: its sigmoid), mirrored back if the view was mirrored."""
    resized = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    # one channel is a binary model's logit (trained with BCE): its probability is the sigmoid, as mmsegmentation's
    probabilities = resized.sigmoid() if resized.shape[1] == 1 else resized.softmax(1)
    probabilities = probabilities.flip(-1) if flipped else probabilities
    return probabilities if total is None else total.add_(probabilities)


def merge_views(views: Iterable[tuple[torch.Tensor, bool]], size: tuple[int, int]) -> torch.Tensor:
    """One image's probabilities `(1, K, H, W)` at `size`: the mean over its views' `(logits, mirrored)` of
    `add_view`."""
    total, count = None, 0
    for logits, flipped in views:
        total, count = add_view(total, logits, flipped, size), count + 1
    if total is None:
        raise ValueError("merge_views needs at least one view")
    return total / count


def probability_scores(probabilities: torch.Tensor) -> torch.Tensor:
    """Scores `(B, K, H, W)` in float64 that the rest of pvtkit reads as logits, from averaged probabilities: log p
    (the argmax is p's, cross-entropy is -log p), or for one channel (a binary model) logit p = log p - log(1 - p)
    (> 0 where p > 0.5; BCE-with-logits is p's BCE). float64 keeps probabilities that differ in float32 apart."""
    p = probabilities.double()
    tiny = torch.finfo(torch.float64).tiny
    if p.shape[1] == 1:
        return p.clamp_min(tiny).log() - (1 - p).clamp_min(tiny).log()
    return p.clamp_min(tiny).log()


def tta_probabilities(
    model: Any,
    pixels: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    aug: Augmentation,
    mode: str = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Per image of a batch `(B, C, h, w)` (one shape: the processor's size in whole mode, the image the windows
    slide over in slide mode), its probabilities `(1, K, H, W)` at `sizes[i]` averaged over `aug`'s views
    (`view_logits`, `add_view`); each view's logits are folded in as they come, so only the sums stay in memory."""
    if len(sizes) != len(pixels):
        raise ValueError(f"got {len(sizes)} sizes for a batch of {len(pixels)} images; expected one per image")
    totals: list[torch.Tensor | None] = [None] * len(pixels)
    count = 0
    for logits, flipped in view_logits(model, pixels, aug, mode, crop, stride, batch_size):
        totals = [add_view(t, logits[i : i + 1], flipped, size) for i, (t, size) in enumerate(zip(totals, sizes))]
        count += 1
    return [t / count for t in totals]
