"""The training losses for imbalanced data (`pvtkit.losses`), each against a direct computation written another way:
numpy loops over pixels and classes, and for Lovasz-softmax the Lovasz extension as an integral over thresholds of
the Jaccard loss of explicit sets (and at 0/1 errors, 1 - IoU itself)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pvtkit.losses import (
    class_weights_from_counts,
    combined_loss,
    parse_class_weights,
    parse_loss_spec,
)

IGNORE = 255


def batch(seed: int = 0, b: int = 2, k: int = 4, h: int = 5, w: int = 6, ignore: float = 0.15):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(b, k, h, w))
    labels = rng.integers(0, max(k, 2), size=(b, h, w))
    labels[rng.random((b, h, w)) < ignore] = IGNORE
    return logits, labels


def probs_np(logits: np.ndarray) -> np.ndarray:
    """Class probabilities `(B, K', H, W)`: softmax, or for one logit (1 - sigmoid, sigmoid)."""
    if logits.shape[1] == 1:
        s = 1 / (1 + np.exp(-logits[:, 0]))
        return np.stack([1 - s, s], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def loss_of(logits: np.ndarray, labels: np.ndarray, spec: str, weights=None, **kw) -> float:
    out = combined_loss(
        torch.from_numpy(logits), torch.from_numpy(labels), parse_loss_spec(spec), IGNORE, weights, **kw
    )
    return out.item()


def pixels(labels: np.ndarray):
    """(b, y, x, label) of every labelled pixel, in a plain loop."""
    b, h, w = labels.shape
    return [
        (i, y, x, int(labels[i, y, x]))
        for i in range(b)
        for y in range(h)
        for x in range(w)
        if labels[i, y, x] != IGNORE
    ]


@pytest.mark.parametrize("k", [4, 1])
def test_weighted_cross_entropy_and_focal_are_sums_over_labelled_pixels(k):
    logits, labels = batch(k=k)
    p = probs_np(logits)
    weights = [0.5, 2.0, 1.0, 3.0][: max(k, 2)]
    ce = focal = wce = 0.0
    for i, y, x, c in pixels(labels):
        q = p[i, c, y, x]
        ce += -math.log(q)
        wce += -weights[c] * math.log(q)
        focal += -weights[c] * (1 - q) ** 2 * math.log(q)
    assert loss_of(logits, labels, "ce") == pytest.approx(ce, rel=1e-9)
    assert loss_of(logits, labels, "ce", weights) == pytest.approx(wce, rel=1e-9)
    assert loss_of(logits, labels, "focal", weights) == pytest.approx(focal, rel=1e-9)
    if k == 1:  # one logit: BCE-with-logits over the labelled pixels
        valid = labels != IGNORE
        bce = F.binary_cross_entropy_with_logits(
            torch.from_numpy(logits[:, 0][valid]), torch.from_numpy(labels[valid]).double(), reduction="sum"
        )
        assert loss_of(logits, labels, "ce") == pytest.approx(bce.item(), rel=1e-9)
    else:  # and torch's own weighted cross-entropy summed (its mean would divide by the weights, not the pixels)
        ref = F.cross_entropy(
            torch.from_numpy(logits),
            torch.from_numpy(labels),
            weight=torch.tensor(weights, dtype=torch.float64),
            ignore_index=IGNORE,
            reduction="sum",
        )
        assert loss_of(logits, labels, "ce", weights) == pytest.approx(ref.item(), rel=1e-9)


@pytest.mark.parametrize("min_kept", [3, 40])
def test_ohem_keeps_the_pixels_below_the_threshold_or_the_hardest_min_kept_per_image(min_kept):
    logits, labels = batch(seed=1, h=8, w=8)
    rng = np.random.default_rng(1)
    for i, y, x, c in pixels(labels):  # most pixels right and confident: the easy ones OHEM drops
        logits[i, c, y, x] += 6 * (rng.random() < 0.7)
    p = probs_np(logits)
    expected = 0.0
    for i in range(labels.shape[0]):
        mine = [(p[j, c, y, x], -math.log(p[j, c, y, x])) for j, y, x, c in pixels(labels) if j == i]
        below = [loss for prob, loss in mine if prob < 0.7]
        if len(below) >= min(min_kept, len(mine)):
            expected += sum(below)
        else:  # the min_kept lowest probabilities
            expected += sum(loss for _, loss in sorted(mine)[:min_kept])
    got = loss_of(logits, labels, "ohem", ohem_min_kept=min_kept)
    assert got == pytest.approx(expected, rel=1e-9)
    # each rule ran: the threshold keeps 3 or more in every image, fewer than 40 in each
    below = [sum(1 for j, y, x, c in pixels(labels) if j == i and p[j, c, y, x] < 0.7) for i in range(2)]
    assert min(below) >= 3 and max(below) < 40
    assert got < loss_of(logits, labels, "ce")  # and something was dropped


@pytest.mark.parametrize("k", [4, 1])
def test_dice_is_mmsegs_softmax_dice_per_image_weighted_by_labelled_pixels(k):
    logits, labels = batch(seed=2, k=k)
    p = probs_np(logits)  # one logit: background 1 - sigmoid, the label sigmoid
    classes = max(k, 2)
    weights = [1.0, 2.0, 0.5, 1.5][:classes]
    expected = 0.0
    for i in range(labels.shape[0]):
        per_class = []
        for c in range(classes):
            inter = denom = 0.0
            for j, y, x, t in pixels(labels):
                if j == i:
                    q, onehot = p[i, c, y, x], float(t == c)
                    inter += q * onehot
                    denom += q**2 + onehot**2
            per_class.append(weights[c] * (1 - (2 * inter + 1) / (denom + 1)))
        n = sum(1 for j, *_ in pixels(labels) if j == i)
        expected += n * sum(per_class) / classes
    assert loss_of(logits, labels, "dice", weights) == pytest.approx(expected, rel=1e-9)


def jaccard_set_loss(mistakes: set, truth: set) -> float:
    """Berman's Delta_J of a set of mispredicted pixels: |M| / |truth u M| (0 for the empty set)."""
    return len(mistakes) / len(truth | mistakes) if mistakes else 0.0


