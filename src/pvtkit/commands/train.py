"""`pvtkit train`: fine-tune (or train from scratch) an image classifier on folders of labelled images, or a
semantic segmentation model on images and masks."""

from __future__ import annotations

import argparse
import logging
from dataclasses import MISSING
from typing import Any

from ._common import RawHelpFormatter, UsageError, on_every_rank, resolve_device

logger = logging.getLogger("pvtkit")

EPILOG = """\
data layout (classification): DIR/train/<class>/*.jpg with DIR/val/<class>/*.jpg (or validation/), or just
DIR/<class>/*.jpg, of which a stratified --val-fraction is held out (the same images every time). Class names come
from the folder names.

data layouts (--task semantic-segmentation), recognised in this order:
{layouts}
  Class names come from DIR/labels.json (a list, or {{"0": "road", ...}}) or DIR/classes.txt (one per line), else
  they are the indices found. --reduce-labels: mask value 0 means "other" (ignored) and k is class k-1 (ADE20K).
  Every mask is read and checked before training: pairs without a partner, masks of another size than their
  image and values that are no class stop the run with a list of the files; so do the label doctor's errors (0/255
  binary masks, colour masks, ADE20K-style masks without --reduce-labels), each with its fix (`pvtkit doctor
  --data DIR` reports them all, with the classes' pixel shares; --skip-data-checks trains anyway).

segmentation recipe (SegFormer's): AdamW lr 6e-5 (6e-4 with --arch), the decode head 10x (--head-lr-scale),
weight decay 0.01, linear warmup then polynomial (linear) decay, random resize x0.5..2 (--scale-range), random
--image-size crop in which no class fills more than 75% (--cat-max-ratio), flip, photometric jitter of the image
(--no-jitter), nearest resampling of masks, cross-entropy ignoring 255; the best epoch by validation mIoU is kept.

data layouts (--task depth-estimation):
{depth_layouts}
  --depth-scale, --min-depth, --max-depth say what the maps hold; pixels outside are no measurement.

depth recipe (GLPN's): AdamW lr 1e-4, weight decay 1e-4, poly decay, random scale + crop + flip of image and map
together (maps by nearest neighbour), the scale-invariant log loss on valid pixels; the best epoch by validation
delta < 1.25 is kept; AbsRel, SqRel, RMSE, RMSE-log, log10, delta1..3 and SILog are recorded.

data layouts (--task object-detection), COCO's format:
{detection_layouts}
  Boxes partly outside their image are clipped; boxes of no size, of unknown categories or images, and listed
  images missing on disk are skipped and reported by file, annotation id and value; images without objects train
  the no-object class; crowd regions are not trained on (COCO's evaluation ignores detections on them).

detection recipe (Deformable DETR's): AdamW lr 2e-4 with the backbone and the sampling-offset / reference-point
layers at x0.1 (--backbone-lr-scale), weight decay 1e-4, gradient clipping at 0.1, the rate dropped tenfold for the
last 20% of the steps (--schedule step), random flip, resize of the shortest side to one of 480..800 (x --image-size
/ 800; the longest within --max-size) or, for half the images, a resize + random crop first (--no-random-crop), the
model's Hungarian-matched focal + L1 + GIoU loss; the best epoch by validation COCO mAP (pycocotools) is kept.

output: OUT/config.json, model.safetensors, preprocessor_config.json (the best epoch by validation accuracy, or
mIoU, in transformers format: pvtkit, transformers, `pvtkit classify` / `segment` / `eval` load it),
OUT/metrics.jsonl (one line per epoch: loss, accuracy, lr, images/s, validation results) and OUT/checkpoint/ (the last state; --resume continues from it).

scale out: torchrun --nproc_per_node 4 -m pvtkit train ... (or `torchrun --nnodes 2 ...`): data-parallel with
PyTorch DDP (NCCL on GPUs, gloo on CPUs). --batch-size is the global batch, so the result does not depend on the
number of processes; BatchNorm layers (SegFormer's decode head) normalise over all processes' images.

examples:
  pvtkit train --data flowers/ --model OpenGVLab/pvt_v2_b0 --output runs/flowers
  pvtkit train --task semantic-segmentation --data ADEChallengeData2016/ --reduce-labels --model nvidia/mit-b0 \\
      --image-size 512 --batch-size 16 --epochs 20 --output runs/ade
  pvtkit train --data digits/ --arch b0 --image-size 32 --epochs 30 --lr 2e-3 --output runs/digits
  pvtkit train --output runs/flowers --resume          # after a crash: same settings, same schedule
"""


