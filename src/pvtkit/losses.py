"""The losses the models compute with `labels` and the trainer and evaluators use: one copy each.

- `segmentation_loss`: transformers' SegFormer loss (logits upsampled to the labels, cross-entropy ignoring an
  index; BCE for one label).
- `silog_loss`: the scale-invariant log loss of Eigen et al. 2014, as transformers' GLPN computes it.
- `combined_loss`: the training losses for imbalanced data, summed by the weights of a `--loss` spec
  (`parse_loss_spec("ce:1,dice:0.5")`): class-weighted cross-entropy (`ce`), OHEM (`ohem`, mmsegmentation's
  thresholded rule), Dice (`dice`), Lovasz-softmax (`lovasz`) and focal (`focal`); `class_weights_from_counts` gives
  `--class-weights auto`'s weights.

How the training losses are normalised (the trainer divides a step's summed loss by the global batch's labelled
pixels, so every term is a sum over pixels or a per-pixel-weighted sum over images, and the result does not depend
on how a step is split into micro-batches and processes):

- `ce`, `focal`: the sum over labelled pixels of the pixel's loss times its true class's weight (as
  mmsegmentation, the weights do not change the denominator: a mean over pixels, not over weights).
- `ohem`: the same sum over the kept pixels only (mmsegmentation's sampler gives the other pixels weight 0 and
  averages over all pixels, which is this). Pixels are chosen per image, so the choice is the same whatever the
  split.
- `dice`, `lovasz`: computed per image, then each image's loss times its labelled pixels: after the trainer's
  division, the images' losses averaged with their labelled pixels as weights.

One-label (binary, BCE) models are handled everywhere as two classes, background (logit <= 0) and the label
(logit > 0), with probabilities `1 - sigmoid` and `sigmoid`: `ce` is then exactly BCE-with-logits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    ignore_index: int,
    reduction: str = "mean",
    upsampled: bool = False,
    check: bool = True,
) -> Any:
    """transformers' SegFormer loss: logits upsampled (bilinear) to the labels' size, then cross-entropy with
    `ignore_index`, or for one label BCE-with-logits over the valid pixels.

    Labels must be `(B, H, W)` class indices in `[0, num_labels)` or `ignore_index` (for one label: 0/1 targets);
    a value outside that is refused by name (cross-entropy would fail with a device-side assert on a GPU).

    `reduction="sum"` sums over the labelled pixels (the trainer normalises by the global batch's); `upsampled=True`
    returns `(loss, upsampled logits)`, for metrics on the same upsampling; `check=False` skips the label check
    (one pass and a host sync) for labels the caller built valid. This is the one copy of the loss: the
    models, the trainer and the evaluator all call it."""
    if labels.ndim != 3 or labels.shape[0] != logits.shape[0] or labels.is_floating_point() and num_labels > 1:
        raise ValueError(
            f"labels must be (batch={logits.shape[0]}, height, width) integer class indices, got shape "
            f"{tuple(labels.shape)} and dtype {labels.dtype}"
        )
    if check and not torch.jit.is_tracing() and not torch.compiler.is_compiling():  # one host sync, none when traced
        classes = max(num_labels, 2)
        bad = ((labels < 0) | (labels >= classes)) & (labels != ignore_index)
        if bad.any():
            raise ValueError(
                f"label value {labels[bad][0].item()} is outside [0, {classes}) and is not the ignore "
                f"index {ignore_index}; expected class indices below num_labels={num_labels}"
            )
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if num_labels > 1:
        loss = F.cross_entropy(up, labels.long(), ignore_index=ignore_index, reduction=reduction)
    else:
        valid = ((labels >= 0) & (labels != ignore_index)).float()
        per_pixel = F.binary_cross_entropy_with_logits(up.squeeze(1), labels.float(), reduction="none") * valid
        loss = per_pixel.sum() if reduction == "sum" else per_pixel.mean()
    return (loss, up) if upsampled else loss


def silog_loss(predicted: torch.Tensor, target: torch.Tensor, lambd: float = 0.5) -> torch.Tensor:
    """The scale-invariant log loss (Eigen et al. 2014) over the pixels with a positive target, as transformers
    computes it: sqrt(mean(d^2) - lambd * mean(d)^2), d = log target - log predicted."""
    valid = target > 0
    d = torch.log(target[valid]) - torch.log(predicted[valid])
    return torch.sqrt(d.pow(2).mean() - lambd * d.mean().pow(2))


# ---- training losses for imbalanced data ---------------------------------------------------------------------------

# `--loss` names -> what each is, for messages and `--help`
LOSSES = {
    "ce": "cross-entropy (BCE for a one-label model), weighted by --class-weights",
    "ohem": "cross-entropy over the hard pixels only (true-class probability < 0.7, at least 100000 per image)",
    "dice": "1 - soft Dice of the softmax probabilities, averaged over the classes (per image)",
    "lovasz": "Lovasz-softmax, the Jaccard loss's convex surrogate, over the classes present (per image)",
    "focal": "focal loss (gamma 2): cross-entropy scaled by (1 - p)^2, weighted by --class-weights",
}
OHEM_THRESH = 0.7  # mmsegmentation's SegFormer/OCRNet configs: OHEMPixelSampler(thresh=0.7, min_kept=100000)
OHEM_MIN_KEPT = 100_000
FOCAL_GAMMA = 2.0
DICE_SMOOTH, DICE_EXPONENT = 1.0, 2.0  # mmsegmentation's DiceLoss defaults


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """`"ce:1,dice:0.5"` -> `[("ce", 1.0), ("dice", 0.5)]`: loss names of `LOSSES`, each with an optional weight
    (default 1); a name may appear once.

    Raises:
        ValueError: An unknown name, a weight that is not a positive finite number, a repeated name, or nothing.
    """
    terms: dict[str, float] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            raise ValueError(f"loss {spec!r}: an empty term; expected NAME[:WEIGHT] terms joined by commas")
        name, _, weight_text = part.partition(":")
        name = name.strip().lower()
        if name not in LOSSES:
            raise ValueError(f"loss {spec!r}: unknown loss {name!r}; the losses are {', '.join(LOSSES)}")
        if name in terms:
            raise ValueError(f"loss {spec!r}: {name} is given twice")
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"loss {spec!r}: the weight of {name} must be a positive number, got {weight_text!r}")
        terms[name] = weight
    return list(terms.items())


def parse_class_weights(text: str, num_classes: int | None = None) -> list[float] | None:
    """`--class-weights`: `"auto"` -> None (computed from the data), else `"w0,w1,..."` as floats (one per class
    when `num_classes` is given); refused by value and count otherwise."""
    text = str(text).strip()
    if text == "auto":
        return None
    try:
        weights = [float(v) for v in re.split(r"[,\s]+", text) if v]
    except ValueError:
        raise ValueError(
            f"class weights {text!r}: expected 'auto' or one number per class joined by commas (w0,w1,...)"
        ) from None
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ValueError(f"class weights {text!r}: expected finite weights >= 0, not all 0")
    if num_classes is not None and len(weights) != num_classes:
        raise ValueError(
            f"class weights {text!r}: {len(weights)} weight(s) given, the data has {num_classes} classes "
            f"(num_labels); give one weight per class"
        )
    return weights


def class_weights_from_counts(counts: Sequence[int] | np.ndarray) -> list[float]:
    """`--class-weights auto`: ENet's rule (Paszke et al. 2016, arXiv:1606.02147), w_c = 1 / ln(1.02 + p_c) with p_c
    class c's share of the labelled training pixels, then scaled so that the average labelled pixel's weight
    (sum_c p_c w_c) is 1, which keeps the loss on cross-entropy's scale. The weights lie within a factor ~36 of each
    other (1 / ln 1.02 ~ 50.5 for a class that is absent or very rare, 1 / ln 2.02 ~ 1.42 for one that fills
    everything), where median-frequency balancing grows without bound for a rare class."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or counts.sum() <= 0:
        raise ValueError(f"class weights need pixel counts of two or more classes, some labelled; got {counts}")
    share = counts / counts.sum()
    weights = 1.0 / np.log(1.02 + share)
    return (weights / float((share * weights).sum())).tolist()


def class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel log-probabilities `(B, K, H, W)` of logits `(B, K, H, W)`: log-softmax, or for one logit the two
    classes background / label, `(log sigmoid(-x), log sigmoid(x))`."""
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return F.log_softmax(logits, dim=1)


def _pixel_ce(log_probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`-log p` of each pixel's true class `(B, H, W)` (0 where not `valid`)."""
    index = torch.where(valid, labels, 0).long()
    return -log_probs.gather(1, index[:, None])[:, 0] * valid


def ohem_keep(true_prob: torch.Tensor, valid: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """mmsegmentation's OHEM rule, per image: the labelled pixels whose true-class probability is below `thresh`,
    or when fewer than `min_kept` are, the `min_kept` hardest (lowest probability; all when the image has fewer).
    `true_prob` / `valid` are `(B, H, W)`; returns the kept pixels as a bool `(B, H, W)`."""
    keep = (true_prob < thresh) & valid
    kept, labelled = keep.sum((1, 2)).tolist(), valid.sum((1, 2)).tolist()  # one host sync
    for b, (n_kept, n_valid) in enumerate(zip(kept, labelled)):
        if n_kept >= min(min_kept, n_valid):
            continue
        scores = torch.where(valid[b], true_prob[b], math.inf).flatten()
        hardest = torch.topk(scores, min(min_kept, n_valid), largest=False).indices
        keep[b].view(-1)[hardest] = True
    return keep


def dice_loss_per_image(
    probs: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    smooth: float = DICE_SMOOTH,
    exponent: float = DICE_EXPONENT,
) -> torch.Tensor:
    """mmsegmentation's Dice loss per image `(B,)`: for each class c, 1 - (2 sum p_c t_c + smooth) / (sum p_c^e +
    t_c^e + smooth) over the image's labelled pixels (ignored ones excluded from both sums), t the one-hot
    labels; times the class's weight, averaged over all K classes."""
    k = probs.shape[1]
    onehot = F.one_hot(torch.where(valid, labels, 0).long(), k).permute(0, 3, 1, 2).to(probs.dtype)
    v = valid[:, None].to(probs.dtype)
    inter = (probs * onehot * v).sum((2, 3))  # (B, K)
    denom = ((probs.pow(exponent) + onehot.pow(exponent)) * v).sum((2, 3))
    per_class = 1 - (2 * inter + smooth) / (denom + smooth)
    if class_weights is not None:
        per_class = per_class * class_weights
    return per_class.mean(1)


def lovasz_softmax_per_image(
    probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Lovasz-softmax (Berman et al. 2018, arXiv:1705.08790) per image `(B,)`: for each class present in the image's
    labels, the Lovasz extension of the Jaccard loss at the pixel errors |[y = c] - p_c| (sorted descending, dotted
    with the Jaccard loss's increments); times the class's weight, averaged over the present classes (0 for an
    image with no labelled pixel)."""
    losses = []
    for b in range(probs.shape[0]):
        keep = valid[b]
        p = probs[b][:, keep]  # (K, N) the labelled pixels
        y = labels[b][keep].long()
        terms = []
        for c in torch.unique(y).tolist():
            fg = (y == c).to(p.dtype)
            errors, order = (fg - p[c]).abs().sort(descending=True)
            fg_sorted = fg[order]
            total = fg_sorted.sum()
            # Jaccard loss of the k largest errors' set, k = 1..N; its increments are the extension's weights
            jaccard = 1 - (total - fg_sorted.cumsum(0)) / (total + (1 - fg_sorted).cumsum(0))
            grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
            term = torch.dot(errors, grad)
            terms.append(term * class_weights[c] if class_weights is not None else term)
        losses.append(torch.stack(terms).mean() if terms else probs.new_zeros(()))
    return torch.stack(losses)


def combined_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    terms: Sequence[tuple[str, float]],
    ignore_index: int,
    class_weights: torch.Tensor | Sequence[float] | None = None,
    ohem_thresh: float = OHEM_THRESH,
    ohem_min_kept: int = OHEM_MIN_KEPT,
    focal_gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """A micro-batch's training loss: the `terms` (`parse_loss_spec`) summed by their weights, each a sum over the
    labelled pixels as the module docstring says (the trainer divides by the global batch's labelled pixels).

    Args:
        logits: `(B, K, H, W)` at the labels' size (upsampled already); K = 1 for a binary BCE model.
        labels: `(B, H, W)` class indices or `ignore_index`.
        terms: `(name, weight)` pairs of `LOSSES`.
        ignore_index: The label of unlabelled pixels.
        class_weights: One weight per class (2 for a one-label model: background, label), or None.
    """
    if logits.shape[-2:] != labels.shape[-2:] or labels.ndim != 3:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: expected (B, K, H, W) logits upsampled to "
            "(B, H, W) labels"
        )
    log_probs = class_log_probs(logits.to(torch.promote_types(logits.dtype, torch.float32)))  # fp32 or fp64
    k = log_probs.shape[1]
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=log_probs.dtype, device=log_probs.device)
        if weights.shape != (k,):
            raise ValueError(f"{len(weights)} class weights for a model of {k} classes; expected one per class")
    valid = (labels != ignore_index) & (labels >= 0)
    pixel_weight = weights[torch.where(valid, labels, 0).long()] if weights is not None else 1.0
    ce = _pixel_ce(log_probs, labels, valid)
    total = log_probs.new_zeros(())
    for name, factor in terms:
        if name == "ce":
            term = (ce * pixel_weight).sum()
        elif name == "focal":
            term = ((1 - torch.exp(-ce)).pow(focal_gamma) * ce * pixel_weight).sum()
        elif name == "ohem":
            keep = ohem_keep(torch.exp(-ce.detach()), valid, ohem_thresh, ohem_min_kept)
            term = (ce * pixel_weight * keep).sum()
        elif name in ("dice", "lovasz"):
            per_image = (dice_loss_per_image if name == "dice" else lovasz_softmax_per_image)(
                log_probs.exp(), labels, valid, weights
            )
            term = (per_image * valid.sum((1, 2))).sum()
        else:
            raise ValueError(f"unknown loss {name!r}; the losses are {', '.join(LOSSES)}")
        total = total + factor * term
    return total
