"""The label doctor: every mask of a segmentation dataset read once, and what would break training (or quietly spoil
it) reported with the fix, before a run starts (`pvtkit doctor`; `pvtkit train` refuses the errors).

The mistakes it knows are the ones people keep making (transformers#35402, mmsegmentation#1714 and #3787,
NVlabs/SegFormer#75): masks saved as 0/255 black-and-white images, where 255 is the ignore index and the object is
never trained; ADE20K-style masks whose 0 means "unlabelled" trained without `--reduce-labels` (or the reverse);
colour masks instead of class indices; values beyond the classes; masks of another size than their image; images
without a mask; copies of one image; classes too rare to learn without weights.

Detection rules, in the order they are checked (pixels counted over every mask that can be read and fits its
image; "labelled" pixels are those that are not 255 after `--reduce-labels` is applied, as training sees them):

errors (the run would crash, refuse the data, or learn something else than the user meant):
    unpaired         an image without a mask or a mask without an image (pairs match by path without extension).
    name-clash       two files of one folder differ only by their extension: they cannot be paired.
    empty-split      no pairs in the training split (or in a validation folder that exists).
    size-mismatch    a mask's width x height differs from its image's.
    colour-masks     a mask of several bands (RGB, RGBA, LA): classes must be one index per pixel.
    binary-255       the masks hold only 0, 255 and maybe 1, 255 covering more pixels than 1 (0/255
                     black-and-white masks); or 0 and 255 appear, values within 15 of them cover >= 80% of the
                     pixels and >= 8 other values appear, a quarter of them above 127 and some beyond the classes
                     (0/255 masks smoothed by a bilinear resize or JPEG).
    reduce-labels-needed
                     values reach exactly the number of classes K, 0 is present and class 0 is not named like a
                     background: ADE20K's convention (0 = "other", 1..K = classes); the fix is --reduce-labels.
    out-of-range     other values >= K (after --reduce-labels) that are not 255, or negative values; K is the
                     number of names in labels.json / classes.txt, else the --model's num_labels, else unknown
                     (the classes are then the indices found, as `pvtkit train` takes them).
    too-few-classes  fewer than two classes labelled in all the masks together.
warnings (training runs, but probably not as meant):
    reduce-labels-suspect
                     --reduce-labels while no mask holds 0 (nothing is ignored, every class shifts down by one),
                     or while class 0 is named "background" and 0 is in the masks.
    sparse-values    without a class list: few distinct values spread far (max + 1 >= 4 x their number, max >=
                     16), as colours or grey levels of a colour-coded mask give.
    ignore-heavy     more than half of all pixels are 255 (ignored); all-ignored: masks with no labelled pixel.
    imbalance        a labelled class below 0.1% of the labelled pixels, or the largest class over 1000 x the
                     smallest: the fix is --class-weights auto.
    absent-classes   named classes with no pixel in the training split.
    duplicate-images images with identical bytes (named when they sit in both splits, or carry different masks).
    lossy-masks      masks stored as JPEG (the values blur at class edges).
    unreadable       pairs that cannot be decoded (`pvtkit train` skips them); an error when none can be.
    labels-differ    the class list and the --model's labels differ in number (training replaces the head).
info:
    labels           where the classes come from and what value 0 means (class 0 or ignored by --reduce-labels);
                     it suggests --reduce-labels when class 0 is named like "other", "void" or "unlabelled".
    mask-modes       how the masks are stored (L grey, P palette: read as indices, colours ignored; I;16 ...).
    ignore-index     the share of pixels marked 255 (ignored).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..processing import ImageLoadError, label_array, reduce_labels
from .folders import IGNORE_INDEX, LABEL_FILES, DatasetError, LayoutError, find_segmentation_layout, read_class_names

SEVERITIES = ("error", "warning", "info")
# Names that say class 0 is a real class to learn, and names that say 0 marks pixels nobody labelled.
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "__background__", "backdrop"})
UNLABELLED_NAMES = frozenset(
    {"other", "others", "void", "unlabeled", "unlabelled", "ignore", "ignored", "none", "nothing", "clutter"}
)
RARE_SHARE = 0.001  # a class below this share of the labelled pixels is "rare"
IMBALANCE_RATIO = 1000.0  # largest / smallest class share beyond which class weights are suggested
HEAVY_IGNORE = 0.5  # share of all pixels marked 255 beyond which a warning is given
FILES_SHOWN = 5  # files named per finding (the count says how many there are)
TABLE_ROWS = 300  # class rows the readable report shows

FIX_REDUCE = "--reduce-labels (mask value 0 = unlabelled, ignored; value k = class k-1)"
FIX_NO_REDUCE = "--no-reduce-labels (for pvtkit train: leave out --reduce-labels)"
FIX_BINARY = "remap 255 -> 1: masks look 0/255 binary (255 is the ignore index, so the object is never trained)"
FIX_SMOOTHED = (
    "threshold the masks at 128 and remap 255 -> 1: they look 0/255 binary, smoothed by an interpolating resize or "
    "JPEG (resize masks with nearest-neighbour, save them as PNG)"
)
FIX_COLOURS = "convert palette masks to indices: each pixel's value must be its class index, not a colour or grey level"
FIX_WEIGHTS = "--class-weights auto (weights each class by how rare it is)"


@dataclass
class Finding:
    """One problem (or fact) about a dataset.

    Attributes:
        severity: `"error"` (breaks training), `"warning"` (spoils it, probably) or `"info"`.
        code: A stable name for scripts (`binary-255`, `out-of-range`, ...; the module docstring lists them).
        message: What is wrong, with the numbers.
        fix: The flag or action that fixes it (None for facts).
        files: The first `FILES_SHOWN` files concerned; `count` is how many there are in all.
    """

    severity: str
    code: str
    message: str
    fix: str | None = None
    files: list[str] = field(default_factory=list)
    count: int = 0

    @classmethod
    def about(
        cls, severity: str, code: str, message: str, fix: str | None = None, files: Sequence[Any] = ()
    ) -> Finding:
        names = [str(f) for f in files]
        return cls(severity, code, message, fix, names[:FILES_SHOWN], len(names))

    def describe(self, indent: str = "") -> str:
        """The finding as a few lines of text: severity, code and message, the files, the fix."""
        lines = [f"{indent}{self.severity.upper():<7} {self.code}: {self.message}"]
        if self.files:
            more = f" (and {self.count - len(self.files)} more)" if self.count > len(self.files) else ""
            lines += [f"{indent}        files: {', '.join(self.files)}{more}"]
        if self.fix:
            lines += [f"{indent}        fix: {self.fix}"]
        return "\n".join(lines)


@dataclass
class PairStats:
    """What one read of an image/mask pair tells: sizes, how the mask is stored, and its value histogram.

    Attributes:
        image / mask: The paths; `split` is `"train"` or `"val"`.
        image_size / mask_size: `(width, height)`, None when the file cannot be read.
        mode: The mask's PIL mode (`L`, `P`, `I;16`, `RGB`, ...); `bands` its number of bands.
        values / counts: The mask's values as they are on disk (ascending) and the pixels of each.
        error: Why the pair cannot be used as class indices (unreadable file, or a colour mask).
        grey: For a multi-band mask, whether every colour channel holds the same value.
        colours: For a multi-band mask, its number of distinct colours.
        image_hash / mask_hash: Content digests (the image file's bytes, the mask's values), when asked for.
    """

    image: str
    mask: str
    split: str = "train"
    image_size: tuple[int, int] | None = None
    mask_size: tuple[int, int] | None = None
    mode: str | None = None
    bands: int = 0
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    error: str | None = None
    grey: bool = False
    colours: int = 0
    image_hash: str | None = None
    mask_hash: str | None = None

    @property
    def colour(self) -> bool:
        """A mask of several bands: colours, not class indices."""
        return self.error is not None and self.bands > 1

    @property
    def usable(self) -> bool:
        return self.error is None and self.mask_size == self.image_size

    def histogram(self, reduce: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(values, pixels of each), ascending, as training sees them: after `--reduce-labels` when `reduce`."""
        if not reduce or not len(self.values):
            return self.values, self.counts
        keys, inverse = np.unique(reduce_labels(self.values.copy()), return_inverse=True)
        return keys, np.bincount(inverse, weights=self.counts, minlength=len(keys)).astype(np.int64)


