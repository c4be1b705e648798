"""`pvtkit train`: fine-tune (or train from scratch) an image classifier on folders of labelled images, or a
semantic segmentation model on images and masks."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import UsageError, add_compile_argument, on_every_rank, resolve_device

EPILOG = """\
data layout (classification): DIR/train/<class>/*.jpg with DIR/val/<class>/*.jpg (or validation/), or just
DIR/<class>/*.jpg, of which a stratified --val-fraction is held out (the same images every time). Class names come
from the folder names.

data layouts (--task semantic-segmentation), recognised in this order:
{layouts}
  Class names come from DIR/labels.json (a list, or {{"0": "road", ...}}) or DIR/classes.txt (one per line), else
  they are the indices found. --reduce-labels: mask value 0 means "other" (ignored) and k is class k-1 (ADE20K).
  Every mask is read and checked before training: pairs without a partner, masks of another size than their
  image and values that are no class stop the run with a list of the files.

segmentation recipe (SegFormer's): AdamW lr 6e-5 (6e-4 with --arch), the decode head 10x (--head-lr-scale),
weight decay 0.01, linear warmup then polynomial (linear) decay, random resize x0.5..2 (--scale-range), random
--image-size crop in which no class fills more than 75% (--cat-max-ratio), flip, photometric jitter of the image
(--no-jitter), nearest resampling of masks, cross-entropy ignoring 255; the best epoch by validation mIoU is kept.

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


def register(sub: Any) -> None:
    from ..distributed import default_workers
    from ..data.folders import SEGMENTATION_LAYOUTS
    from .. import tasks
    from ..training import RUN_DEFAULTS

    d = RUN_DEFAULTS
    cls, seg_task = tasks.get("image-classification"), tasks.get("semantic-segmentation")
    SEGMENTATION_DEFAULTS = seg_task.recipe
    LR_FROM_SCRATCH, LR_FINE_TUNE = cls.learning_rate(True), cls.learning_rate(False)
    TASKS = [n for t in tasks.trainable() for n in t.names]
    parser = sub.add_parser(
        "train",
        help="fine-tune a classifier on labelled images, or a segmentation model on images and masks (torchrun "
        "for several processes)",
        description="Fine-tune a pretrained PVTv2 or ViT (--model), or train one from scratch (--arch), on a folder\n"
        "of class folders: AdamW, linear warmup + cosine decay per step, label smoothing, random resized crop +\n"
        "flip; the best model by validation accuracy is kept. Options left out take the default shown, or with\n"
        "--resume, the resumed run's own value. --task semantic-segmentation trains SegFormer, PVTv2 + SegFormer\n"
        "head (or any pvtkit segmentation model) on images and masks with SegFormer's recipe; mIoU picks the best.",
        epilog=EPILOG.format(layouts=SEGMENTATION_LAYOUTS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--task", choices=TASKS, help="image-classification (default) or semantic-segmentation")
    what.add_argument("--data", "-d", help="dataset folder (see the layout below); required unless --resume")
    what.add_argument("--model", "-m", help="pretrained model to fine-tune: Hub repo id, directory or weights file "
                      "(a head for the data's classes replaces one of another size)")  # fmt: skip
    what.add_argument("--arch", help="or train this variant from scratch: PVTv2 b0..b5, b2_linear; ViT "
                      "tiny_patch16_224, small_patch16_224, base_patch16_224, ...")  # fmt: skip
    what.add_argument("--output", "-o", required=True, help="output directory for the model, metrics and checkpoint")
    what.add_argument("--revision", help="Hub branch, tag or commit of --model")
    what.add_argument("--offline", action="store_true", help="never touch the network; use the Hub cache only")
    how = parser.add_argument_group("recipe")
    how.add_argument("--image-size", type=int, help="training and evaluation resolution (default: the model's "
                     "processor size, else 224)")  # fmt: skip
    how.add_argument("--epochs", type=int, help=f"passes over the training images (default {d['epochs']})")
    how.add_argument("--batch-size", "-b", type=int, help="images per optimizer step over all processes and "
                     f"accumulation steps (default {d['batch_size']}; {SEGMENTATION_DEFAULTS['batch_size']} for segmentation)")  # fmt: skip
    how.add_argument("--lr", type=float, help=f"peak learning rate (default {LR_FROM_SCRATCH:g} with --arch, "
                     f"{LR_FINE_TUNE:g} with --model)")  # fmt: skip
    how.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {d['weight_decay']})")
    how.add_argument("--warmup-epochs", type=float, help=f"linear warmup, in epochs (default {d['warmup_epochs']:g})")
    how.add_argument("--label-smoothing", type=float, help=f"(default {d['label_smoothing']})")
    how.add_argument("--val-fraction", type=float, help="share of each class held out for validation when DIR has "
                     f"no val/ folder; 0 = none, keep the last epoch (default {d['val_fraction']})")  # fmt: skip
    how.add_argument("--seed", type=int, help=f"seeds new weights, shuffling and augmentation (default {d['seed']})")
    how.add_argument("--crop-scale", type=float, help="smallest share of the image area a random crop keeps "
                     f"(default {d['crop_scale']})")  # fmt: skip
    how.add_argument("--no-hflip", dest="hflip", action="store_const", const=False, help="no random horizontal flips")
    how.add_argument("--max-grad-norm", type=float, help=f"gradient clipping; 0 = off (default {d['max_grad_norm']})")
    how.add_argument("--schedule", choices=["cosine", "poly"], help="decay after the warmup (default cosine; poly, "
                     "i.e. linear to 0, for segmentation)")  # fmt: skip
    how.add_argument("--head-lr-scale", type=float, help="the head learns this many times faster (default 1; "
                     f"{SEGMENTATION_DEFAULTS['head_lr_scale']:g} for segmentation)")  # fmt: skip
    seg = parser.add_argument_group("segmentation (--task semantic-segmentation)")
    seg.add_argument("--reduce-labels", action="store_const", const=True, help="mask value 0 is 'other' (ignored), "
                     "k is class k-1 (ADE20K's masks)")  # fmt: skip
    seg.add_argument("--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="random resize of the short "
                     "side to --image-size x a ratio in this range (default 0.5 2.0)")  # fmt: skip
    seg.add_argument("--cat-max-ratio", type=float, help="retry a random crop while one class fills more than this "
                     f"share of it; 1 = never (default {d['cat_max_ratio']})")  # fmt: skip
    seg.add_argument("--no-jitter", dest="jitter", action="store_const", const=False, help="no photometric "
                     "distortion (brightness, contrast, saturation, hue)")  # fmt: skip
    seg.add_argument("--eval-mode", choices=["whole", "slide"], help="validation on whole images resized by the "
                     "processor, or on sliding windows (default whole)")  # fmt: skip
    dep = parser.add_argument_group("depth (--task depth-estimation)")
    dep.add_argument("--depth-scale", type=float, help="16-bit PNG depth maps hold metres x this (default 1000: NYU's "
                     "millimetres; KITTI: 256); .npy and float TIFF maps are metres")  # fmt: skip
    dep.add_argument("--min-depth", type=float, help="ground truth below this is no measurement (default 0.001 m)")
    dep.add_argument("--max-depth", type=float, help="ground truth above this is no measurement, predictions are "
                     "clipped to it in the metrics (default: the model's max_depth; GLPN 10 NYU, 80 KITTI)")  # fmt: skip
    run_group = parser.add_argument_group("running")
    run_group.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                           help="fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA) "
                           "(default fp32)")  # fmt: skip
    run_group.add_argument("--grad-accum", type=int, default=1, help="split each step into this many micro-batches "
                           "to save memory; the result does not change (default 1)")  # fmt: skip
    run_group.add_argument("--num-workers", type=int, default=default_workers(),
                           help="data-loading processes per training process (default %(default)s)")  # fmt: skip
    run_group.add_argument("--device", default="auto", help="auto (the local GPU when there is one), cpu, cuda, mps")
    run_group.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in "
                           "backward: less memory, ~30%% slower")  # fmt: skip
    add_compile_argument(run_group, help="torch.compile the model where that pays (pvtkit.optimize, weights not "
                         "frozen): every step on CUDA; on a CPU a ViT's evaluations only (CPU training steps and "
                         "PVTv2's batched evaluations run faster eagerly, measured: README 'Speed'); without a "
                         "working compiler: a warning, then eager")  # fmt: skip
    run_group.add_argument("--save-steps", type=int, default=0, help="also checkpoint every N optimizer steps "
                           "(default: at the end of each epoch)")  # fmt: skip
    run_group.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    run_group.add_argument("--overwrite", action="store_true", help="start a new run in an --output that holds one "
                           "(or other files)")  # fmt: skip
    run_group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.folders import LayoutError
    from ..training import Trainer, TrainingArguments, TrainingConfigError

    with on_every_rank() as main:
        if args.device != "auto":
            resolve_device(args.device)
        try:
            targs = TrainingArguments(
                output_dir=args.output, data=args.data, model=args.model, arch=args.arch, image_size=args.image_size,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                val_fraction=args.val_fraction, seed=args.seed, crop_scale=args.crop_scale, hflip=args.hflip,
                max_grad_norm=args.max_grad_norm, task=args.task, schedule=args.schedule,
                head_lr_scale=args.head_lr_scale, reduce_labels=args.reduce_labels, scale_range=args.scale_range,
                cat_max_ratio=args.cat_max_ratio, jitter=args.jitter, eval_mode=args.eval_mode,
                depth_scale=args.depth_scale, min_depth=args.min_depth, max_depth=args.max_depth,
                precision=args.precision, grad_accum=args.grad_accum,
                num_workers=args.num_workers, device=args.device, gradient_checkpointing=args.gradient_checkpointing,
                compile=args.compile,
                save_steps=args.save_steps, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                revision=args.revision, offline=args.offline,
            )  # fmt: skip
            result = Trainer(targs).train()
        except (TrainingConfigError, LayoutError) as e:
            raise UsageError(_as_flags(str(e))) from e
    if main:
        print(result.summary())
    return 0


def _as_flags(message: str) -> str:
    """The library's words for options -> the command's flags."""
    for word, flag in (("resume:", "--resume:"), ("resume it", "pass --resume"), ("overwrite it", "--overwrite"),
                       ("pass overwrite", "pass --overwrite"), ("without resume", "without --resume"),
                       ("another output directory", "another --output")):  # fmt: skip
        message = message.replace(word, flag)
    return message
