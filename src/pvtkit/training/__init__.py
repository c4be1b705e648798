"""Fine-tuning: `arguments.py` (what a run is asked for, its defaults; no PyTorch, so `pvtkit train --help` is
instant) and `trainer.py` (the run: a `RunPlan` value, a `TrainerState` dataclass, the Trainer's set-up in named
steps, the loop). The task a run trains (its data, loss, metric, recipe) is its spec in `pvtkit.tasks`.

The public names load lazily (PEP 562): importing `pvtkit.training.arguments` loads no PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .arguments import RUN_DEFAULTS, TrainingArguments, TrainingConfigError

_TRAINER = (
    "CHECKPOINT_DIR",
    "METRICS_NAME",
    "RunPlan",
    "Trainer",
    "TrainerState",
    "TrainResult",
    "learning_rate",
    "parameter_groups",
    "plan_run",
    "train",
)


def __getattr__(name: str) -> Any:
    if name in _TRAINER:
        return getattr(importlib.import_module(f"{__name__}.trainer"), name)
    if name == "DatasetError":
        from ..data.folders import DatasetError

        return DatasetError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DatasetError",
    "RUN_DEFAULTS",
    "Trainer",
    "TrainingArguments",
    "TrainingConfigError",
    "TrainResult",
    "learning_rate",
    "parameter_groups",
    "train",
]