def pair_stats(image: str | Path, mask: str | Path, split: str = "train", hashes: bool = False) -> PairStats:
    """Read a pair once: the image's header (with `hashes`, its bytes too) and the whole mask (`label_array`'s
    reading, the one training uses), kept as its histogram. Never raises for a bad file: the reason goes in
    `error`."""
    stats = PairStats(str(image), str(mask), split)
    try:
        if hashes:
            data = Path(image).read_bytes()
            stats.image_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
        with PIL.Image.open(image) as opened:
            stats.image_size = opened.size
    except (OSError, SyntaxError, ValueError) as e:
        stats.error = str(e) or type(e).__name__
        return stats
    try:
        with PIL.Image.open(mask) as opened:
            opened.load()
            stats.mode, stats.bands, stats.mask_size = opened.mode, len(opened.getbands()), opened.size
            try:
                # a byte per pixel is counted as it is; other modes are widened to int64 class indices
                pixels = np.asarray(opened) if opened.mode in ("L", "P") else label_array(opened, name=f"mask {mask}")
            except ImageLoadError as e:
                stats.error = str(e)
                if stats.bands > 1:
                    pixels = np.asarray(opened)
                    channels = pixels[..., :3] if stats.mode != "LA" else pixels[..., :1]
                    stats.grey = bool((channels == channels[..., :1]).all())
                    packed = np.zeros(channels.shape[:2], np.int64)
                    for c in range(channels.shape[-1]):
                        packed = packed * 65536 + channels[..., c]
                    stats.colours = len(np.unique(packed))
                return stats
    except (OSError, SyntaxError, ValueError) as e:
        stats.error = f"mask {mask}: cannot be decoded ({e})"
        return stats
    flat = pixels.ravel()
    if pixels.dtype == np.uint8 or (flat.min() >= 0 and flat.max() < 1 << 16):
        counts = np.bincount(flat)
        stats.values = np.flatnonzero(counts)
        stats.counts = counts[stats.values]
    else:
        stats.values, stats.counts = np.unique(flat, return_counts=True)
    if hashes:
        stats.mask_hash = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).hexdigest()
    return stats


