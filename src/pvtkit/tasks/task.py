"""The task spec, and the registry of tasks that the trainer, the evaluator, the pipelines, the commands, the
server and export read.

A task says what a model is *for* (a family says what it *is*): its one name and the aliases users type, the head
it needs of a family (`Family.classes[task.head]`), its Auto class and pipeline, its data, its loss, its metric and
evaluator, its recipe (training defaults in one table), and the records its answers become. Every generic part of
pvtkit asks the spec and branches on no task; adding a task is one file in this package plus one entry in
`TASK_MODULES`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

# The registry: one module of this package per task, in the order `--help` lists them.
TASK_MODULES = ("classification", "segmentation", "depth", "detection", "features")


class Task:
    """What generic code needs to know about a task. Subclasses fill the class attributes and override the
    methods their task has (a task that cannot be trained leaves `trainable` False).

    Attributes:
        name: The registry name.
        heads: The keys of the family model classes it runs (`Family.classes`), the one it trains first.
        pipeline_task: transformers' pipeline name (`image-classification`, `image-segmentation`, ...).
        aliases: Other names users type (`classification`, `segmentation`, `depth`, ...).
        auto_class_name: The `pvtkit.auto` class that loads its models.
        pipeline_class_name: The `pvtkit.pipelines` class that runs it.
        default_model: The Hub checkpoint a pipeline loads when given none.
        export_heads: `pvtkit export --task` names -> the family head each exports (`features` -> `model`).
        title: The task in messages ("semantic segmentation"); `head_title` its trained head ("segmentation"):
            a pipeline refuses a checkpoint whose head of that kind is newly initialised.
        trainable: `pvtkit train` / `pvtkit eval` support it.
        recipe: What the task changes in the trainer's `RUN_DEFAULTS`, plus `lr_from_scratch` / `lr_fine_tune`.
        settings: Run settings only this task reads, with their defaults (given to another task: a usage error).
        default_image_size: The training size when neither the user nor the checkpoint's processor gives one.
        best_metric: The validation record key that picks the best epoch (higher is better).
        train_metric: The training record's accuracy-like key, and `metric_title` the best metric in words.
        output_names: What the model returns that the task reads (`logits`, `predicted_depth`).
        served_outputs: The V2 outputs the server answers with (empty: not served).
    """

    name: ClassVar[str] = ""
    heads: ClassVar[tuple[str, ...]] = ()
    pipeline_task: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    auto_class_name: ClassVar[str] = ""
    pipeline_class_name: ClassVar[str] = ""
    default_model: ClassVar[str] = ""
    export_heads: ClassVar[Mapping[str, str]] = {}
    title: ClassVar[str] = ""
    head_title: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    recipe: ClassVar[Mapping[str, Any]] = {}
    settings: ClassVar[Mapping[str, Any]] = {}
    default_image_size: ClassVar[int] = 224
    best_metric: ClassVar[str] = ""
    metric_title: ClassVar[str] = ""
    train_metric: ClassVar[str] = ""
    output_name: ClassVar[str] = "logits"
    served_outputs: ClassVar[tuple[str, ...]] = ()
    labelled: ClassVar[bool] = False  # its models predict classes (`num_labels`, `id2label` matter)
    # The model's own labels are the data's, in the data's order (mask value i is class i), or matched by name.
    labels_in_data_order: ClassVar[bool] = False

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the run settings only this task reads."""
        return tuple(self.settings)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the task answers to: its own, its pipeline's, the export name and the aliases."""
        return tuple(dict.fromkeys((self.name, self.pipeline_task, *self.export_heads, *self.aliases)))

    def accepts(self, model: Any) -> bool:
        """Whether `model` is one of this task's (False for another family class's head; True for a class the
        families do not know, such as a user's subclass)."""
        from ..models import family

        try:
            return family.task_of(model) in self.heads
        except ValueError:
            return True

    # `pipeline(...)` options that choose the model to load rather than how it runs (features' `stages`)
    load_options: ClassVar[tuple[str, ...]] = ()

    def load_model(self, source: Any, hub: Mapping[str, Any], **options: Any) -> Any:
        """The task's model from a checkpoint (Hub id, directory, file), as its pipeline loads it."""
        return self.auto_class().from_pretrained(source, **hub)

    def auto_class(self) -> type:
        from .. import auto

        return getattr(auto, self.auto_class_name)

    def pipeline_class(self) -> type:
        from .. import pipelines

        return getattr(pipelines, self.pipeline_class_name)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # -- training: each trainable task overrides these --

    def learning_rate(self, from_scratch: bool) -> float:
        return self.recipe["lr_from_scratch" if from_scratch else "lr_fine_tune"]

    def load_data(self, settings: Mapping[str, Any], progress: bool) -> Any:
        """The run's training and validation data (`.classes`, `.train`, `.val`, `.counts()`), checked."""
        raise NotImplementedError(f"{self.title} cannot be trained")

    def samples(self, data: Any, config: Any) -> tuple[list[Any], list[Any], list[int]]:
        """(training samples, validation samples, the model's class ids the data holds)."""
        raise NotImplementedError

    def data_settings(self, settings: Mapping[str, Any], data: Any) -> dict[str, Any]:
        """The run's settings with what the data decides added (segmentation's class weights from its pixel counts);
        called on every process with the loaded data, on resume too."""
        return dict(settings)

    def config_overrides(self, classes: list[str]) -> dict[str, Any]:
        """What a from-scratch model's config takes from the data (a head for its classes)."""
        return {"num_labels": len(classes), "id2label": dict(enumerate(classes))}

    def prepare_model(self, model: Any, classes: list[str]) -> None:
        """Fit a model's head and config to the data before its first run."""
        model.set_labels(classes, keep_order=self.labels_in_data_order)

    def processor_image_size(self, processor: Any) -> int | None:
        """The training size a processor implies when the run gives none (its square size), or None."""
        from ..processing import fixed_size

        size = fixed_size(processor)
        return size[0] if size and size[0] == size[1] else None

    def processor_size(self, processor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The processor fields that make it prepare images at the run's `image_size` (a square)."""
        return {"size": {"height": settings["image_size"], "width": settings["image_size"]}}

    def processor_options(self, processor: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Processor fields the run's settings decide (segmentation's `do_reduce_labels`)."""
        return {}

    def train_dataset(self, samples: list[Any], processor: Any, settings: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def collate(self) -> Any:
        """The training loader's `collate_fn` (None: PyTorch's default, which stacks)."""
        return None

    def to_device(self, pixels: Any, labels: Any, device: Any) -> tuple[Any, Any]:
        """A training micro-batch's inputs and labels (as the task's dataset collates them) on `device`."""
        return pixels.to(device, non_blocking=True), labels.to(device)

    def model_inputs(self, pixels: Any, labels: Any) -> dict[str, Any]:
        """The training forward's keyword arguments (a task whose model computes its own loss passes `labels`)."""
        return {"pixel_values": pixels}

    def lr_scale_of(self, model: Any, settings: Mapping[str, Any]) -> Any:
        """`name -> factor` of each parameter's learning rate, or None for the trainer's rule (the head at
        `head_lr_scale`)."""
        return None

    def loss_units(self, micro_batches: list[Any]) -> Any:
        """What the step's loss is a mean over, counted in this process's micro-batches (a tensor), or None for
        "per image" (the global batch size)."""
        return None

    def train_loss(self, output: Any, labels: Any, weights: Any, settings: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """(summed loss, the train metric's hits, what it counts) of a micro-batch."""
        raise NotImplementedError

    def evaluator(
        self, model: Any, samples: list[Any], ids: list[int], processor: Any, settings: Mapping[str, Any], **common: Any
    ) -> Any:
        raise NotImplementedError

    def validation_record(self, result: Any) -> tuple[dict[str, Any], float]:
        """(the epoch record's validation entries, the score the best epoch is picked by)."""
        raise NotImplementedError

    def short_metrics(self, record: Mapping[str, Any], validated: bool) -> tuple[str, str]:
        """The progress line's (training metric, validation metric) texts."""
        return "", ""

    # -- evaluation (`pvtkit eval`) --

    eval_batch_size: ClassVar[int] = 64
    eval_options: ClassVar[tuple[str, ...]] = ()  # `pvtkit eval` options only this task takes
    comparable: ClassVar[bool] = False  # `pvtkit eval --compare`: has `compare_report` and `compare_table`

    def evaluate(self, model: Any, data: Any, **options: Any) -> Any:
        raise NotImplementedError(f"pvtkit eval does not evaluate {self.title}")

    def report_table(self, report: dict[str, Any]) -> str:
        """`pvtkit eval`'s table of a report (the evaluation result's `to_dict()` with `model` and `data`)."""
        raise NotImplementedError

    # -- what the server answers (`served_outputs` empty: not served) --

    # The V2 outputs answered when a request names none; whether the per-image answers are real work (run off the
    # server's event loop), are at the input's size (so images of one V2 request must share a size), and can be
    # drawn over the image (`/predict?overlay=1`).
    served_default_outputs: ClassVar[tuple[str, ...]] = ()
    answer_off_loop: ClassVar[bool] = False
    answers_at_input_size: ClassVar[bool] = False
    draws_overlay: ClassVar[bool] = False

    def serve_options(self, top_k: int) -> dict[str, Any]:
        """The pipeline options the server's own options set."""
        return {}

    def served_rows(self, output: Any) -> list[Any]:
        """Per image of a batch, its row of the model's output (`output_name`, float32 numpy), which
        `served_answer` takes."""
        return list(getattr(output, self.output_name).float().cpu().numpy())

    def served_answer(self, pipe: Any, output: Any, size: tuple[int, int]) -> Any:
        """One image's answer from its row of the batched model output (`output_name`) and its (height, width)."""
        return output

    def served_record(self, pipe: Any, answer: Any, top_k: int) -> Any:
        """One image's answer as the CLI writes it (V1's prediction, `/predict`'s record)."""
        raise NotImplementedError(f"pvtkit serve does not serve {self.title}")

    def upload_record(self, name: str, record: Any, answer: Any = None) -> dict[str, Any]:
        """`/predict`'s record of the uploaded file `name` (`record`: `served_record`'s; `answer`: `served_answer`'s)."""
        return {"path": name, "predictions": record}

    def served_view(self, pipe: Any, image: Any, answer: Any) -> Any:
        """The PIL image `/predict?overlay=1` draws of an answer over (or beside) the uploaded `image`, for a task
        that `draws_overlay`."""
        raise NotImplementedError(f"pvtkit serve draws no view of {self.title}")

    def served_v2_outputs(
        self, pipe: Any, answers: list[Any], asked: Mapping[str, Any], top_k: int, check_top_k: Any
    ) -> list[tuple[str, str, Any]]:
        """`(name, V2 datatype, array)` of each asked output (name -> its `classification` parameter or None)."""
        raise NotImplementedError(f"pvtkit serve does not serve {self.title}")

    def served_output_types(self, num_labels: int) -> list[dict[str, Any]]:
        """The V2 metadata of the outputs."""
        return []


@functools.cache
def tasks() -> dict[str, Task]:
    """Every registered task, by name."""
    found = (importlib.import_module(f"{__package__}.{name}").TASK for name in TASK_MODULES)
    return {task.name: task for task in found}


def get(name: str | Task | None) -> Task:
    """The task called `name` (its own name, transformers' pipeline name or an alias), or a ValueError naming them."""
    if isinstance(name, Task):
        return name
    for task in tasks().values():
        if name in task.names:
            return task
    known = "; ".join(", ".join(t.names) for t in tasks().values())
    raise ValueError(f"unknown task {name!r}; pvtkit's tasks are {known}")


def default() -> Task:
    """The task of a checkpoint that does not say (a bare timm or whai362/PVT file loads as a classifier)."""
    return get("image-classification")


def export_heads() -> dict[str, str]:
    """`pvtkit export --task` names -> the family head each exports, over every task."""
    return {name: head for task in tasks().values() for name, head in task.export_heads.items()}


def trainable() -> list[Task]:
    return [t for t in tasks().values() if t.trainable]


def task_of(model: Any) -> Task:
    """The task a model does, from its class's place in its family's spec (`PvtV2ForSemanticSegmentation` ->
    semantic segmentation); the feature-extraction task for bare encoders and backbones."""
    from ..models import family

    return task_for_head(family.task_of(model))


def task_for_head(head: str) -> Task:
    """The task of a family's model class kept under `head` (`Family.classes`), or a ValueError."""
    for task in tasks().values():
        if head in task.heads:
            return task
    raise ValueError(f"no pvtkit task uses {head} models (tasks: {', '.join(tasks())})")
