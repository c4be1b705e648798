"""Two rules of the papers' recipes that the optimizer's set-up applies: layer-wise learning-rate decay, and the
linear scaling of a recipe's learning rate to another global batch. (The EMA of the weights is `ema.py`.)

Layer-wise decay (BEiT, Bao et al. 2021, arXiv:2106.08254; ConvNeXt; mmseg's
`LearningRateDecayOptimizerConstructor`): the encoder's layers are numbered by depth, 0 for the patch embeddings,
then one per block, and the heads are layer `n`; a parameter of layer `i` learns at `decay ** (n - i)` times its
rate, so the heads keep the full rate and the first layers, closest to the pretrained features, change least.
The numbering is the model's: its `depth_layers()` lists the modules of each layer (the pyramid encoder and ViT
have one); the trainer reads it and knows no family.

The linear scaling rule (Goyal et al. 2017, arXiv:1706.02677): a rate tuned for a global batch of B is scaled by
B' / B for a batch of B'. As mmseg's `auto_scale_lr`, it is applied only when asked for (`--scale-lr`); otherwise
pvtkit says once what the rule would give, and keeps the recipe's rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import tasks
from .arguments import RUN_DEFAULTS, TrainingConfigError


def layer_ids(model: Any) -> tuple[dict[str, int], int]:
    """({parameter name: its layer}, n): the layers of `model.depth_layers()` numbered from 0, and every parameter
    outside them (the heads, a final norm) at layer n, their count."""
    depth_layers = getattr(model, "depth_layers", None)
    if not callable(depth_layers):
        raise TrainingConfigError(
            f"layer-decay: {type(model).__name__} does not number its layers (it has no depth_layers()); layer-wise "
            "decay needs a model with a PVTv2 / SegFormer / GLPN pyramid encoder or a ViT encoder"
        )
    layers = depth_layers()
    layer_of = {id(p): i for i, modules in enumerate(layers) for module in modules for p in module.parameters()}
    n = len(layers)
    return {name: layer_of.get(id(p), n) for name, p in model.named_parameters()}, n


def layer_decay_scale(model: Any, decay: float) -> Callable[[str], float]:
    """`name -> decay ** (n - layer)`, the factor layer-wise decay gives each parameter of `model` (by name)."""
    ids, n = layer_ids(model)

    def scale_of(name: str) -> float:
        return decay ** (n - ids[name])

    return scale_of


def recipe_batch_size(task: tasks.Task) -> int:
    """The global batch the task's recipe learning rate is meant for."""
    return int(task.recipe.get("batch_size", RUN_DEFAULTS["batch_size"]))


def scale_learning_rate(settings: dict[str, Any], lr_given: bool) -> tuple[dict[str, Any], str | None]:
    """(settings, a line to print, or None): when the global batch differs from the recipe's and the rate is the
    recipe's (`lr_given` False), the linear scaling rule: applied with `scale_lr`, else only stated."""
    task = tasks.get(settings["task"])
    recipe_batch, batch = recipe_batch_size(task), int(settings["batch_size"])
    if lr_given or batch == recipe_batch:
        return settings, None
    base = float(settings["lr"])
    scaled = base * batch / recipe_batch
    rule = f"{base:g} x {batch}/{recipe_batch} = {scaled:.3g}"
    if settings.get("scale_lr"):
        note = (
            f"learning rate {scaled:.3g}: the {task.title} recipe's {base:g} is for a global batch of {recipe_batch}; "
            f"this run's is {batch}, and the linear scaling rule gives {rule} (--scale-lr)"
        )
        return {**settings, "lr": scaled}, note
    note = (
        f"learning rate {base:g}: the {task.title} recipe's, for a global batch of {recipe_batch}; this run's is "
        f"{batch}, for which the linear scaling rule gives {rule} (--scale-lr applies it; --lr sets any rate)"
    )
    return settings, note