def read_pair_stats(
    pairs: Sequence[tuple[Any, Any, str]], threads: int = 8, progress: bool = False, hashes: bool = False
) -> list[PairStats]:
    """`pair_stats` of `(image, mask, split)` triples, in order, in a thread pool (PIL decodes without the GIL)
    under a progress bar on stderr."""
    from .folders import threaded_map

    def stats(pair: tuple[Any, Any, str]) -> PairStats:
        return pair_stats(pair[0], pair[1], pair[2], hashes)

    return threaded_map(stats, pairs, threads, "reading masks", not progress or None)


@dataclass
class ClassRow:
    """A class of the report's table: its pixels (labelled, as training sees them), its share of the labelled
    pixels and the number of masks it appears in."""

    index: int
    name: str
    pixels: int
    share: float
    masks: int


@dataclass
class DoctorReport:
    """What `diagnose_segmentation` found; `ok` when there is no error."""

    data: str
    layout: str | None
    pairs: dict[str, int]
    num_labels: int | None
    labels_from: str
    reduce_labels: bool
    mask_modes: dict[str, int]
    pixels: int
    ignored_pixels: int
    classes: list[ClassRow]
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self, severity: str | None = None) -> list[str]:
        return [f.code for f in self.findings if severity is None or f.severity == severity]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ok=self.ok, errors=len(self.errors), warnings=len(self.warnings))
        return out

    def table(self) -> str:
        """The report for people: the data, the classes with their pixel shares, then the findings."""
        pairs = " + ".join(f"{n} {split}" for split, n in self.pairs.items() if n or split == "train")
        shown = [f"data      {self.data} ({self.layout or 'no'} layout: {pairs} pairs)"]
        count = (
            f"{self.num_labels} classes from {self.labels_from}"
            if self.num_labels is not None
            else "no class list: the classes are the values found"
        )
        zero = "ignored, k -> k-1 (--reduce-labels)" if self.reduce_labels else "a class (no --reduce-labels)"
        shown.append(f"labels    {count}; value 0 is {zero}")
        modes = ", ".join(f"{n} {mode}" for mode, n in sorted(self.mask_modes.items()))
        ignored = self.ignored_pixels / self.pixels if self.pixels else 0.0
        shown.append(f"masks     {modes or 'none read'}; {self.pixels} pixels, {ignored:.2%} ignored (255)")
        if self.classes:
            width = max(5, *(len(row.name) for row in self.classes))
            shown.append(f"\n{'class':<{width}}  index      pixels    share   masks")
            for row in self.classes[:TABLE_ROWS]:
                shown.append(
                    f"{row.name:<{width}}  {row.index:>5}  {row.pixels:>10}  {row.share:>7.2%}  {row.masks:>6}"
                )
            if len(self.classes) > TABLE_ROWS:
                shown.append(f"... and {len(self.classes) - TABLE_ROWS} more values (--json lists them all)")
        if self.findings:
            shown.append("")
            shown += [f.describe() for f in self.findings]
        verdict = (
            "no errors: ready to train"
            if self.ok
            else f"{len(self.errors)} error(s): pvtkit train would refuse this data or train it wrongly"
        )
        shown.append(f"\n{verdict} ({len(self.warnings)} warning(s))")
        return "\n".join(shown) + "\n"