def arch_help() -> str:
    """--arch's help: the naming scheme and every family's variants (read from the torch-free configs)."""
    from ..models import family

    lines = []
    for config in family.config_classes().values():
        prefixes = [p.rstrip("_").replace("_", "-") if "/" in p else p.rstrip("_") for p in config.variant_prefixes]
        first = next(iter(config.variants))
        lines.append(
            f"{config.title} ({' or '.join(f'{p}-{first}' for p in prefixes if '/' not in p)}, ...): "
            f"{', '.join(config.variants)}"
        )
    return "; ".join(lines)


def register(sub: Any) -> None:
    import dataclasses

    from ..data.folders import DEPTH_LAYOUTS, DETECTION_LAYOUTS, SEGMENTATION_LAYOUTS
    from ..training.arguments import TrainingArguments

    fields = dataclasses.fields(TrainingArguments)
    parser = sub.add_parser(
        "train",
        help="fine-tune a classifier on labelled images, a segmentation model on images and masks, a depth model "
        "on images and depth maps, or a detector on COCO-format boxes (torchrun for several processes)",
        description="Fine-tune a pretrained PVTv2 or ViT (--model), or train one from scratch (--arch), on a folder\n"
        "of class folders: AdamW, linear warmup + cosine decay per step, label smoothing, random resized crop +\n"
        "flip; the best model by validation accuracy is kept. Options left out take the default shown, or with\n"
        "--resume, the resumed run's own value. --task semantic-segmentation trains SegFormer, PVTv2 + SegFormer\n"
        "head (or any pvtkit segmentation model) on images and masks with SegFormer's recipe; mIoU picks the best.\n"
        "--task depth trains GLPN or PVTv2 + GLPN head on images and depth maps; --task detection trains Deformable\n"
        "DETR (a PVTv2 or ResNet-50 backbone) on COCO-format data with Deformable DETR's recipe; COCO mAP picks the best.",
        epilog=EPILOG.format(
            layouts=SEGMENTATION_LAYOUTS, depth_layouts=DEPTH_LAYOUTS, detection_layouts=DETECTION_LAYOUTS
        ),
        formatter_class=RawHelpFormatter,
    )
    groups: dict[str, Any] = {}
    for f in fields:  # one flag per field of TrainingArguments, as its metadata says
        meta = dict(f.metadata)
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = meta.get("flags", (f"--{f.name.replace('_', '-')}",))
        help = meta["help"] + (f": {arch_help()}" if f.name == "arch" else "")
        options: dict[str, Any] = {"dest": f.name, "help": help.replace("%", "%%")}
        if "const" in meta:  # a flag without a value: sets the field to `const`
            options.update(action="store_const", const=meta["const"])
        elif str(f.type).startswith("bool"):
            options.update(action="store_true", default=f.default)
        else:
            kind = next((t for t in (int, float) if t.__name__ in str(f.type).replace("|", " ").split()), None)
            kind = kind or next((t for t in (int, float) if f"[{t.__name__}" in str(f.type)), None)
            options.update(type=kind or str, default=None if f.default is MISSING else f.default)
            options.update({k: meta[k] for k in ("choices", "nargs", "metavar") if k in meta})
            if "choices" not in options:
                options.setdefault("metavar", flags[0].lstrip("-").replace("-", "_").upper())
        if meta.get("required"):
            options["required"] = True
        group.add_argument(*flags, **options)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..data.folders import LayoutError
    from ..training import Trainer, TrainingArguments, TrainingConfigError

    with on_every_rank() as main:
        if args.device != "auto":
            resolve_device(args.device)
        if args.arch:
            _say_which_family(args.arch)
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)}
        try:
            targs = TrainingArguments(**{name: value for name, value in given.items() if value is not None})
            result = Trainer(targs).train()
        except (TrainingConfigError, LayoutError) as e:
            raise UsageError(_as_flags(str(e))) from e
    if main:
        print(result.summary())
    return 0


def _say_which_family(arch: str) -> None:
    """A variant name several families have (`b0`) builds the first family's: say so, and how to name another."""
    from ..models import family

    having = [c for c in family.config_classes().values() if arch in c.variants]
    if len(having) > 1:
        names = [f"{c.variant_prefixes[0].rstrip('_')}-{arch}" for c in having]
        logger.warning(
            f"--arch {arch} builds {having[0].title}'s ({names[0]}); another family's is named {' or '.join(names[1:])}"
        )


def _as_flags(message: str) -> str:
    """The library's words for options -> the command's flags."""
    for word, flag in (
        ("resume:", "--resume:"),
        ("resume it", "pass --resume"),
        ("overwrite it", "--overwrite"),
        ("pass overwrite", "pass --overwrite"),
        ("without resume", "without --resume"),
        ("another output directory", "another --output"),
    ):
        message = message.replace(word, flag)
    return message
