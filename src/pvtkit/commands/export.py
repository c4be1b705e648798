"""`pvtkit export`: a checkpoint -> an ONNX file or a `torch.export` program, checked against PyTorch."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import UsageError, add_model_arguments, parse_size

# --task -> the task of the family registry
TASKS = {"classification": "image-classification", "features": "model", "backbone": "backbone",
         "segmentation": "semantic-segmentation", "depth": "depth-estimation"}  # fmt: skip


def parse_batch(value: str) -> int | None:
    """`dynamic` -> None; `N` -> N (at least 1)."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--batch {value!r}: expected 'dynamic' or a positive integer")
    return int(value)


def _auto_class(task: str, args: argparse.Namespace) -> Any:
    """The Auto class for `--task`; `auto` follows the checkpoint's `architectures` (a classifier if none)."""
    from ..auto import AUTO_CLASSES
    from ._common import checkpoint_task

    if task != "auto":
        return AUTO_CLASSES[TASKS[task]]
    return AUTO_CLASSES[checkpoint_task(args) or "image-classification"]


def run(args: argparse.Namespace) -> int:
    from .. import export as exporting
    from ._common import load_model, load_processor

    batch = parse_batch(args.batch)
    size = parse_size(args.size, "--size", dynamic=True)
    if args.format == "onnx" and args.opset not in exporting.SUPPORTED_OPSETS:
        raise UsageError(f"--opset {args.opset} is not supported: pvtkit exports opsets "
                         f"{exporting.SUPPORTED_OPSETS[0]} to {exporting.SUPPORTED_OPSETS[-1]} "
                         f"(default {exporting.DEFAULT_OPSET})")  # fmt: skip
    if args.format == "onnx":  # fail before loading anything when the export extra is missing
        exporting.require("onnx", "pvtkit export onnx")
        exporting.require("onnxscript", "pvtkit export onnx")
        if args.quantize:
            exporting.require("onnxruntime", "--quantize")
    model = load_model(_auto_class(args.task, args), args)
    processor = load_processor(args, model)
    options = dict(
        dtype=args.dtype, dynamic_batch=batch is None, batch_size=batch or 1, dynamic_size=size is None,
        image_size=size, with_preprocessing=args.with_preprocessing, processor=processor, verify=not args.no_verify,
    )  # fmt: skip
    print(f"exporting {type(model).__name__} from {args.model} to {args.output} ...", file=sys.stderr)
    try:
        if args.format == "onnx":
            report = exporting.export_onnx(model, args.output, opset=args.opset, quantize=args.quantize, **options)
        else:
            report = exporting.export_torch(model, args.output, **options)
    except ValueError as e:  # options this model cannot be exported with (e.g. a ViT size off the patch grid)
        raise UsageError(str(e)) from e
    if args.json:
        print(json.dumps(report.to_dict() | {"metadata": sorted(report.metadata)}, indent=2))
    else:
        print(report.summary())
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="export a model to ONNX (dynamic, checked in ONNX Runtime) or torch.export",
        description="Export a PVTv2, SegFormer, GLPN or ViT checkpoint for deployment. `onnx` writes one .onnx file "
        "that runs at any batch size and, for the pyramid models, any resolution (ViT: any multiple of the patch "
        "size); it is loaded in ONNX "
        "Runtime and compared with PyTorch at several input shapes, and the command fails, writing nothing, if "
        "the largest relative difference is above 1e-4 (fp32; 1e-2 for fp16). The file's metadata holds "
        "id2label, image_mean/std, size, resample and the input/output names, so a server needs nothing else. "
        "`torch` writes a torch.export program (.pt2) for `torch.export.load`. Needs `pip install "
        "\"pvtkit[export]\"` (onnx, onnxscript, onnxruntime) for ONNX.",
        epilog="examples:\n"
        "  pvtkit export onnx --model OpenGVLab/pvt_v2_b0 --output pvt_v2_b0.onnx\n"
        "  pvtkit export onnx --model my-vit --output vit.onnx --size 384 --batch 1 --dtype fp16\n"
        "  pvtkit export onnx --model my-model --output m.onnx --with-preprocessing --quantize dynamic\n"
        "  pvtkit export torch --model OpenGVLab/pvt_v2_b2 --output pvt_v2_b2.pt2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    onnx = formats.add_parser("onnx", help="one .onnx file, checked in ONNX Runtime",
                              description="Export to ONNX (see `pvtkit export --help`).")  # fmt: skip
    torch_ = formats.add_parser("torch", help="a torch.export program (.pt2)",
                                description="Export a torch.export program (see `pvtkit export --help`). PVTv2 "
                                "programs take sizes whose every feature map is at least 2x2 (61 pixels for the "
                                "standard variants, 33 with linear SRA).")  # fmt: skip
    for p, dtypes in ((onnx, ["fp32", "fp16"]), (torch_, ["fp32", "fp16", "bf16"])):
        add_model_arguments(p, default=None)
        p.add_argument("--output", "-o", required=True, help="file to write (atomically; nothing is left on failure)")
        p.add_argument("--task", choices=["auto", *TASKS], default="auto",
                       help="head to export: classification (logits), features (last_hidden_state), backbone "
                       "(stage maps), segmentation (logits at 1/4 size), depth (predicted_depth); auto follows "
                       "the checkpoint's architecture (default)")  # fmt: skip
        p.add_argument("--dtype", choices=dtypes, default="fp32", help="weights and compute dtype (default fp32)")
        p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
        p.add_argument("--size", default="dynamic",
                       help="'dynamic' (default: any size; traced and checked at the processor's size) or a fixed "
                       "HEIGHTxWIDTH (or one side)")  # fmt: skip
        p.add_argument("--with-preprocessing", action="store_true",
                       help="the input is uint8 RGB images (batch, height, width, 3) already resized to the "
                       "model's size; rescale and normalize run inside the graph (input name `images`)")  # fmt: skip
        p.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
        p.add_argument("--json", action="store_true", help="print the export report as JSON")
        p.set_defaults(run=run)
    onnx.add_argument("--opset", type=int, default=20, help="ONNX opset, 18-23 (default 20: native Gelu)")
    onnx.add_argument("--quantize", choices=["dynamic"],
                      help="dynamic int8 quantization of the weights (ONNX Runtime); prints top-1 agreement and "
                      "logit drift against fp32 on real photos")  # fmt: skip
    torch_.set_defaults(opset=None, quantize=None)