def _label_name(name: str | None) -> str:
    return (name or "").strip().lower()


def _name(names: Sequence[str] | None, index: int) -> str:
    return str(names[index]) if names and 0 <= index < len(names) else str(index)


@dataclass
class _Tally:
    """The readable pairs' pixels summed: the values on disk (`raw`) and as training sees them (`pixels`, after
    `--reduce-labels`), the masks holding each value, and the masks with values beyond the classes."""

    raw: Counter[int] = field(default_factory=Counter)
    pixels: Counter[int] = field(default_factory=Counter)
    holding: Counter[int] = field(default_factory=Counter)
    train_values: set[int] = field(default_factory=set)
    beyond: dict[str, list[int]] = field(default_factory=dict)
    all_ignored: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, good: Sequence[PairStats], reduce: bool, num_labels: int | None) -> _Tally:
        tally = cls()
        for s in good:
            tally.raw.update(dict(zip(s.values.tolist(), s.counts.tolist())))
            values, counts = s.histogram(reduce)
            tally.pixels.update(dict(zip(values.tolist(), counts.tolist())))
            tally.holding.update(values.tolist())
            labelled = [v for v in values.tolist() if v != IGNORE_INDEX]
            if s.split == "train":
                tally.train_values.update(labelled)
            if not labelled:
                tally.all_ignored.append(s.mask)
            bad = [v for v in labelled if v < 0 or (num_labels is not None and v >= num_labels)]
            if bad:
                tally.beyond[s.mask] = bad
        return tally

    @property
    def total(self) -> int:
        return sum(self.pixels.values())

    @property
    def ignored(self) -> int:
        return self.pixels.get(IGNORE_INDEX, 0)

    @property
    def classes(self) -> dict[int, int]:
        """Labelled pixels per class value."""
        return {v: n for v, n in self.pixels.items() if v != IGNORE_INDEX}

    @property
    def present(self) -> list[int]:
        return sorted(v for v in self.classes if v >= 0)


@dataclass
class _Case:
    """What the rules look at: the pairs, their tally, and what the user says the classes are."""

    stats: Sequence[PairStats]
    good: list[PairStats]
    tally: _Tally
    names: Sequence[str] | None
    num_labels: int | None
    reduce: bool
    labels_from: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, severity: str, code: str, message: str, fix: str | None = None, files: Sequence[Any] = ()) -> None:
        self.findings.append(Finding.about(severity, code, message, fix, files))

    @property
    def zero_name(self) -> str:
        return _label_name(self.names[0]) if self.names else ""