def lovasz_extension_by_integral(errors: np.ndarray, truth: set) -> float:
    """The Lovasz extension as the integral over t in [0, 1] of Delta_J({i: errors_i >= t}), piecewise constant
    between the distinct error values."""
    levels = sorted(set(errors.tolist()) | {0.0})
    total = 0.0
    for lo, hi in zip(levels[:-1], levels[1:]):
        mistakes = {i for i, e in enumerate(errors) if e >= hi}
        total += (hi - lo) * jaccard_set_loss(mistakes, truth)
    return total


@pytest.mark.parametrize("k", [3, 1])
def test_lovasz_softmax_is_the_lovasz_extension_of_the_jaccard_loss_per_image(k):
    logits, labels = batch(seed=3, b=2, k=k, h=3, w=4)
    p = probs_np(logits)
    expected = 0.0
    for i in range(2):
        mine = [(y, x, c) for j, y, x, c in pixels(labels) if j == i]
        terms = []
        for c in sorted({t for _, _, t in mine}):
            truth = {n for n, (_, _, t) in enumerate(mine) if t == c}
            errors = np.array([abs(float(t == c) - p[i, c, y, x]) for y, x, t in mine])
            terms.append(lovasz_extension_by_integral(errors, truth))
        expected += len(mine) * np.mean(terms)
    assert loss_of(logits, labels, "lovasz") == pytest.approx(expected, rel=1e-9)

    # At confident predictions the errors are 0/1 and the extension is the Jaccard loss itself: 1 - IoU per class
    hard = logits * 200
    predicted = hard.argmax(1) if k > 1 else (hard[:, 0] > 0).astype(int)
    expected = 0.0
    for i in range(2):
        valid = labels[i] != IGNORE
        ious = []
        for c in np.unique(labels[i][valid]):
            t, q = (labels[i] == c) & valid, (predicted[i] == c) & valid
            ious.append((t & q).sum() / (t | q).sum())
        expected += valid.sum() * (1 - np.mean(ious))
    assert loss_of(hard, labels, "lovasz") == pytest.approx(expected, rel=1e-5)  # softmax saturates to ~1e-7


def test_a_weighted_sum_is_the_terms_sum_and_every_term_has_a_gradient():
    logits, labels = batch(seed=4)
    parts = {name: loss_of(logits, labels, name) for name in ("ce", "dice", "lovasz", "focal", "ohem")}
    assert loss_of(logits, labels, "ce:1,dice:0.5,lovasz:2") == pytest.approx(
        parts["ce"] + 0.5 * parts["dice"] + 2 * parts["lovasz"], rel=1e-9
    )
    for name in parts:
        x = torch.from_numpy(logits).requires_grad_()
        combined_loss(x, torch.from_numpy(labels), [(name, 1.0)], IGNORE, [1.0, 2.0, 1.0, 0.5]).backward()
        g = x.grad
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        # ignored pixels get no gradient
        ignored = torch.from_numpy(labels == IGNORE)[:, None].expand_as(g)
        assert g[ignored].abs().max() == 0, name


def test_the_sum_does_not_depend_on_how_the_batch_is_split():
    logits, labels = batch(seed=5, b=4)
    spec = "ce:1,dice:0.5,lovasz:0.5,ohem:1,focal:1"
    whole = loss_of(logits, labels, spec, ohem_min_kept=10)
    halves = sum(loss_of(logits[s], labels[s], spec, ohem_min_kept=10) for s in (slice(0, 1), slice(1, 4)))
    assert whole == pytest.approx(halves, rel=1e-9)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ce:1,dyce:1", "unknown loss 'dyce'; the losses are ce, ohem, dice, lovasz, focal"),
        ("ce:-1", "the weight of ce must be a positive number, got '-1'"),
        ("ce:abc", "the weight of ce must be a positive number, got 'abc'"),
        ("ce,ce:2", "ce is given twice"),
        ("ce,,dice", "an empty term"),
    ],
)
def test_bad_loss_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_loss_spec(spec)


def test_spec_and_class_weight_parsing():
    assert parse_loss_spec("CE, dice:0.5") == [("ce", 1.0), ("dice", 0.5)]
    assert parse_class_weights("auto") is None
    assert parse_class_weights("1, 2.5,0", 3) == [1.0, 2.5, 0.0]
    with pytest.raises(ValueError, match="2 weight\\(s\\) given, the data has 3 classes"):
        parse_class_weights("1,2", 3)
    with pytest.raises(ValueError, match="expected finite weights >= 0"):
        parse_class_weights("1,-2")


def test_auto_weights_follow_enets_rule_with_a_mean_of_one_per_pixel():
    counts = np.array([9000, 900, 90, 10])
    w = np.array(class_weights_from_counts(counts))
    p = counts / counts.sum()
    raw = np.array([1 / math.log(1.02 + share) for share in p])
    np.testing.assert_allclose(w, raw / (p * raw).sum(), rtol=1e-12)
    assert (p * w).sum() == pytest.approx(1.0) and np.all(np.diff(w) > 0)  # rarer -> heavier
