"""What a training run is asked for, and the settings that define it: `TrainingArguments` (whose fields are
also `pvtkit train`'s flags, with their help in the field metadata) and the run's defaults. No PyTorch here, so the
command line builds its parser without loading it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tasks

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32 weights always; bf16 / fp16: autocast computes in that dtype
SCHEDULES = ("cosine", "poly", "onecycle", "step")

# The settings that define a run's schedule and result: stored with the checkpoint, and a resumed run must keep
# them. None in `TrainingArguments` means "the default below, or the resumed run's own value".
# What a task changes in them (its recipe), the learning rate it starts from and the settings only it reads (with
# their defaults) live in the task's spec (`pvtkit.tasks`).
RUN_DEFAULTS: dict[str, Any] = {
    "task": tasks.default().name,
    "data": None,
    "model": None,
    "arch": None,
    "image_size": None,
    "epochs": 10,
    "batch_size": 32,
    "lr": None,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "val_fraction": 0.1,
    "seed": 0,
    "hflip": True,
    "max_grad_norm": 1.0,
    "schedule": "cosine",
    "head_lr_scale": 1.0,
    # recipe features (training/recipe.py, training/ema.py): layer-wise lr decay (1: none), an EMA of the weights,
    # the linear scaling of the recipe's lr to this run's global batch
    "layer_decay": 1.0,
    "ema": False,
    "ema_decay": 0.9999,
    "scale_lr": False,
    **{name: default for task in tasks.trainable() for name, default in task.settings.items()},
}
# `pvtkit train --help`'s groups of flags (`TrainingArguments`' field metadata)
WHAT, RECIPE, RUNNING = "what to train", "recipe", "running"
CLASSIFICATION, SEGMENTATION, DEPTH, DETECTION = (
    f"{t.title} (--task {t.aliases[0]})"
    for t in (
        tasks.get("image-classification"),
        tasks.get("semantic-segmentation"),
        tasks.get("depth-estimation"),
        tasks.get("object-detection"),
    )
)


def _defaults(name: str) -> str:
    """`name`'s default for the help: the general one, and each task's own where its recipe changes it."""
    own = [
        f"{t.recipe[name]:g} for {t.title}" if isinstance(t.recipe[name], float) else f"{t.recipe[name]} for {t.title}"
        for t in tasks.trainable()
        if name in t.recipe
    ]
    value = RUN_DEFAULTS[name]
    return "; ".join([f"{value:g}" if isinstance(value, float) else str(value), *own])


def _default_workers() -> int:
    from ..distributed import default_workers

    return default_workers()


class TrainingConfigError(ValueError):
    """Training was asked for in a way that cannot work (contradicting options, `--resume` with nothing to resume
    or with changed settings, a model that does not fit the data): the CLI's exit status 2."""