def _file_rules(case: _Case, lone_files: Sequence[Any]) -> None:
    """unpaired, size-mismatch, colour-masks, unreadable, lossy-masks."""
    stats = case.stats
    if lone_files:
        case.add(
            "error",
            "unpaired",
            f"{len(lone_files)} file(s) without a partner: every image needs a mask of the same name and the reverse",
            "give each image a mask with its path and name (extension aside), or move the stray files out",
            lone_files,
        )
    mismatched = [s for s in stats if s.error is None and s.mask_size != s.image_size]
    if mismatched:
        case.add(
            "error",
            "size-mismatch",
            f"{len(mismatched)} mask(s) differ in size from their image (a mask labels each pixel of its image)",
            "re-export the masks at their images' size (nearest-neighbour resampling, never bilinear)",
            [
                f"{s.mask}: mask {'x'.join(map(str, s.mask_size or ()))}, image {'x'.join(map(str, s.image_size or ()))}"
                for s in mismatched
            ],
        )
    colour = [s for s in stats if s.colour]
    if colour:
        modes = "/".join(sorted({str(s.mode) for s in colour}))
        case.add(
            "error",
            "colour-masks",
            f"{len(colour)} mask(s) are {modes} images (up to {max(s.colours for s in colour)} colours), not one "
            "class index per pixel; pvtkit train cannot read them",
            "save them as one-band greyscale PNGs (mode L): every colour channel holds the same value"
            if all(s.grey for s in colour)
            else FIX_COLOURS + " (one band, mode L or P: map each colour of the palette to its index)",
            [s.mask for s in colour],
        )
    unreadable = [s for s in stats if s.error is not None and not s.colour]
    if unreadable:
        case.add(
            "error" if not case.good and not colour and not mismatched else "warning",
            "unreadable",
            f"{len(unreadable)} pair(s) cannot be decoded (pvtkit train skips them): {unreadable[0].error}",
            "re-export or remove these pairs",
            [s.mask for s in unreadable],
        )
    lossy = [s.mask for s in stats if Path(s.mask).suffix.lower() in (".jpg", ".jpeg", ".jfif")]
    if lossy:
        case.add(
            "warning",
            "lossy-masks",
            f"{len(lossy)} mask(s) are JPEGs: lossy compression blurs the values at class edges",
            "save masks as PNG",
            lossy,
        )


def _binary_rule(case: _Case) -> bool:
    """binary-255: 0/255 masks, plain or smoothed, where 255 (the ignore index) is really the object."""
    raw, k = case.tally.raw, case.num_labels
    values, total = set(raw), sum(raw.values())
    if not case.good or not {0, IGNORE_INDEX} <= values:
        return False
    if values <= {0, 1, IGNORE_INDEX}:
        if raw[IGNORE_INDEX] <= raw.get(1, 0):
            return False  # 255 as thin borders around class 1: the ignore index used as meant
        case.add(
            "error",
            "binary-255",
            f"the masks hold only 0 and 255{' (and 1)' if 1 in values else ''}, 255 on "
            f"{raw[IGNORE_INDEX] / total:.1%} of the pixels",
            FIX_BINARY,
            [s.mask for s in case.good if IGNORE_INDEX in s.values.tolist()],
        )
        return True
    # smoothing spreads values over the whole range between 0 and 255; class indices stay below the classes
    between = [v for v in values if 0 < v < IGNORE_INDEX]
    near = sum(n for v, n in raw.items() if v <= 15 or v >= 240)
    if (
        near >= 0.8 * total
        and len(between) >= 8
        and 4 * sum(v > 127 for v in between) >= len(between)
        and (k is None or max(between) >= k)
    ):
        case.add(
            "error",
            "binary-255",
            f"values near 0 and 255 cover {near / total:.1%} of the pixels, with {len(between)} values between them",
            FIX_SMOOTHED,
            [s.mask for s in case.good if len(s.values) > 3],
        )
        return True
    return False


