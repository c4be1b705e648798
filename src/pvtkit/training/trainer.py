"""Fine-tuning PVTv2 and ViT classifiers on folders of labelled images, and SegFormer / PVTv2 segmentation models
on images and masks: on a laptop, or data-parallel under torchrun.

```python
result = pvtkit.train(data="flowers/", output_dir="runs/flowers", model="OpenGVLab/pvt_v2_b0", epochs=10)
result = pvtkit.train(data="digits/", output_dir="runs/digits", arch="b0", image_size=32, lr=2e-3)
result = pvtkit.train(data="ade/", output_dir="runs/ade", model="nvidia/mit-b0", task="semantic-segmentation",
                      reduce_labels=True, image_size=512)
```

Semantic segmentation (`task="semantic-segmentation"`) follows SegFormer's recipe instead (the recipe of `tasks/segmentation.py`:
AdamW lr 6e-5 with the decode head at 10x, weight decay 0.01, poly decay, joint image+mask augmentation in
`SegmentationTrainTransform`, cross-entropy ignoring 255 averaged over the global batch's labelled pixels), keeps
the best epoch by validation mIoU (`evaluation.SegmentationEvaluator`) and, under torchrun, normalises BatchNorm
over all processes; everything below holds for both tasks.

Options of every task's recipe (`recipe.py`, `ema.py`): `layer_decay` (layer-wise learning-rate decay, the layers
numbered by the model's `depth_layers()`), `ema` (an average of the weights, validated and saved instead of
them; checkpointed, so a resume continues it exactly), and the linear scaling rule for a global batch other than
the recipe's (stated once; applied with `scale_lr`).

The recipe is the usual one for ViT/PVT fine-tuning: AdamW (no weight decay on biases, norms and position
embeddings), linear warmup then cosine decay per optimizer step, label smoothing, random-resized-crop + horizontal
flip augmentation (written with PIL, no torchvision) followed by the model's own rescaling and normalisation, and
the model's own image processor for validation. The output directory is a transformers-format model (the best
epoch by validation accuracy) plus `metrics.jsonl` and `checkpoint/` (the last state, for `resume`).

Determinism is designed in, so that a run gives the same result however it is executed:

* `batch_size` is the *global* batch of one optimizer step: each of N processes computes `batch_size / N`
  images per step, split further into `grad_accum` micro-batches; the loss is normalised by the global batch,
  so 1 process, N processes and any accumulation compute the same update (up to float summation order).
* The epoch's shuffle depends only on (seed, epoch), and each image's crop/flip only on (seed, epoch, index): not
  on the worker, the process or the step a run was resumed at. A run killed and resumed (at an epoch end or at
  a `save_steps` checkpoint) continues with the same batches, learning rates and augmentations.

Scale-out uses PyTorch's DistributedDataParallel directly (gloo on CPUs, NCCL on GPUs, through
`pvtkit.distributed`) rather than Hugging Face Accelerate: DDP plus a sampler is all this loop needs, and it
keeps the dependency list at torch alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import tasks
from .._files import atomic_directory, atomic_write, atomic_write_json, find_interrupted_save, read_json
from ..auto import default_image_processor, image_processor_for
from ..data.folders import DatasetError
from ..data.sampling import TrainBatchSampler
from ..devices import resolve_device
from ..distributed import (
    DistContext,
    init_distributed,
    launched_by_torchrun,
    share_cpu_threads,
    shutdown_distributed,
    synchronise_batch_norms,
)
from ..dtypes import parse_dtype
from ..modeling import PreTrainedModel
from ..models import family as registry
from ..models.family import config_for_variant
from .arguments import TrainingArguments, TrainingConfigError, resolve_run
from .ema import WeightEma
from .recipe import layer_decay_scale, scale_learning_rate

logger = logging.getLogger("pvtkit")

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "training_state.pt"
METRICS_NAME = "metrics.jsonl"
ARGS_NAME = "training_args.json"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


@dataclass
class TrainResult:
    """The outcome of `Trainer.train`: where the model went, and how it did (`history` is `metrics.jsonl`)."""

    output_dir: Path
    model_name: str
    num_parameters: int
    classes: list[str]
    num_train: int
    num_val: int
    epochs: int
    steps: int
    world_size: int
    history: list[dict[str, Any]]
    best_epoch: int | None
    best_accuracy: float | None
    seconds: float
    resumed_at_step: int | None = None
    task: str = "image-classification"

    @property
    def best_metric(self) -> str:
        """What `best_accuracy` measures: the task's best metric (`val_accuracy`, `val_mean_iou`, ...)."""
        return tasks.get(self.task).best_metric

    def summary(self) -> str:
        last = self.history[-1] if self.history else {}
        speed = np.mean([h["images_per_second"] for h in self.history]) if self.history else 0.0
        minutes, seconds = divmod(int(round(self.seconds)), 60)
        lines = [
            f"trained {self.model_name} ({self.num_parameters / 1e6:.2f}M parameters) on {self.num_train} images of "
            f"{len(self.classes)} classes: {self.epochs} epochs, {self.steps} steps, {self.world_size} process(es), "
            f"{minutes}m{seconds:02d}s{' this session' if self.resumed_at_step else ''}, {speed:.0f} images/s"
            + (f" (resumed at step {self.resumed_at_step})" if self.resumed_at_step else "")
        ]
        task = tasks.get(self.task)
        what = task.metric_title
        if self.best_epoch is not None:
            lines.append(
                f"best validation {what} {self.best_accuracy:.2%} at epoch {self.best_epoch} "
                f"({self.num_val} images); last epoch {last.get(self.best_metric, float('nan')):.2%}, "
                f"train loss {last.get('train_loss', float('nan')):.4f}"
            )
        elif last:
            key = task.train_metric
            lines.append(
                f"no validation set: kept the last epoch's model (train loss {last['train_loss']:.4f}, "
                f"train {key[6:].replace('_', ' ')} {last[key]:.2%})"
            )
        lines.append(
            f"wrote {self.output_dir}: {', '.join(MODEL_FILES)} (the best model"
            f"{', its EMA weights' if last.get('weights') == 'ema' else ''}), {METRICS_NAME}, "
            f"{CHECKPOINT_DIR}/ (to resume)"
        )
        return "\n".join(lines)


