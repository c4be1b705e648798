"""`pvtkit info`: what a model is — architecture, parameters, FLOPs at a resolution, stage shapes and strides."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..layers import pair
from ._common import UsageError, add_model_arguments, hub_kwargs


def parse_size(text: str) -> tuple[int, int]:
    """`224` or `480x640` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--image-size {text!r}: expected a size such as 224 or 480x640 (height x width)")
    return parts[0], parts[1]


def _variant_of(config: Any) -> str | None:
    from ..models.pvt_v2 import VARIANTS as PVT
    from ..models.vit import VARIANTS as VIT

    table = PVT if config.model_type == "pvt_v2" else VIT
    for name in table:
        reference = type(config).from_variant(name)
        keys = [k for k in reference.to_dict() if k not in ("num_labels", "id2label", "label2id", "architectures",
                                                            "out_features", "out_indices", "image_size")]  # fmt: skip
        ours, theirs = config.to_dict(), reference.to_dict()
        if all(ours.get(k) == theirs.get(k) for k in keys):
            return name
    return None


def describe(model_class: type, config: Any, height: int, width: int) -> dict[str, Any]:
    """Architecture facts of `model_class(config)` at an input of height x width, computed on the meta device
    (no weights, no memory): parameters, multiply-accumulates (the papers' "FLOPs") and per-stage shapes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = model_class(config).eval()
    params = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(tuple(model.head_prefixes)))
    counted = model
    if config.model_type == "vit":
        p = pair(config.patch_size)[0]
        if height % p or width % p:
            raise ValueError(f"a ViT with patch size {p} needs height and width divisible by {p}, got {height}x{width}")
        with torch.device("meta"):  # position embeddings of the asked size: same compute as interpolating them
            counted = model_class(config.copy(image_size=[height, width])).eval()
    pixels = torch.empty(1, config.num_channels, height, width, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = counted(pixels, output_hidden_states=True)
    info: dict[str, Any] = {
        "model_type": config.model_type,
        "class": model_class.__name__,
        "variant": _variant_of(config),
        "parameters": params,
        "head_parameters": head,
        "input": [config.num_channels, height, width],
        "macs": counter.get_total_flops() // 2,
        "flops": counter.get_total_flops(),
        "num_labels": config.num_labels if hasattr(model, "classifier") else None,
    }
    if config.model_type == "pvt_v2":
        stages = []
        stride = 1
        for i, hidden in enumerate(out.hidden_states):
            stride *= config.strides[i]
            stages.append({
                "name": f"stage{i + 1}", "stride": stride, "channels": hidden.shape[1],
                "shape": list(hidden.shape[2:]), "depth": config.depths[i], "heads": config.num_attention_heads[i],
                "sr_ratio": config.sr_ratios[i], "mlp_ratio": config.mlp_ratios[i],
                "attention": "linear SRA (7x7 pool)" if config.linear_attention else "SRA",
            })  # fmt: skip
        info["stages"] = stages
    else:
        p = pair(config.patch_size)[0]
        info["vit"] = {
            "patch_size": config.patch_size, "grid": [height // p, width // p],
            "tokens": out.hidden_states[-1].shape[1], "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size, "heads": config.num_attention_heads,
            "mlp_size": config.intermediate_size,
        }  # fmt: skip
    return info


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
    print(f"  compute      {_human(info['macs'])} MACs = {_human(info['flops'])} FLOPs per image "
          "(papers call the MACs 'FLOPs')")  # fmt: skip
    if info["num_labels"] is not None:
        print(f"  classes      {info['num_labels']}")
    if "stages" in info:
        print("  stage    stride  channels  output      depth  heads  SR  MLP  attention")
        for s in info["stages"]:
            shape = "x".join(map(str, s["shape"]))
            print(f"  {s['name']:<8} {s['stride']:>6}  {s['channels']:>8}  {shape:<10}  {s['depth']:>5}  "
                  f"{s['heads']:>5}  {s['sr_ratio']:>2}  {s['mlp_ratio']:>3}  {s['attention']}")  # fmt: skip
    else:
        v = info["vit"]
        print(f"  patches      {v['grid'][0]} x {v['grid'][1]} of {v['patch_size']} px, {v['tokens']} tokens "
              "with [CLS]")  # fmt: skip
        print(f"  encoder      {v['layers']} layers, hidden {v['hidden_size']}, {v['heads']} heads, MLP {v['mlp_size']}")


def run(args: argparse.Namespace) -> int:
    from ..auto import CONFIGS, AutoConfig, AutoModelForImageClassification
    from ..models.pvt_v2 import PvtV2ForImageClassification
    from ..models.vit import ViTForImageClassification
    from . import _common

    classes = {"pvt_v2": PvtV2ForImageClassification, "vit": ViTForImageClassification}
    if args.variant:
        family = "vit" if args.variant in __import__("pvtkit").VIT_VARIANTS else "pvt_v2"
        try:
            config = CONFIGS[family].from_variant(args.variant)
        except (KeyError, ValueError) as e:
            raise UsageError(f"--variant {args.variant!r}: {e}") from e
        model_class = classes[family]
    else:
        try:
            config = AutoConfig.from_pretrained(args.model, **hub_kwargs(args))
        except FileNotFoundError:  # a bare weights file (timm, whai362/PVT): read the architecture off the tensors
            config = _common.load_model(AutoModelForImageClassification, args).config
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load model {args.model!r}: {e}") from e
        model_class = classes[config.model_type]
        arch = (config.architectures or [None])[0]
        module = __import__(model_class.__module__, fromlist=["_"])
        if arch and hasattr(module, arch):
            model_class = getattr(module, arch)
    size = args.image_size or "x".join(map(str, pair(config.image_size)))
    height, width = parse_size(size)
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--variant", help="a published architecture instead of --model, e.g. b2, b2_linear, "
                        "base_patch16_224")  # fmt: skip
    parser.add_argument("--image-size", help="input size, 224 or HxW (default: the config's image_size)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(run=run)