def _value_rules(case: _Case) -> None:
    """reduce-labels-needed, out-of-range, sparse-values, too-few-classes, reduce-labels-suspect."""
    tally, k, reduce, names = case.tally, case.num_labels, case.reduce, case.names
    present = tally.present
    top = present[-1] if present else -1
    background = case.zero_name in BACKGROUND_NAMES
    sparse = len(present) >= 2 and top >= 16 and top + 1 >= 4 * len(present)
    if tally.beyond:
        values = sorted({v for bad in tally.beyond.values() for v in bad})
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        expected = f"0..{k - 1} from {case.labels_from}" if k is not None else "0 or more"
        message = (
            f"{len(tally.beyond)} mask(s) hold values that are no class: {shown} (expected class indices {expected}"
            f"{' after --reduce-labels' if reduce else ''}, or 255 = ignored)"
        )
        ade = not reduce and top == k and 0 in tally.classes
        if k is None:
            code, fix = "out-of-range", "remap the negative values to classes or 255"
        elif ade and not background:
            code, fix = "reduce-labels-needed", FIX_REDUCE
            message += "; they look ADE20K-style: 0 = unlabelled, 1..K = classes"
        elif sparse:
            code, fix = "out-of-range", FIX_COLOURS
            message += "; they look like colours or grey levels, not class indices"
        else:
            code = "out-of-range"
            fix = (
                f"list {top + 1} class names in labels.json (or use a model with that many labels), or remap the "
                f"values above {k - 1} to classes or 255"
            )
            if ade and names:
                fix += f"; or, if 0 marks unlabelled pixels rather than {names[0]!r}, {FIX_REDUCE}"
        case.add("error", code, message, fix, list(tally.beyond))
    elif sparse and k is None:
        case.add(
            "warning",
            "sparse-values",
            f"the masks hold {len(present)} values spread over 0..{top}; pvtkit train would make {top + 1} classes, "
            "most never seen: they look like colours or grey levels, not class indices",
            FIX_COLOURS,
        )
    if len(present) < 2:
        found = f"only class {present[0]}" if present else "no labelled pixel at all"
        case.add(
            "error",
            "too-few-classes",
            f"the masks hold {found}{' after --reduce-labels' if reduce else ''}; segmentation needs at least two "
            "classes (e.g. background and the object)",
            FIX_NO_REDUCE
            if reduce and tally.raw.get(0, 0) and not present
            else "label the objects in the masks with their class index (1, 2, ...); list every class in labels.json",
        )
    if reduce and 0 not in tally.raw:
        case.add(
            "warning",
            "reduce-labels-suspect",
            "--reduce-labels, yet no mask holds 0: nothing becomes ignored and every class shifts down by one",
            FIX_NO_REDUCE,
        )
    elif reduce and background and names:
        case.add(
            "warning",
            "reduce-labels-suspect",
            f"--reduce-labels ignores mask value 0, yet class 0 is named {names[0]!r}: value 1 would be trained as "
            f"{names[0]!r}",
            FIX_NO_REDUCE,
        )


def _balance_rules(case: _Case) -> None:
    """ignore-heavy, all-ignored, imbalance, absent-classes."""
    tally, names = case.tally, case.names
    if tally.total and tally.ignored / tally.total > HEAVY_IGNORE:
        case.add(
            "warning",
            "ignore-heavy",
            f"{tally.ignored / tally.total:.1%} of all pixels are 255 (ignored): training sees little of the images",
            "check what 255 means in these masks; if it is a class, remap it to its index",
        )
    if tally.all_ignored and len(tally.all_ignored) < len(case.good):
        case.add(
            "warning",
            "all-ignored",
            f"{len(tally.all_ignored)} mask(s) have no labelled pixel (all 255{' or 0' if case.reduce else ''}): "
            "they train nothing",
            "label them, or remove the pairs",
            tally.all_ignored,
        )
    classes, present = tally.classes, tally.present
    if len(present) >= 2:
        labelled = sum(classes.values())
        shares = {v: classes[v] / labelled for v in present}
        rare = [v for v in present if shares[v] < RARE_SHARE]
        least = min(present, key=lambda v: shares[v])
        ratio = max(shares.values()) / shares[least]
        if rare or ratio > IMBALANCE_RATIO:
            case.add(
                "warning",
                "imbalance",
                f"{len(rare)} class(es) below {RARE_SHARE:.1%} of the labelled pixels; the largest class has "
                f"{ratio:.0f}x the pixels of the smallest ({_name(names, least)}: {shares[least]:.3%})",
                FIX_WEIGHTS,
            )
    absent = [i for i in range(len(names or ())) if i not in tally.train_values]
    if names and absent:
        shown = ", ".join(f"{i} {names[i]!r}" for i in absent[:8]) + (", ..." if len(absent) > 8 else "")
        case.add(
            "warning",
            "absent-classes",
            f"{len(absent)} class(es) have no pixel in the training masks: {shown}; the model cannot learn them",
            "add examples of them, or drop them from the class list",
        )