# ---- augmentation, sampling, schedule ----------------------------------------------------------------------------


ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV, ONE_CYCLE_PCT = 25.0, 1e4, 0.3  # PyTorch's OneCycleLR defaults
STEP_AT, STEP_DROP = 0.8, 0.1  # the `step` schedule: x0.1 from 80% of the steps on (Deformable DETR: epoch 40 of 50)


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Linear warmup to `base_lr` over `warmup_steps`, then decay towards 0 at `total_steps`: a cosine, or
    `poly` (power 1: a straight line, SegFormer's schedule). `onecycle` is PyTorch's `OneCycleLR` (cosine
    annealing, two phases): from `base_lr / 25` up to `base_lr` over `warmup_steps` (0: 30% of the steps), then
    down to `base_lr / 25 / 1e4` at the last step, both by a half cosine. `step` keeps `base_lr` after the warmup
    and drops it tenfold for the last 20% of the steps (Deformable DETR's 50 epochs, dropped at 40)."""
    if schedule == "onecycle":
        return one_cycle(step, base_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "step":  # Deformable DETR's: the rate, then a tenth of it for the last fifth (epochs 41-50 of 50)
        return base_lr * (STEP_DROP if step >= round(total_steps * STEP_AT) else 1.0)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "poly":
        return base_lr * (1.0 - progress)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def one_cycle(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """`torch.optim.lr_scheduler.OneCycleLR(max_lr=base_lr, total_steps=total_steps, pct_start=warmup_steps /
    total_steps, anneal_strategy="cos", three_phase=False)`'s rate at `step` (0: the first optimizer step), computed
    as it computes it; steps past the end keep the last rate."""
    start, low = base_lr / ONE_CYCLE_DIV, base_lr / ONE_CYCLE_DIV / ONE_CYCLE_FINAL_DIV
    pct_start = warmup_steps / total_steps if warmup_steps else ONE_CYCLE_PCT
    peak, last = float(pct_start * total_steps) - 1, float(total_steps - 1)
    step = min(step, total_steps - 1)

    def anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)

    if step <= peak:
        return anneal(start, base_lr, step / peak) if peak > 0 else base_lr
    return anneal(base_lr, low, (step - peak) / (last - peak)) if last > peak else low


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    head_lr_scale: float = 1.0,
    scale_of: Callable[[str], float] | None = None,
    layer_scale: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices and kernels; none on biases, norms, tokens, position tables.
    The head's parameters (`model.head_prefixes`) learn `head_lr_scale` times faster; or `scale_of(name)` gives
    each parameter's factor (a task's recipe: detection's backbone at a tenth). `layer_scale(name)` multiplies that
    (layer-wise decay, `recipe.layer_decay_scale`). Each group's `lr_scale` multiplies the schedule's rate."""
    heads = tuple(getattr(model, "head_prefixes", ())) if head_lr_scale != 1.0 else ()
    if scale_of is None:

        def scale_of(name: str) -> float:
            return head_lr_scale if heads and name.startswith(heads) else 1.0

    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("position_embeddings", "cls_token", "mask_token"))
        scale = float(scale_of(name)) * (layer_scale(name) if layer_scale is not None else 1.0)
        groups.setdefault((not skip, scale), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]


# ---- models ----------------------------------------------------------------------------------------------------


def config_for_arch(arch: str, task: tasks.Task, classes: list[str], image_size: int) -> Any:
    """The config of a published variant (of any family) with `task`'s head for `classes`, at `image_size`."""
    try:
        return config_for_variant(arch, image_size=image_size, **task.config_overrides(classes))
    except ValueError as e:
        raise TrainingConfigError(f"--arch {arch!r}: {e}") from None


def _write_model(model: PreTrainedModel, processor: Any, directory: Path) -> None:
    """The model (transformers format) and its processor config into `directory`, each file atomically."""
    processor.save_pretrained(directory)
    model.write_pretrained(directory)


# ---- the output directory --------------------------------------------------------------------------------------


def _read_checkpoint(directory: Path) -> dict[str, Any]:
    """Everything a resumed run needs from `OUT/checkpoint/`, read on the main process and sent to the others."""
    from safetensors.torch import load_file

    try:
        payload = {
            "state": read_json(directory / STATE_NAME),
            "config": read_json(directory / "config.json"),
            "processor": read_json(directory / "preprocessor_config.json"),
            "weights": load_file(directory / "model.safetensors"),
            "training": torch.load(directory / OPTIMIZER_NAME, map_location="cpu", weights_only=True),
        }
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{directory}: the checkpoint cannot be read ({e}); it was not written by this version of "
            "pvtkit, or was damaged: start a new run"
        ) from e
    return payload


def _remove_leftovers(out: Path) -> None:
    """Delete the temporary files and staging folders of our own writes that a killed run left in `out`."""
    if not out.is_dir():
        return
    names = (*MODEL_FILES, METRICS_NAME, ARGS_NAME)
    for entry in os.scandir(out):
        if entry.name.startswith(tuple(f".{n}." for n in names)) and entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        elif entry.name.startswith(f".{CHECKPOINT_DIR}.saving-") and entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.name.startswith(f".{CHECKPOINT_DIR}.previous-") and (out / CHECKPOINT_DIR / STATE_NAME).is_file():
            shutil.rmtree(entry.path, ignore_errors=True)  # the swap completed; this copy is stale


def prepare_output(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Check that `out` can take the run (and make it); with `resume`, read its checkpoint."""
    state_file = out / CHECKPOINT_DIR / STATE_NAME
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a directory")
    _remove_leftovers(out)
    if resume:
        checkpoint = out / CHECKPOINT_DIR
        if not state_file.is_file():
            # A kill between the two renames of a checkpoint swap leaves the previous one under another name.
            previous = find_interrupted_save(checkpoint)
            if previous is None or not (previous / STATE_NAME).is_file():
                raise TrainingConfigError(
                    f"resume: {out} holds no checkpoint to resume (no {state_file}); start the run without resume"
                )
            logger.warning("%s: resuming from %s, left by a checkpoint save that was interrupted", out, previous.name)
            os.rename(previous, checkpoint)
        return _read_checkpoint(checkpoint)
    if state_file.is_file() and not overwrite:
        done = ""
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = read_json(state_file)
            done = f" (checkpoint after {state['global_step']} of {state['total_steps']} steps)"
        raise TrainingConfigError(
            f"{out} already holds a training run{done}: resume it, overwrite it, or choose another output directory"
        )
    present = sorted(e.name for e in os.scandir(out) if not e.name.startswith(".")) if out.is_dir() else []
    ours = [name for name in (*MODEL_FILES, METRICS_NAME, ARGS_NAME, CHECKPOINT_DIR) if name in present]
    if present and not overwrite:
        raise TrainingConfigError(
            f"output {out} is not empty (it holds {', '.join(present[:5])}"
            f"{', ...' if len(present) > 5 else ''}); pass overwrite to train into it anyway, "
            "or choose another output directory"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ours:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"output {out}: cannot write there ({e.strerror or e})") from e
    return None


# ---- the trainer -----------------------------------------------------------------------------------------------

T = TypeVar("T")


def _on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run `fn` on the main process and give every process its result, or its exception (so no process hangs
    waiting for one that failed)."""
    if not ctx.is_distributed:
        return fn()
    box: tuple[bool, Any] | None = None
    if ctx.is_main:
        try:
            box = (True, fn())
        except Exception as e:  # sent on, raised everywhere
            box = (False, e)
    ok, value = ctx.broadcast_object(box)
    if not ok:
        raise value
    return value


@dataclass(frozen=True)
class RunPlan:
    """The plan of a run, a pure value: its resolved settings, the data it trains on, and the schedule.

    `batch` images make one optimizer step over all processes; each process computes `batch / world_size`
    of them in `grad_accum` micro-batches of `micro` images.
    """

    settings: dict[str, Any]
    classes: list[str]
    counts: dict[str, list[int]]
    num_train: int
    num_val: int
    world_size: int
    grad_accum: int
    batch: int
    micro: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    def lr(self, step: int) -> float:
        return learning_rate(
            step, self.settings["lr"], self.warmup_steps, self.total_steps, self.settings.get("schedule", "cosine")
        )


def plan_run(settings: dict[str, Any], data: Any, world_size: int, grad_accum: int) -> RunPlan:
    """The schedule of `settings` on `data` with `world_size` processes: the global batch is split over processes
    and accumulation steps (it must divide evenly) and shrunk, with a warning, when it exceeds the data."""
    unit = world_size * grad_accum
    batch, n = settings["batch_size"], len(data.train)
    if batch % unit:
        raise TrainingConfigError(
            f"batch size {batch} is not divisible by {world_size} process(es) x {grad_accum} "
            f"accumulation step(s); use a multiple of {unit}"
        )
    if batch > n:
        if n < unit:
            raise DatasetError(f"{settings['data']}: {n} training images cannot fill {unit} micro-batches")
        logger.warning("batch size %d exceeds the %d training images; using %d", batch, n, n // unit * unit)
        batch = n // unit * unit
    steps = n // batch
    return RunPlan(
        settings=dict(settings),
        classes=list(data.classes),
        counts=data.counts(),
        num_train=n,
        num_val=len(data.val),
        world_size=world_size,
        grad_accum=grad_accum,
        batch=batch,
        micro=batch // unit,
        steps_per_epoch=steps,
        total_steps=settings["epochs"] * steps,
        warmup_steps=round(settings["warmup_epochs"] * steps),
    )


@dataclass
class TrainerState:
    """Where a run stands: the one resumable state beside the tensors (model, optimizer, RNG), saved as
    `checkpoint/trainer_state.json` and restored as a whole. `run`, `data`, `classes`, `steps_per_epoch`,
    `total_steps` and `world_size` record the plan it belongs to, so that a resume can refuse another plan.

    `epoch` epochs and `epoch_step` steps of the next one are done; `running` holds a mid-epoch checkpoint's partial
    sums (loss, correct, images, skipped) and seconds.
    """

    run: dict[str, Any]
    data: dict[str, list[int]]
    classes: list[str]
    steps_per_epoch: int
    total_steps: int
    world_size: int
    epoch: int = 0
    epoch_step: int = 0
    global_step: int = 0
    best_accuracy: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, Any] | None = None

    @classmethod
    def start(cls, plan: RunPlan) -> TrainerState:
        return cls(
            run=plan.settings,
            data=plan.counts,
            classes=plan.classes,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
            world_size=plan.world_size,
        )

    @property
    def complete(self) -> bool:
        return self.global_step >= self.total_steps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Trainer:
    """Trains an image classifier on class folders; see the module docstring for the recipe.

    Args:
        args: The settings.
        model: A classifier instance to train instead of loading `args.model` / building `args.arch`.
    """

    def __init__(self, args: TrainingArguments, model: PreTrainedModel | None = None) -> None:
        self.args = args
        self.model_given = model

    def train(self) -> TrainResult:
        """Run (or resume) training; returns the result on every process (only the main one writes files)."""
        self._setup()
        started, plan, state = time.perf_counter(), self.plan, self.state
        resumed_at = state.global_step if self.resumed else None
        start_epoch, start_step = state.epoch, state.epoch_step
        for epoch in range(start_epoch, plan.settings["epochs"]):
            record = self._train_epoch(epoch, start_step if epoch == start_epoch else 0)
            self._end_epoch(epoch, record)
            state.running = None
        self.ctx.barrier()
        validated = self.evaluator is not None
        return TrainResult(
            output_dir=self.out,
            model_name=type(self.model).__name__,
            num_parameters=self.model.num_parameters(),
            classes=plan.classes,
            num_train=plan.num_train,
            num_val=plan.num_val,
            epochs=plan.settings["epochs"],
            steps=state.global_step,
            world_size=plan.world_size,
            history=state.history,
            best_epoch=state.best_epoch if validated else None,
            best_accuracy=state.best_accuracy if validated else None,
            seconds=time.perf_counter() - started,
            resumed_at_step=resumed_at,
            task=plan.settings["task"],
        )

    # -- set-up, in the order it runs --

    def _setup(self) -> None:
        """Device and process group; output directory (and what it holds to resume); settings; data; model; plan;
        optimizer; loaders; the run announced."""
        a = self.args
        self.device, self.amp_dtype = self._device()
        self.ctx = init_distributed(self.device)
        share_cpu_threads(self.ctx, self.device)
        self.out = Path(a.output_dir)
        resumed = _on_main(self.ctx, lambda: prepare_output(self.out, a.resume, a.overwrite))
        self.resumed = resumed is not None
        saved = TrainerState.from_dict(resumed["state"]) if resumed else None
        settings = resolve_run(a, saved.run if saved else None, self.model_given)
        self.lr_note = None
        if saved is None:  # a resumed run keeps its rate
            settings, self.lr_note = scale_learning_rate(settings, lr_given=a.lr is not None)
        self.task = task = tasks.get(settings["task"])
        data = _on_main(self.ctx, lambda: task.load_data({**settings, "check_data": a.check_data}, a.progress))
        settings = task.data_settings(settings, data)
        if saved is not None and data.counts() != saved.data:
            raise TrainingConfigError(
                f"resume: the images in {settings['data']} changed since the run started "
                "(classes or image counts differ); a resumed run needs the same data"
            )
        self.model, self.processor, settings = self._model(settings, data, resumed)
        self.train_samples, self.val_samples, ids = task.samples(data, self.model.config)
        self.plan = plan = plan_run(settings, data, self.ctx.world_size, a.grad_accum)
        if saved is not None and saved.steps_per_epoch != plan.steps_per_epoch:
            raise TrainingConfigError(
                f"resume: {plan.steps_per_epoch} steps per epoch now, {saved.steps_per_epoch} "
                "when the run started; a resumed run needs the same data and batch size"
            )
        self.state = saved or TrainerState.start(plan)
        self.optimizer, self.scaler = self._optimizer(resumed)
        self.ema = self._ema(resumed)
        self.net = self._wrapped()
        self.sampler, self.loader, self.evaluator = self._loaders(ids)
        self.show = a.progress and self.ctx.is_main
        self._announce()

    def _device(self) -> tuple[torch.device, torch.dtype | None]:
        """The device (`cuda` under torchrun: this process's own GPU) and the autocast dtype (None: fp32)."""
        a = self.args
        device = resolve_device(a.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if a.precision == "fp16" and device.type != "cuda":
            raise TrainingConfigError(
                "fp16 training needs a CUDA device (it relies on loss scaling); use bf16 on this device"
            )
        amp = parse_dtype(a.precision)
        return device, None if amp == torch.float32 else amp

    def _model(self, settings: dict[str, Any], data: Any, resumed: dict[str, Any] | None):
        """(model, processor, settings with the image size): on the run's device in fp32 weights (autocast
        computes), with the data's labels, native at the run's image size."""
        model, processor = self._load_or_build(settings, data, resumed)
        if resumed is None:
            if getattr(model.config, "num_channels", 3) != 3:
                raise TrainingConfigError(
                    f"the model takes {model.config.num_channels}-channel input; training feeds RGB images (3 channels)"
                )
            self.task.prepare_model(model, list(data.classes))
            default_size = self.task.default_image_size
            own = self.task.processor_image_size(processor)
            settings = {**settings, "image_size": settings["image_size"] or own or default_size}
            try:
                model.set_input_size(settings["image_size"])
            except ValueError as e:
                raise TrainingConfigError(f"image size {settings['image_size']}: {e}") from None
            processor = type(processor).from_dict(
                {
                    **processor.to_dict(),
                    **self.task.processor_size(processor, settings),
                    **self.task.processor_options(processor, settings),
                }
            )
        if self.args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model = model.to(device=self.device, dtype=torch.float32)
        if self.args.compile:
            from ..compiling import optimize_for

            # CUDA: the steps and evaluations; the CPU: a ViT's evaluations (the steps stay eager, faster there)
            optimize_for(model, settings.get("batch_size") or 1, self.device, freeze=False)
        return model, processor, settings

    def _load_or_build(self, settings: dict[str, Any], data: Any, resumed: dict[str, Any] | None):
        """(model, processor) on the CPU: the checkpoint's to resume, the given instance, a fresh `arch`, or the
        pretrained `model` to fine-tune."""
        from ..models.family import IMAGE_PROCESSOR_TYPES

        if resumed is not None:
            cfg = resumed["config"]
            family = registry.get(cfg["model_type"])
            model = self._task_class(family)(family.config_class.from_dict(cfg))
            model.load_state_dict(resumed["weights"])
            kind = resumed["processor"].get("image_processor_type")
            return model, IMAGE_PROCESSOR_TYPES[kind].from_dict(resumed["processor"])
        torch.manual_seed(settings["seed"])
        if self.model_given is not None:
            return self.model_given, default_image_processor(self.model_given)
        if settings["arch"]:
            config = config_for_arch(
                settings["arch"], self.task, data.classes, settings["image_size"] or self.task.default_image_size
            )
            model = self._task_class(registry.family_of(config))(config)
            return model, default_image_processor(model)
        hub = {"revision": self.args.revision, "local_files_only": self.args.offline}
        auto = self.task.auto_class()
        try:
            model = auto.from_pretrained(settings["model"], **hub)
        except (OSError, ValueError) as e:
            raise TrainingConfigError(f"cannot load model {settings['model']!r}: {e}") from e
        return model, image_processor_for(settings["model"], model, **hub)

    def _task_class(self, family: Any) -> type:
        """The family's model class for this run's task (a family without one is a usage error)."""
        head = self.task.heads[0]
        if head not in family.classes:
            raise TrainingConfigError(
                f"{family.title} has no {head} model; {head} trains "
                + ", ".join(f.title for f in registry.families().values() if head in f.classes)
            )
        return family.classes[head]

    def _optimizer(self, resumed: dict[str, Any] | None):
        """AdamW (and, for fp16, a loss scaler), with the optimizer and RNG state of a resumed run."""
        settings = self.plan.settings
        groups = parameter_groups(
            self.model,
            settings["weight_decay"],
            settings.get("head_lr_scale", 1.0),
            self.task.lr_scale_of(self.model, settings),
            layer_decay_scale(self.model, settings["layer_decay"]) if settings["layer_decay"] != 1.0 else None,
        )
        optimizer = torch.optim.AdamW(groups, lr=settings["lr"])
        scaler = torch.amp.GradScaler("cuda") if self.args.precision == "fp16" else None
        if resumed is not None:
            training = resumed["training"]
            optimizer.load_state_dict(training["optimizer"])
            if scaler is not None and training.get("scaler"):
                scaler.load_state_dict(training["scaler"])
            torch.set_rng_state(training["rng"])
            if self.device.type == "cuda" and training.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(training["cuda_rng"], self.device)
        return optimizer, scaler

    def _ema(self, resumed: dict[str, Any] | None) -> WeightEma | None:
        """With `ema`, the average of the weights: from the model's, or a resumed run's own."""
        settings = self.plan.settings
        if not settings["ema"]:
            return None
        ema = WeightEma(self.model, settings["ema_decay"])
        if resumed is not None:
            state = resumed["training"].get("ema")
            if state is None:
                raise TrainingConfigError(f"resume: {self.out}'s checkpoint of an --ema run holds no EMA weights")
            ema.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        return ema

    def _wrapped(self) -> nn.Module:
        """The model, in DistributedDataParallel under torchrun (BatchNorms then normalise over all processes, so
        N processes train as one)."""
        if not self.ctx.is_distributed:
            return self.model
        synchronise_batch_norms(self.model, self.device)
        # Depth-wise conv kernels (C, 1, 3, 3) get gradients whose stride on the size-1 axis differs from the
        # bucket's; the layout is the same memory, and DDP's warning about it on every run would only alarm.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def _loaders(self, label_ids: list[int]):
        """(this process's batch sampler, its training loader, the validation evaluator or None)."""
        a, plan, settings = self.args, self.plan, self.plan.settings
        dataset = self.task.train_dataset(self.train_samples, self.processor, settings)
        sampler = TrainBatchSampler(
            plan.num_train, plan.batch, self.ctx.rank, plan.world_size, plan.grad_accum, settings["seed"]
        )
        # A generator of its own: each epoch's iterator draws its workers' base seed from it, not from the global
        # RNG the model's dropout draws from (a run resumed mid-epoch would otherwise get other dropout masks).
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.task.collate(),
            num_workers=a.num_workers,
            persistent_workers=a.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(settings["seed"]),
        )
        evaluator: Any = None
        if self.val_samples:
            evaluator = self.task.evaluator(
                self.model,
                self.val_samples,
                label_ids,
                self.processor,
                settings,
                batch_size=plan.micro,
                num_workers=a.num_workers,
                device=self.device,
                amp_dtype=self.amp_dtype,
                ctx=self.ctx,
                progress=a.progress,
            )
        return sampler, loader, evaluator

    def _announce(self) -> None:
        """On the main process: the settings (a new run) or the metrics up to the checkpoint (a resumed one), and
        what is about to happen."""
        if not self.ctx.is_main:
            return
        plan = self.plan
        if self.resumed:
            self._write_metrics()  # drops any epoch recorded after the checkpoint
        else:
            atomic_write_json(
                self.out / ARGS_NAME,
                {
                    **plan.settings,
                    "grad_accum": plan.grad_accum,
                    "world_size": plan.world_size,
                    "precision": self.args.precision,
                },
            )
        logger.info(
            "training %s on %d images (%d validation), %d classes; %d steps of %d images per epoch",
            type(self.model).__name__,
            plan.num_train,
            plan.num_val,
            len(plan.classes),
            plan.steps_per_epoch,
            plan.batch,
        )
        if self.device.type == "cpu" and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
            logger.info(
                "CPU training: export THP_MEM_ALLOC_ENABLE=1 before starting Python for huge-page "
                "backed tensors (fewer page faults; +48%% B0 training throughput measured, see README "
                "'Speed'); the `pvtkit` command sets it itself"
            )
        if self.lr_note and self.args.progress:  # the linear scaling rule, once
            print(f"pvtkit: {self.lr_note}", file=sys.stderr)
        elif self.lr_note:
            logger.info(self.lr_note)
        if self.resumed and self.state.complete:
            logger.warning("the run in %s is already complete (%d steps)", self.out, plan.total_steps)

    # -- the loop --

    def _train_epoch(self, epoch: int, first: int) -> dict[str, Any]:
        """Steps `first`.. of `epoch`; returns the epoch's training metrics (summed over processes)."""
        from tqdm import tqdm

        plan, state, ctx, device, net = self.plan, self.state, self.ctx, self.device, self.net
        run, accum, steps = plan.settings, plan.grad_accum, plan.steps_per_epoch
        self.sampler.set_epoch(epoch, first)
        self.model.train()
        # loss sum, correct, counted (images, or labelled pixels), images, skipped images: this process's share (the
        # main one carries a resumed epoch's totals), summed over processes at the end of the epoch.
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        seconds_before = 0.0
        if state.running is not None and first:
            if ctx.is_main:
                sums += torch.tensor(state.running["sums"], dtype=torch.float64, device=device)
            seconds_before = state.running["seconds"]
        skipped: dict[str, str] = {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = tqdm(
            total=steps,
            initial=first,
            desc=f"epoch {epoch + 1}/{run['epochs']}",
            unit="step",
            file=sys.stderr,
            disable=not self.show,
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        batches = iter(self.loader)
        smooth_loss = None
        lr = plan.lr(state.global_step)
        for step in range(first, steps):
            lr = plan.lr(state.global_step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            step_loss = 0.0
            micro_batches = [next(batches) for _ in range(accum)]
            # The loss is a mean over the global batch (its images, or its labelled pixels), whatever the split:
            # DDP averages over processes, accumulation sums.
            units = self.task.loss_units(micro_batches)
            if units is not None:  # a mean over what the task counts (labelled pixels), over all processes
                norm = ctx.all_reduce_sum(units.to(device)).item() / plan.world_size
            else:
                norm = float(plan.micro * accum)
            for m, (pixels, labels, weights, indices, reasons) in enumerate(micro_batches):
                pixels, labels = self.task.to_device(pixels, labels, device)
                weights = weights.to(device, torch.float32)
                sync = net.no_sync() if ctx.is_distributed and m < accum - 1 else contextlib.nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        output = net(**self.task.model_inputs(pixels, labels))
                    loss_sum, correct, counted = self.task.train_loss(output, labels, weights, run)
                    loss = loss_sum / max(norm, 1.0)
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                with torch.no_grad():
                    sums += torch.stack(
                        [
                            loss_sum.detach().double(),
                            correct.double(),
                            counted.double(),
                            weights.sum().double(),
                            (weights == 0).sum().double(),
                        ]
                    )
                step_loss += loss.item()
                for i, reason in zip(indices.tolist(), reasons):
                    if reason:
                        skipped[self.train_samples[i][0]] = reason
            self._optimizer_step(params)
            state.global_step += 1
            smooth_loss = step_loss if smooth_loss is None else 0.9 * smooth_loss + 0.1 * step_loss
            elapsed = time.perf_counter() - t0
            speed = (step + 1 - first) * plan.batch / max(elapsed, 1e-9)
            bar.set_postfix_str(f"loss {smooth_loss:.4f}, lr {lr:.2e}, {speed:.0f} img/s", refresh=False)
            bar.update(1)
            if self.args.save_steps and state.global_step % self.args.save_steps == 0 and step + 1 < steps:
                totals = ctx.all_reduce_sum(sums.clone())
                if ctx.is_main:  # from here on, the main process counts from the totals, the others from zero
                    running = {"sums": totals.tolist(), "seconds": seconds_before + elapsed}
                    self._save_checkpoint(epoch, step + 1, running)
                    sums.copy_(totals)
                else:
                    sums.zero_()
        bar.close()
        seconds = seconds_before + time.perf_counter() - t0
        ctx.all_reduce_sum(sums)
        for part in ctx.gather_objects(skipped):
            skipped.update(part)
        if skipped and ctx.is_main:
            logger.warning(
                "epoch %d: skipped %d image(s) that could not be decoded: %s",
                epoch + 1,
                len(skipped),
                "; ".join(f"{p} ({r})" for p, r in list(skipped.items())[:5]),
            )
        loss_sum, correct, count, images, bad = sums.tolist()
        accuracy = self.task.train_metric
        return {
            "epoch": epoch + 1,
            "step": state.global_step,
            "lr": lr,
            "train_loss": loss_sum / max(count, 1),
            accuracy: correct / max(count, 1),
            "images_per_second": (images + bad) / max(seconds, 1e-9),
            "train_seconds": round(seconds, 3),
            "skipped_images": int(bad),
        }

    def _optimizer_step(self, params: list[nn.Parameter]) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.plan.settings["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, self.plan.settings["max_grad_norm"])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:  # the steps before this one: the decay's warm-up continues across a resume
            self.ema.update(self.state.global_step)

    def _end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Validate, keep the best model, checkpoint, write the metrics, say how it went."""
        improved, state = True, self.state
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():  # validate and keep the EMA
            if self.ema is not None:
                record["weights"] = "ema"
            if self.evaluator is not None:
                validation, score = self.task.validation_record(self.evaluator.run(desc="validation"))
                record.update(validation)
                improved = state.best_accuracy is None or score > state.best_accuracy
                if improved:
                    state.best_accuracy, state.best_epoch = score, epoch + 1
            if improved and self.ctx.is_main:
                _write_model(self.model, self.processor, self.out)
        state.history.append(record)
        if not self.ctx.is_main:
            return
        self._save_checkpoint(epoch + 1, 0, None)
        self._write_metrics()
        if self.show:
            from tqdm import tqdm

            trained, shown = self.task.short_metrics(record, self.evaluator is not None)
            loss = f"val loss {record['val_loss']:.4f}, " if "val_loss" in record else ""
            ema = " of the EMA" if self.ema is not None else ""
            val = f", {loss}{shown}{ema}{' (best)' if improved else ''}" if shown else ""
            tqdm.write(
                f"epoch {epoch + 1}/{self.plan.settings['epochs']}: loss {record['train_loss']:.4f}, {trained}"
                f"{val}, lr {record['lr']:.2e}, "
                f"{record['images_per_second']:.0f} img/s",
                file=sys.stderr,
            )

    def _save_checkpoint(self, epoch: int, epoch_step: int, running: dict[str, Any] | None) -> None:
        """`OUT/checkpoint/`: the model in transformers format, optimizer and RNG state, and the trainer state
        (`epoch` epochs and `epoch_step` steps of the next one done), swapped in atomically."""
        state = self.state
        state.epoch, state.epoch_step, state.running = epoch, epoch_step, running
        training = {
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        if self.ema is not None:
            training["ema"] = self.ema.state_dict()
        if self.device.type == "cuda":  # dropout and stochastic depth draw from the GPU's generator
            training["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        with atomic_directory(self.out / CHECKPOINT_DIR) as staging:
            _write_model(self.model, self.processor, staging)
            torch.save(training, staging / OPTIMIZER_NAME)
            (staging / STATE_NAME).write_text(json.dumps(state.to_dict(), indent=2) + "\n", encoding="utf-8")

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(h) + "\n" for h in self.state.history)
        atomic_write(self.out / METRICS_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def train(
    data: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    model: str | os.PathLike | PreTrainedModel | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Fine-tune (`model=`) or train from scratch (`arch=`) an image classifier on class folders.

    Args:
        data: A folder of class folders, or of `train/` and `val/` folders of them.
        output_dir: Where the best model (transformers format), `metrics.jsonl` and `checkpoint/` go.
        model: A Hub id, directory or weights file to fine-tune, or a model instance.
        **kwargs: Any other `TrainingArguments` field (`arch`, `epochs`, `batch_size`, `lr`, `resume`, ...).

    Returns:
        A `TrainResult`; `result.summary()` describes it. Under torchrun, this joins the process group (and
        leaves it at the end if it joined it).
    """
    if output_dir is None:
        raise TrainingConfigError("train() needs an output_dir")
    instance = model if isinstance(model, nn.Module) else None
    args = TrainingArguments(output_dir=output_dir, data=data, model=None if instance is not None else model, **kwargs)
    import torch.distributed as dist

    owns_group = launched_by_torchrun() and not (dist.is_available() and dist.is_initialized())
    try:
        return Trainer(args, model=instance).train()
    finally:
        if owns_group:
            shutdown_distributed()


__all__ = [
    "DatasetError",
    "Trainer",
    "TrainingArguments",
    "TrainingConfigError",
    "TrainResult",
    "learning_rate",
    "train",
]
