"""`pvtkit doctor`: read every mask of a segmentation dataset once and report what would break training, with the
fix for each problem (`pvtkit.data.doctor`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import RawHelpFormatter, UsageError, hub_kwargs

EPILOG = """\
what it checks (errors make the exit status 1; `pvtkit train` refuses the same errors, unless --skip-data-checks):
  unpaired, name-clash, empty-split   images without masks and the reverse, files it cannot pair, empty splits
  size-mismatch                       masks of another size than their image
  colour-masks                        RGB/RGBA masks instead of one class index per pixel
  binary-255                          0/255 black-and-white masks: 255 is the ignore index (fix: remap 255 -> 1)
  reduce-labels-needed, out-of-range  values beyond the classes (ADE20K-style 0 = unlabelled: --reduce-labels)
  too-few-classes                     fewer than two classes labelled
warnings: --reduce-labels where it does not fit, heavy use of 255 (ignored), extreme class imbalance (fix:
pvtkit train --class-weights auto), classes never labelled, duplicate images, JPEG masks, unreadable pairs.
The classes come from DIR/labels.json or DIR/classes.txt, else from --model's id2label, else the values found.

data layouts:
{layouts}

examples:
  pvtkit doctor --data ADEChallengeData2016/ --model nvidia/segformer-b0-finetuned-ade-512-512
  pvtkit doctor --data ADEChallengeData2016/ --reduce-labels --json > report.json
"""


def register(sub: Any) -> None:
    from ..data.folders import SEGMENTATION_LAYOUTS

    parser = sub.add_parser(
        "doctor",
        help="check a segmentation dataset's masks before training: what would break it, and the fix",
        description="Read every mask of a segmentation dataset once (in threads) and report the classes with their\n"
        "pixel shares and what would break or spoil training: 0/255 binary masks, values beyond the classes,\n"
        "whether mask value 0 is background or 'unlabelled' (--reduce-labels), the ignore index 255, palette vs\n"
        "grey vs colour masks, size mismatches, unpaired and duplicate files, extreme class imbalance. Each\n"
        "finding names its fix. Exit status 0 when there is no error, 1 when there is one.",
        epilog=EPILOG.format(layouts=SEGMENTATION_LAYOUTS),
        formatter_class=RawHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="the dataset folder (images and masks, in a layout below)")
    parser.add_argument(
        "--model",
        "-m",
        help="the model to train or evaluate (Hub id or directory): its config's classes (num_labels, id2label) "
        "when the data has no labels.json or classes.txt, and its class 0's name for the --reduce-labels advice",
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit of --model")
    parser.add_argument("--offline", action="store_true", help="never touch the network; use the Hub cache only")
    reduce = parser.add_mutually_exclusive_group()
    reduce.add_argument(
        "--reduce-labels",
        dest="reduce_labels",
        action="store_const",
        const=True,
        help="check the masks as pvtkit train --reduce-labels reads them: 0 ignored, k is class k-1 (ADE20K)",
    )
    reduce.add_argument(
        "--no-reduce-labels",
        dest="reduce_labels",
        action="store_const",
        const=False,
        help="check them as read without --reduce-labels: 0 is a class (the default)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object (for scripts)")
    parser.add_argument("--threads", type=int, default=8, help="masks read at once")
    parser.add_argument("--no-hash", dest="hashes", action="store_false", help="skip the duplicate-image check")
    parser.set_defaults(run=run)


def _model_labels(args: argparse.Namespace) -> tuple[int | None, dict[int, str] | None]:
    """--model's (num_labels, id2label), from its config alone (no weights are read)."""
    if not args.model:
        return None, None
    from ..auto import AutoConfig

    try:
        config = AutoConfig.from_pretrained(args.model, **hub_kwargs(args))
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {args.model!r}: cannot read its config ({e}); the doctor needs its classes") from e
    return config.num_labels, dict(config.id2label)


def run(args: argparse.Namespace) -> int:
    from ..data.doctor import diagnose_segmentation
    from ..data.folders import LayoutError

    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    num_labels, id2label = _model_labels(args)
    try:
        report = diagnose_segmentation(
            args.data, num_labels, id2label, args.reduce_labels, args.threads, progress=True, hashes=args.hashes
        )
    except FileNotFoundError as e:
        raise UsageError(f"--data: {e}") from e
    except LayoutError as e:
        raise UsageError(str(e)) from e
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.table(), end="")
    return 0 if report.ok else 1