def _info(case: _Case) -> None:
    """labels (with the --reduce-labels advice), mask-modes, ignore-index."""
    names, k, tally = case.names, case.num_labels, case.tally
    if names:
        zero = "ignored (--reduce-labels); value k is class k-1" if case.reduce else f"class 0, {names[0]!r}"
        says = f"{len(names)} classes from {case.labels_from}; mask value 0 is {zero}"
    elif k is not None:
        says = f"{k} classes from {case.labels_from}"
    else:
        top = tally.present[-1] if tally.present else -1
        says = f"no class list (labels.json or classes.txt): the classes are the values found, 0..{top}"
    suggest = None
    if not case.reduce and names and case.zero_name in UNLABELLED_NAMES and 0 in tally.raw:
        suggest = f"if 0 marks unlabelled pixels, {FIX_REDUCE}, and drop {names[0]!r} from the class list"
    case.add("info", "labels", says, suggest)
    modes = Counter(str(s.mode) for s in case.stats if s.mode is not None)
    if modes:
        palette = " (palette masks: their indices are the classes; the colours are ignored)" if "P" in modes else ""
        case.add("info", "mask-modes", "masks are " + ", ".join(f"{n} {m}" for m, n in sorted(modes.items())) + palette)
    if tally.ignored:
        case.add("info", "ignore-index", f"255 (ignored) covers {tally.ignored / tally.total:.2%} of the pixels")


def _class_rows(case: _Case) -> list[ClassRow]:
    """Every class of the list (seen or not) and every value found beyond it, in order."""
    tally, k = case.tally, case.num_labels
    classes, labelled = tally.classes, sum(tally.classes.values())
    listed = set(range(k or 0)) | set(classes)
    return [
        ClassRow(
            v,
            _name(case.names, v),
            classes.get(v, 0),
            classes.get(v, 0) / labelled if labelled else 0.0,
            tally.holding.get(v, 0),
        )
        for v in sorted(listed)
    ]


def assess(
    stats: Sequence[PairStats],
    names: Sequence[str] | None = None,
    num_labels: int | None = None,
    reduce: bool = False,
    labels_from: str = "the masks",
    lone_files: Sequence[Any] = (),
    model_labels: int | None = None,
    data: str = "",
    layout: str | None = None,
) -> DoctorReport:
    """Apply the module's detection rules to pairs already read.

    Args:
        stats: One `PairStats` per pair.
        names: Class names, index i for value i (after `reduce`), or None.
        num_labels: The number of classes K, or None (the classes are then the values found).
        reduce: Whether `--reduce-labels` applies.
        labels_from: Where `names` / `num_labels` come from, for messages.
        lone_files: Images without masks and masks without images.
        model_labels: The model's number of labels, when it differs from the class list's source.
        data / layout: The dataset folder and its layout, for the report.
    """
    good = [s for s in stats if s.usable]
    case = _Case(stats, good, _Tally.of(good, reduce, num_labels), names, num_labels, reduce, labels_from)
    _file_rules(case, lone_files)
    # a binary set explains the value, balance and ignore findings it would also raise: name its fix alone
    if good and not _binary_rule(case):
        _value_rules(case)
        _balance_rules(case)
    if model_labels is not None and num_labels is not None and model_labels != num_labels:
        case.add(
            "warning",
            "labels-differ",
            f"{labels_from} lists {num_labels} classes, the model has {model_labels}: pvtkit train replaces its head "
            "with one for the data's classes",
            "check that the class list is the one you mean",
        )
    _duplicates(good, case.add)
    _info(case)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return DoctorReport(
        data=data,
        layout=layout,
        pairs=dict(Counter(s.split for s in stats)) or {"train": 0},
        num_labels=num_labels,
        labels_from=labels_from,
        reduce_labels=reduce,
        mask_modes=dict(Counter(str(s.mode) for s in stats if s.mode is not None)),
        pixels=case.tally.total,
        ignored_pixels=case.tally.ignored,
        classes=_class_rows(case),
        findings=sorted(case.findings, key=lambda f: order[f.severity]),
    )


def _duplicates(good: Sequence[PairStats], add: Callable[..., None]) -> None:
    """Images with identical bytes (when hashed): a leak across the splits, or one image labelled twice."""
    groups: dict[str, list[PairStats]] = {}
    for s in good:
        if s.image_hash is not None:
            groups.setdefault(s.image_hash, []).append(s)
    copies = [g for g in groups.values() if len(g) > 1]
    if not copies:
        return
    leaks = sum(len({s.split for s in g}) > 1 for g in copies)
    conflicts = sum(len({s.mask_hash for s in g}) > 1 for g in copies)
    notes = []
    if leaks:
        notes.append(f"{leaks} in both the training and validation split")
    if conflicts:
        notes.append(f"{conflicts} with different masks")
    add(
        "warning",
        "duplicate-images",
        f"{len(copies)} image(s) appear more than once ({sum(len(g) for g in copies)} files"
        + (f"; {', '.join(notes)}" if notes else "")
        + ")",
        "remove the copies, keeping one of each (and one mask for it)",
        [s.image for g in copies for s in g],
    )


