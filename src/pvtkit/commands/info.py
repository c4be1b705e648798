"""`pvtkit info`: what a model is — architecture, parameters, FLOPs at a resolution, stage shapes and strides."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import pair
from ._common import HelpFormatter, UsageError, add_model_arguments, hub_kwargs, parse_size


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def print_table(info: dict[str, Any]) -> None:
    name = info["class"] + (f" ({info['variant']})" if info["variant"] else "")
    print(name)
    print(f"  parameters   {info['parameters'] / 1e6:.2f}M (head {info['head_parameters'] / 1e6:.2f}M)")
    c, h, w = info["input"]
    print(f"  input        {c} x {h} x {w}")
    print(
        f"  compute      {_human(info['macs'])} MACs = {_human(info['flops'])} FLOPs per image "
        "(papers call the MACs 'FLOPs')"
    )
    if info["num_labels"] is not None:
        print(f"  classes      {info['num_labels']}")
    for section, value in info.items():  # the family's own part: a table of rows, or a group of facts
        if section in _COMMON:
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            cells = [[_cell(v) for v in row.values()] for row in value]
            widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(value[0])]
            for line in [list(value[0]), *cells]:
                print(("  " + "  ".join(v.ljust(wd) for v, wd in zip(line, widths))).rstrip())
        elif isinstance(value, dict):
            print(f"  {section}: " + ", ".join(f"{k} {_cell(v)}" for k, v in value.items()))


_COMMON = (
    "model_type",
    "class",
    "variant",
    "parameters",
    "head_parameters",
    "input",
    "macs",
    "flops",
    "num_labels",
    "source",
)


def _cell(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def run(args: argparse.Namespace) -> int:
    from .. import tasks
    from ..analysis import describe
    from ..auto import AutoConfig, AutoModelForImageClassification
    from ..models import family as registry
    from . import _common

    if args.variant:
        try:
            config = registry.config_for_variant(args.variant)
        except ValueError as e:
            raise UsageError(f"--variant {args.variant!r}: {e}") from e
        classes = registry.family_of(config).classes  # the default task's head, else the family's own head
        model_class = classes.get(tasks.default().heads[0]) or list(classes.values())[-1]
    else:
        try:
            config = AutoConfig.from_pretrained(args.model, **hub_kwargs(args))
        except FileNotFoundError:  # a bare weights file (timm, whai362/PVT): read the architecture off the tensors
            config = _common.load_model(AutoModelForImageClassification, args).config
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load model {args.model!r}: {e}") from e
        model_class = registry.class_named((config.architectures or [""])[0] or "")
        classes = registry.family_of(config).classes
        model_class = model_class or classes.get(tasks.default().heads[0]) or list(classes.values())[-1]
    native = getattr(config, "image_size", None)  # a detector has none: its task's training size, square
    if native is None:
        head = next(h for h, c in registry.family_of(config).classes.items() if c is model_class)
        native = tasks.task_for_head(head).default_image_size
    size = args.image_size or "x".join(map(str, pair(native)))
    height, width = parse_size(size)  # type: ignore[misc]
    try:
        info = describe(model_class, config, height, width)
    except ValueError as e:
        raise UsageError(f"--image-size {size}: {e}") from e
    info["source"] = args.variant or args.model
    if args.format == "json":
        print(json.dumps(info, indent=2))
    else:
        print_table(info)
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "info",
        help="architecture, parameters, FLOPs, stage shapes and strides",
        description="Describe a model without running it on data: parameters, compute at an input size (MACs, "
        "which the PVT and ViT papers report as FLOPs, and FLOPs = 2 x MACs), and per-stage output shapes, "
        "strides, depths and heads. Only the config is needed (computed on PyTorch's meta device).",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--variant", help="a published architecture instead of --model, e.g. b2, b2_linear, base_patch16_224"
    )
    parser.add_argument("--image-size", help="input size, 224 or HxW (default: the config's image_size)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(run=run)