@dataclass
class TrainingArguments:
    """What `Trainer` trains, and how. Fields left None take the default given here, or when resuming, the
    resumed run's own value (a resumed run must keep its settings; see `RUN_DEFAULTS`).

    Args:
        output_dir: Where the run goes: the best model (transformers format), `metrics.jsonl`, `checkpoint/`.
        data: A folder of class folders, or one with `train/` and `val/` (or `validation/`) folders of them; for
            semantic segmentation, images and masks in one of `data.folders.SEGMENTATION_LAYOUTS`; for depth,
            images and depth maps in one of `data.depth.DEPTH_LAYOUTS`.
        task: What to train: a task of `pvtkit.tasks` that trains (`image-classification`, the default;
            `semantic-segmentation`; `depth-estimation`), by its name or a short name.
        model: A pretrained classifier or encoder to fine-tune (Hub id, directory, weights file).
        arch: Or a variant to train from scratch: PVTv2 `b0`..`b5`, `b2_linear`; ViT `tiny_patch16_224`, ...
        image_size: Training and evaluation resolution (default: the model's processor size, else 224).
        epochs: Passes over the training images (default 10).
        batch_size: Images per optimizer step, over all processes and accumulation steps (default 32).
        lr: Peak learning rate (default 1e-3 from scratch, 1e-4 fine-tuning).
        weight_decay: AdamW weight decay, not applied to biases, norms and position embeddings (default 0.05).
        warmup_epochs: Linear warmup length, in epochs (fractions allowed; default 1).
        label_smoothing: Cross-entropy label smoothing (default 0.1).
        val_fraction: Share of each class held out for validation when the data has no val/ folder
            (deterministic, stratified; 0 = no validation, the last epoch is kept; default 0.1).
        seed: Seeds the fresh weights, the shuffling and the augmentation (default 0).
        crop_scale: Smallest share of the image area a random crop keeps (default 0.08, as timm and torchvision).
        hflip: Random horizontal flips (default True).
        max_grad_norm: Clip the gradient norm to this (0: no clipping; default 1.0).
        schedule: After the warmup, `cosine` decay (classification's default) or `poly` (linear decay to 0,
            SegFormer's polynomial schedule of power 1; segmentation's and depth's default), or `onecycle`
            (PyTorch's `OneCycleLR`: from lr/25 up to lr over the warmup, or 30% of the steps without one, then a
            cosine down to lr/25/1e4), or `step` (lr, then lr/10 for the last 20% of the steps: detection's).
        head_lr_scale: The head's learning rate is this many times `lr` (default 1; 10 for segmentation, as
            SegFormer's decode head).
        layer_decay: Layer-wise learning-rate decay: a parameter of encoder layer `i` (0: the patch embeddings, then
            each block in order; the heads are layer `n`, the model's `depth_layers()` count) learns at
            `layer_decay ** (n - i)` times its rate (BEiT's, ConvNeXt's and mmseg's rule; default 1: none).
        ema: Keep an exponential moving average of the weights (fp32, updated after every optimizer step, buffers
            not averaged); validation measures it and the saved model is it (`ema.py`).
        ema_decay: The EMA's decay per step (default 0.9999), warmed up as TensorFlow's `num_updates` rule:
            `min(ema_decay, (1 + t) / (10 + t))` at update `t`.
        scale_lr: When the global batch differs from the task recipe's and `lr` is left out, scale the recipe's
            rate linearly (x batch / recipe batch; Goyal et al. 2017); without it, the rule is only printed.
        reduce_labels: Segmentation: mask value 0 is "other" (ignored) and k means class k - 1 (ADE20K).
        scale_range: Segmentation: random resize of the short side to `image_size` x a ratio in this range
            (default 0.5..2).
        cat_max_ratio: Segmentation: retry a random crop (up to 10 times) while one class fills more than this
            share of it (default 0.75; 1 = never).
        jitter: Segmentation: photometric distortion of the image (brightness, contrast, saturation, hue).
        eval_mode: Segmentation validation: `whole` images or `slide` windows.
        loss: Segmentation: the training loss, `NAME[:WEIGHT],...` of `pvtkit.losses.LOSSES` (`ce`, `ohem`, `dice`,
            `lovasz`, `focal`; default `ce`), normalised per labelled pixel as `pvtkit.losses` says.
        class_weights: Segmentation: `auto` (ENet's rule on the training masks' pixel counts,
            `losses.class_weights_from_counts`) or one weight per class, `"w0,w1,..."`.
        depth_scale: Depth: what a 16-bit PNG depth map's integers are divided by to give metres (NYU 1000, KITTI
            256; .npy and float TIFF maps are metres already).
        min_depth, max_depth: Depth: ground truth outside is "no measurement"; predictions are clipped to it in the
            metrics (max default: the model's `max_depth`, GLPN's 10 m NYU / 80 m KITTI).
        backbone_lr_scale: Detection: the backbone's (and the sampling-offset and reference-point layers') share of
            `lr` (default 0.1, Deformable DETR's).
        max_size: Detection: the longest side's limit when resizing (`image_size` is the shortest side's).
        random_crop: Detection: half the training images get DETR's resize + random crop before the multi-scale
            resize (default True).
        multi_scale: Detection: the shortest side is resized to one of the recipe's scales (default True; False:
            always to `image_size`).
        cutdepth: Depth: the probability of GLPN's vertical CutDepth on a training pair (a random full-height strip
            of the image replaced by the depth map scaled to the image's 0-255 range; 0 = off, the default).
        precision: `fp32`, `bf16` (autocast) or `fp16` (autocast with loss scaling; CUDA only).
        grad_accum: Split each process's share of a step into this many micro-batches (saves memory; the
            result does not change, but for detection, whose loss each micro-batch normalises by its own objects).
        num_workers: DataLoader worker processes per training process.
        device: `auto` (the local GPU, else the CPU), `cpu`, `cuda`, `cuda:1`, `mps`.
        gradient_checkpointing: Recompute activations in backward (less memory, slower).
        compile: Run the model through `pvtkit.optimize` (weights not frozen): compiled on CUDA, and a ViT's
            evaluations on a CPU; CPU training steps and PVTv2's batched evaluations stay eager (faster there).
        save_steps: Also checkpoint every this many optimizer steps (0: at epoch ends only).
        resume: Continue the run in `output_dir` from its checkpoint.
        overwrite: Start afresh in an `output_dir` that holds a run or other files (its model files, metrics
            and checkpoint are replaced; other files are left alone).
        check_data: Segmentation: refuse data the label doctor calls broken (`data.doctor`; default True).
        progress: Progress bars and per-epoch lines on stderr.
        revision, offline: How to reach the Hub for `model`.
    """

    # Each field's `metadata` is its `pvtkit train` flag: "help", "group", "flags" (default: --field-name), and
    # argparse's "choices", "nargs", "metavar", "required"; "const": a flag that takes no value and sets this one.
    output_dir: str | os.PathLike = field(
        metadata={
            "group": WHAT,
            "flags": ("--output", "-o"),
            "required": True,
            "help": "output directory for the model, metrics and checkpoint",
        }
    )
    data: str | os.PathLike | None = field(
        default=None,
        metadata={
            "group": WHAT,
            "flags": ("--data", "-d"),
            "help": "dataset folder (see the layout below); required unless --resume",
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "group": WHAT,
            "choices": tuple(n for t in tasks.trainable() for n in t.names),
            "help": f"what to train: {', '.join(t.name for t in tasks.trainable())} (or a short name: "
            f"{', '.join(t.aliases[0] for t in tasks.trainable())}; default: {tasks.default().name})",
        },
    )
    model: str | os.PathLike | None = field(
        default=None,
        metadata={
            "group": WHAT,
            "flags": ("--model", "-m"),
            "help": "pretrained model to fine-tune: Hub repo id, directory or "
            "weights file (a head for the data's classes replaces one of another size)",
        },
    )
    arch: str | None = field(
        default=None,
        metadata={
            "group": WHAT,
            "help": "or train this published variant from scratch, named FAMILY-VARIANT (a bare VARIANT "
            "means the first family listed that has it)",
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "help": "training and evaluation resolution (default: the model's processor size, else 224)",
        },
    )
    epochs: int | None = field(
        default=None,
        metadata={"group": RECIPE, "help": f"passes over the training images (default: {RUN_DEFAULTS['epochs']})"},
    )
    batch_size: int | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "flags": ("--batch-size", "-b"),
            "help": "images per optimizer step over all processes and "
            f"accumulation steps (default: {_defaults('batch_size')})",
        },
    )
    lr: float | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "help": "peak learning rate (default, with --arch / --model: "
            + "; ".join(
                f"{t.learning_rate(True):g} / {t.learning_rate(False):g} for {t.title}" for t in tasks.trainable()
            )
            + ")",
        },
    )
    weight_decay: float | None = field(
        default=None, metadata={"group": RECIPE, "help": f"AdamW weight decay (default: {_defaults('weight_decay')})"}
    )
    warmup_epochs: float | None = field(
        default=None,
        metadata={"group": RECIPE, "help": f"linear warmup, in epochs (default: {RUN_DEFAULTS['warmup_epochs']:g})"},
    )
    label_smoothing: float | None = field(
        default=None,
        metadata={
            "group": CLASSIFICATION,
            "help": f"cross-entropy label smoothing (default: {RUN_DEFAULTS['label_smoothing']})",
        },
    )
    val_fraction: float | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "help": "share of each class held out for validation when DIR has no val/ folder; 0 = "
            f"none, keep the last epoch (default: {RUN_DEFAULTS['val_fraction']})",
        },
    )
    seed: int | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "help": f"seeds new weights, shuffling and augmentation (default: {RUN_DEFAULTS['seed']})",
        },
    )
    crop_scale: float | None = field(
        default=None,
        metadata={
            "group": CLASSIFICATION,
            "help": f"smallest share of the image area a random crop keeps (default: {RUN_DEFAULTS['crop_scale']})",
        },
    )
    hflip: bool | None = field(
        default=None,
        metadata={"group": RECIPE, "flags": ("--no-hflip",), "const": False, "help": "no random horizontal flips"},
    )
    max_grad_norm: float | None = field(
        default=None,
        metadata={"group": RECIPE, "help": f"gradient clipping; 0 = off (default: {RUN_DEFAULTS['max_grad_norm']})"},
    )
    schedule: str | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "choices": SCHEDULES,
            "help": "decay after the warmup; poly is linear to 0; onecycle is PyTorch's OneCycleLR (lr/25 up to lr "
            "over the warmup, or 30% of the steps without one, then a cosine to lr/25/1e4); step keeps lr and "
            f"drops it tenfold for the last 20% of the steps (Deformable DETR's) (default: "
            f"{_defaults('schedule')})",
        },
    )
    head_lr_scale: float | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "help": f"the head learns this many times faster (default: {_defaults('head_lr_scale')})",
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "metavar": "R",
            "help": "layer-wise lr decay: encoder layer i of n (0: the patch embeddings, then each block; the heads "
            "are layer n) learns at R^(n - i) times the rate (BEiT / mmseg's rule; default: 1, none)",
        },
    )
    ema: bool | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "const": True,
            "help": "keep an exponential moving average of the weights (fp32, after every step): validation "
            "measures it and the saved model is it",
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "metavar": "D",
            "help": "the EMA's decay per step, warmed up as min(D, (1 + t) / (10 + t)) at step t "
            f"(default: {RUN_DEFAULTS['ema_decay']})",
        },
    )
    scale_lr: bool | None = field(
        default=None,
        metadata={
            "group": RECIPE,
            "const": True,
            "help": "when --batch-size differs from the recipe's and --lr is left out, scale the recipe's lr by "
            "batch / recipe batch (the linear scaling rule; without this flag it is only printed)",
        },
    )
    reduce_labels: bool | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "const": True,
            "help": "mask value 0 is 'other' (ignored), k is class k-1 (ADE20K's masks)",
        },
    )
    scale_range: tuple[float, float] | list[float] | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "nargs": 2,
            "metavar": ("LOW", "HIGH"),
            "help": "random resize of the short side to --image-size x a ratio in this range (default: {} {})".format(
                *tasks.get("semantic-segmentation").recipe["scale_range"]
            ),
        },
    )
    cat_max_ratio: float | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "help": "retry a random crop while one class fills more than this share of it; 1 = "
            f"never (default: {RUN_DEFAULTS['cat_max_ratio']})",
        },
    )
    jitter: bool | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "flags": ("--no-jitter",),
            "const": False,
            "help": "no photometric distortion (brightness, contrast, saturation, hue)",
        },
    )
    eval_mode: str | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "choices": ("whole", "slide"),
            "help": "validation on whole images resized by the "
            f"processor, or on sliding windows (default: {RUN_DEFAULTS['eval_mode']})",
        },
    )
    # losses for imbalanced data (pvtkit.losses): the --loss terms and the class weights of ce / focal / ohem
    loss: str | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "metavar": "NAME[:W],...",
            "help": "the training loss, a weighted sum of: ce (cross-entropy; BCE for a one-label model), ohem "
            "(cross-entropy over the pixels whose true class has probability < 0.7, at least 100000 per image: "
            "mmseg's OHEM), dice (mmseg's softmax Dice, per image), lovasz (Lovasz-softmax, per image), focal "
            "(gamma 2); e.g. ce:1,dice:0.5 (default: ce; validation's loss stays the model's cross-entropy)",
        },
    )
    class_weights: str | None = field(
        default=None,
        metadata={
            "group": SEGMENTATION,
            "metavar": "auto|W0,W1,...",
            "help": "per-class weights of the ce / focal / ohem pixels (and the per-class dice / lovasz terms): "
            "one per class, or auto: ENet's 1 / ln(1.02 + p) of each class's share p of the training masks' "
            "labelled pixels, scaled to a mean of 1 per pixel (pvtkit -v shows them; training_args.json keeps them "
            "as class_weight_values)",
        },
    )
    depth_scale: float | None = field(
        default=None,
        metadata={
            "group": DEPTH,
            "help": "16-bit PNG depth maps hold metres x this (NYU's millimetres: 1000, KITTI: 256); .npy "
            f"and float TIFF maps are metres (default: {RUN_DEFAULTS['depth_scale']:g})",
        },
    )
    min_depth: float | None = field(
        default=None,
        metadata={
            "group": DEPTH,
            "help": f"ground truth below this is no measurement (default: {RUN_DEFAULTS['min_depth']:g} m)",
        },
    )
    max_depth: float | None = field(
        default=None,
        metadata={
            "group": DEPTH,
            "help": "ground truth above this is no measurement, and predictions are clipped to it in the "
            "metrics (default: the model's max_depth: GLPN's 10 m NYU, 80 m KITTI)",
        },
    )
    cutdepth: float | None = field(
        default=None,
        metadata={
            "group": DEPTH,
            "metavar": "P",
            "help": "with probability P, GLPN's vertical CutDepth: a random full-height strip of the training image "
            "is replaced by its depth map (x 255 / the crop's largest depth) before normalisation; 0 = off "
            f"(default: {RUN_DEFAULTS['cutdepth']:g})",
        },
    )
    backbone_lr_scale: float | None = field(
        default=None,
        metadata={
            "group": DETECTION,
            "help": "the backbone and the layers that predict sampling offsets and reference points learn at this "
            f"share of --lr (Deformable DETR's lr_backbone; default: {RUN_DEFAULTS['backbone_lr_scale']:g})",
        },
    )
    max_size: int | None = field(
        default=None,
        metadata={
            "group": DETECTION,
            "help": "the longest side's limit when resizing; --image-size is the shortest side's (the paper: 800 and "
            "1333; default: the processor's longest_edge scaled with --image-size)",
        },
    )
    random_crop: bool | None = field(
        default=None,
        metadata={
            "group": DETECTION,
            "flags": ("--no-random-crop",),
            "const": False,
            "help": "no resize + random crop branch in the augmentation (by default half the images get it, as DETR)",
        },
    )
    multi_scale: bool | None = field(
        default=None,
        metadata={
            "group": DETECTION,
            "flags": ("--no-multi-scale",),
            "const": False,
            "help": "resize every training image's shortest side to --image-size (by default to one of the recipe's "
            "scales, 480..800 x --image-size / 800)",
        },
    )
    precision: str = field(
        default="fp32",
        metadata={
            "group": RUNNING,
            "choices": PRECISIONS,
            "help": "fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA)",
        },
    )
    grad_accum: int = field(
        default=1,
        metadata={
            "group": RUNNING,
            "help": "split each step into this many micro-batches to save memory; the result does not change "
            "(detection: each micro-batch's loss is normalised by its own objects, as transformers' Trainer does)",
        },
    )
    num_workers: int = field(
        default_factory=_default_workers,
        metadata={
            "group": RUNNING,
            "help": "data-loading processes per training process (default: one fewer than the usable "
            "CPU cores, at most 4)",
        },
    )
    device: str = field(
        default="auto",
        metadata={"group": RUNNING, "help": "auto (the local GPU when there is one), cpu, cuda, cuda:1, mps"},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"group": RUNNING, "help": "recompute activations in backward: less memory, ~30% slower"},
    )
    compile: bool = field(
        default=False,
        metadata={
            "group": RUNNING,
            "help": "torch.compile the model where that pays (pvtkit.optimize, weights not frozen): every "
            "step on CUDA; on a CPU a ViT's evaluations only (CPU training steps and PVTv2's batched evaluations run "
            "faster eagerly, measured: README 'Speed'); without a working compiler: a warning, then eager",
        },
    )
    save_steps: int = field(
        default=0,
        metadata={
            "group": RUNNING,
            "help": "also checkpoint every N optimizer steps (default: at the end of each epoch)",
        },
    )
    resume: bool = field(
        default=False, metadata={"group": RUNNING, "help": "continue the run in --output from its checkpoint"}
    )
    overwrite: bool = field(
        default=False,
        metadata={"group": RUNNING, "help": "start a new run in an --output that holds one (or other files)"},
    )
    check_data: bool = field(
        default=True,
        metadata={
            "group": RUNNING,
            "flags": ("--skip-data-checks",),
            "const": False,
            "help": "segmentation: train even on data the label checks call broken (0/255 binary masks, colour "
            "masks, ADE20K-style masks without --reduce-labels, ...; `pvtkit doctor` reports them)",
        },
    )
    progress: bool = field(
        default=True,
        metadata={
            "group": RUNNING,
            "flags": ("--quiet", "-q"),
            "const": False,
            "help": "no progress bars or per-epoch lines",
        },
    )
    revision: str | None = field(default=None, metadata={"group": WHAT, "help": "Hub branch, tag or commit of --model"})
    offline: bool = field(
        default=False, metadata={"group": WHAT, "help": "never touch the network; use the Hub cache only"}
    )

    def __post_init__(self) -> None:
        checks = [
            ("epochs", lambda v: v >= 1, "at least 1"),
            ("batch_size", lambda v: v >= 1, "at least 1"),
            ("lr", lambda v: v > 0, "positive"),
            ("weight_decay", lambda v: v >= 0, "0 or more"),
            ("warmup_epochs", lambda v: v >= 0, "0 or more"),
            ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("crop_scale", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("max_grad_norm", lambda v: v >= 0, "0 or more"),
            ("image_size", lambda v: v >= 8, "at least 8"),
            ("grad_accum", lambda v: v >= 1, "at least 1"),
            ("num_workers", lambda v: v >= 0, "0 or more"),
            ("save_steps", lambda v: v >= 0, "0 or more"),
            ("head_lr_scale", lambda v: v > 0, "positive"),
            ("layer_decay", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("ema_decay", lambda v: 0 < v < 1, "in (0, 1)"),
            ("cat_max_ratio", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("schedule", lambda v: v in SCHEDULES, " or ".join(SCHEDULES)),
            ("eval_mode", lambda v: v in ("whole", "slide"), "whole or slide"),
            ("scale_range", lambda v: len(v) == 2 and 0 < v[0] <= v[1], "two ratios, 0 < low <= high"),
            ("depth_scale", lambda v: v > 0, "positive"),
            ("min_depth", lambda v: v > 0, "positive"),
            ("max_depth", lambda v: v > (self.min_depth or 0), "greater than min-depth"),
            ("cutdepth", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
            ("backbone_lr_scale", lambda v: v > 0, "positive"),
            ("max_size", lambda v: v >= (self.image_size or 8), "at least the image size"),
        ]
        for name, ok, expected in checks:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise TrainingConfigError(f"{name.replace('_', '-')} must be {expected}, got {value}")
        if self.loss is not None or self.class_weights is not None:
            from ..losses import parse_class_weights, parse_loss_spec

            try:
                if self.loss is not None:
                    parse_loss_spec(self.loss)
                if self.class_weights is not None:
                    parse_class_weights(self.class_weights)
            except ValueError as e:
                raise TrainingConfigError(str(e)) from None
        if self.task is not None:
            names = [t.name for t in tasks.trainable()]
            try:
                task = tasks.get(self.task)
            except ValueError:
                task = None
            if task is None or not task.trainable:
                raise TrainingConfigError(f"task must be one of {', '.join(names)}, got {self.task!r}")
            self.task = task.name
        if self.precision not in PRECISIONS:
            raise TrainingConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.model is not None and self.arch is not None:
            raise TrainingConfigError("give a model to fine-tune or an architecture to train from scratch, not both")
        if self.resume and self.overwrite:
            raise TrainingConfigError(
                "resume and overwrite contradict each other: resume continues the run in the "
                "output directory, overwrite starts a new one there"
            )


def resolve_run(args: TrainingArguments, saved: dict[str, Any] | None, model_given: Any) -> dict[str, Any]:
    """The run's settings: the arguments with defaults filled in, or on resume, the saved settings (any argument
    given explicitly must agree with them)."""
    given = {k: getattr(args, k) for k in RUN_DEFAULTS}
    if given["scale_range"] is not None:
        given["scale_range"] = [float(v) for v in given["scale_range"]]
    if given["data"] is not None:
        given["data"] = str(Path(given["data"]).resolve())
    if given["model"] is not None:
        path = Path(given["model"])
        given["model"] = str(path.resolve()) if path.exists() else str(given["model"])
    if model_given is not None:
        given["model"] = given["model"] or f"<{type(model_given).__name__} object>"
    if saved is not None:
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in given.items() if v is not None and v != saved.get(k)]
        if changed:
            raise TrainingConfigError(
                f"resume: this run was started with other settings ({'; '.join(changed)}); a resumed run keeps "
                "its settings: leave these options out, or start a new run in another output directory"
            )
        return {**RUN_DEFAULTS, **saved}
    if given["data"] is None:
        raise TrainingConfigError("no training data given (a folder of class folders)")
    if given["model"] is None and given["arch"] is None:
        raise TrainingConfigError(
            "give a model to fine-tune (--model) or an architecture to train from scratch (--arch)"
        )
    task = tasks.get(given["task"] or RUN_DEFAULTS["task"])
    for other in tasks.trainable():
        stray = [k for k in other.options if given[k] is not None and k not in task.options]
        if other is not task and stray:
            raise TrainingConfigError(
                f"{', '.join(k.replace('_', '-') for k in stray)}: only for task {other.name}, "
                f"and this run's task is {task.name}"
            )
    defaults = {**RUN_DEFAULTS, **{k: v for k, v in task.recipe.items() if k in RUN_DEFAULTS}}
    run = {k: (defaults[k] if v is None else v) for k, v in given.items()}
    run["task"] = task.name
    if run["lr"] is None:
        run["lr"] = task.learning_rate(from_scratch=bool(run["arch"]))
    if given["ema_decay"] is not None and not run["ema"]:
        raise TrainingConfigError(
            f"ema-decay {given['ema_decay']} sets the decay of the weights' EMA, which is off: turn it on (ema) or "
            "leave ema-decay out"
        )
    if run["scale_lr"] and given["lr"] is not None:
        raise TrainingConfigError(
            "scale-lr scales the task recipe's learning rate to the global batch; with lr given, give the rate "
            "meant for this batch (or leave lr out)"
        )
    return run