def _model_labels(id2label: dict[Any, str] | None) -> list[str] | None:
    """A model's class names in order, or None when it has none worth the name (transformers' `LABEL_i`)."""
    if not id2label:
        return None
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def diagnose_segmentation(
    data: str | Path,
    num_labels: int | None = None,
    id2label: dict[Any, str] | None = None,
    reduce_labels: bool | None = None,
    threads: int = 8,
    progress: bool = False,
    hashes: bool = True,
) -> DoctorReport:
    """Read every mask of a segmentation dataset once and report what would break training (the module's rules).

    Args:
        data: A dataset folder in one of `folders.SEGMENTATION_LAYOUTS`.
        num_labels / id2label: The model's classes (its config), when one is meant to be used; the dataset's own
            labels.json / classes.txt take precedence, as in `pvtkit train`.
        reduce_labels: Whether value 0 is ignored and k is class k-1 (None: no, as `pvtkit train` by default).
        threads: Masks read at once.
        progress: A progress bar on stderr.
        hashes: Also hash the images, to find copies.

    Raises:
        FileNotFoundError: `data` is not a directory.
        LayoutError: No known layout.
        DatasetError: labels.json / classes.txt is there but unreadable.
    """
    root = Path(data)
    reduce = bool(reduce_labels)
    model_names = _model_labels(id2label)
    model_count = len(id2label) if id2label else num_labels
    try:
        layout = find_segmentation_layout(root)
    except FileNotFoundError:
        raise
    except ValueError as e:
        if "two files with one name" not in str(e):
            raise LayoutError(str(e)) from None
        clash = Finding.about("error", "name-clash", str(e), "keep one file per name in each folder")
        return DoctorReport(str(root), None, {"train": 0}, model_count, "-", reduce, {}, 0, 0, [], [clash])
    names = read_class_names(root)
    labels_from = next((f for f in LABEL_FILES if (root / f).is_file()), "the masks") if names else "the masks"
    if names is None and model_names is not None:
        names, labels_from = model_names, "the model's id2label"
    count = len(names) if names else model_count
    if names is None and model_count is not None:
        labels_from = "the model's num_labels"
    pairs = [(i, m, "train") for i, m in layout.train] + [(i, m, "val") for i, m in layout.val or []]
    stats = read_pair_stats(pairs, threads, progress, hashes)
    report = assess(
        stats,
        names,
        count,
        reduce,
        labels_from,
        [*layout.lone_images, *layout.lone_masks],
        model_count if model_count is not None and labels_from in LABEL_FILES else None,
        str(root),
        layout.name,
    )
    empty = []
    if not layout.train:
        empty.append(
            f"the training split is empty (no image/mask pairs in {layout.folders[0]} and {layout.folders[1]})"
        )
    if layout.val is not None and not layout.val:
        empty.append(f"the validation split is empty (no pairs in {layout.folders[2]} and {layout.folders[3]})")
    if empty:
        report.findings.insert(
            0, Finding("error", "empty-split", "; ".join(empty), "add image/mask pairs, or remove the empty folders")
        )
    return report


def training_blockers(
    stats: Sequence[PairStats], names: Sequence[str] | None, labels_from: str, reduce: bool
) -> list[Finding]:
    """The errors among the doctor's findings on pairs `load_segmentation_data` has read (its one pass over the
    masks): what `pvtkit train` refuses before any model work."""
    report = assess(stats, names, len(names) if names else None, reduce, labels_from)
    return report.errors


def refusal(root: Path, errors: Sequence[Finding]) -> DatasetError:
    """The error `pvtkit train` stops with: every blocking finding with its files and its fix."""
    shown = "\n".join(f.describe("  ") for f in errors)
    return DatasetError(
        f"{root}: the label checks find {len(errors)} problem(s) that break training (`pvtkit doctor --data "
        f"{root}` for the whole report; --skip-data-checks trains anyway):\n{shown}"
    )
