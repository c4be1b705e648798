"""`pvtkit export`: a checkpoint -> an ONNX file or a `torch.export` program, checked against PyTorch, or a TF
SavedModel (through pvtkit's Keras models), checked against Keras."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .. import tasks
from ._common import HelpFormatter, RawHelpFormatter, UsageError, add_model_arguments, parse_size

# --task -> the family head it exports (each task's `export_heads`)
TASKS = tasks.export_heads()


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
    return AUTO_CLASSES[checkpoint_task(args) or tasks.default().heads[0]]


def _saved_model(args: argparse.Namespace) -> int:
    """`pvtkit export saved-model`: the Keras model (TensorFlow back end unless KERAS_BACKEND says otherwise),
    exported, reloaded with `tf.saved_model.load` and compared with the Keras model at two batch sizes."""
    import time

    import numpy as np

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
    except ImportError:
        raise UsageError('pvtkit export saved-model needs TensorFlow: pip install "pvtkit[tensorflow]"') from None
    from .. import keras as pk
    from ._common import hub_kwargs

    hub = hub_kwargs(args)
    try:
        cls = pk.model_class(args.model, None if args.task == "auto" else TASKS[args.task], **hub)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot export {args.model!r} as a SavedModel: {e}") from e
    started = time.perf_counter()
    try:
        model = cls.from_pretrained(args.model, **hub)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {args.model!r} for pvtkit's Keras models: {e}") from e
    print(
        f"exporting {type(model).__name__} from {args.model} to {args.output} (Keras on {pk.keras_backend()}) ...",
        file=sys.stderr,
    )
    model.export(args.output, image_bytes=args.image_bytes)
    report: dict[str, Any] = {
        "output": str(args.output),
        "class": type(model).__name__,
        "backend": pk.keras_backend(),
        "signatures": ["serving_default"] + (["serve_image_bytes"] if args.image_bytes else []),
        "export_s": round(time.perf_counter() - started, 2),
    }
    if not args.no_verify:
        loaded = tf.saved_model.load(str(args.output))
        worst = 0.0
        for batch in (1, 3):
            pixels = np.random.default_rng(batch).standard_normal(
                (model.config.num_channels, *model.image_size_for_export())
            )
            pixels = np.broadcast_to(pixels, (batch, *pixels.shape)).astype(np.float32)
            got = loaded.signatures["serving_default"](pixel_values=tf.constant(pixels))
            want = model(pixels, training=False)
            for name, value in got.items():
                reference = np.asarray(want[name])
                worst = max(worst, float(np.abs(value.numpy() - reference).max() / (np.abs(reference).max() + 1e-12)))
        report["max_relative_error"] = worst
        if worst > 1e-4:
            raise RuntimeError(
                f"the SavedModel at {args.output} differs from the Keras model by {worst:.2e} "
                "(relative), more than 1e-4"
            )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        checked = (
            f"; reloaded and checked at batch 1 and 3: max relative error {report['max_relative_error']:.1e}"
            if "max_relative_error" in report
            else ""
        )
        print(f"wrote {args.output}: signatures {', '.join(report['signatures'])}{checked}")
    return 0


def _accuracy_options(args: argparse.Namespace) -> dict[str, Any]:
    """`export_onnx`'s post-processing, accuracy gate and calibration options from the ONNX flags, checked before
    any model is loaded."""
    if args.format != "onnx":
        return {}
    from ..export_accuracy import calibration_files

    if args.quantize == "static" and not args.calibration:
        raise UsageError("--quantize static needs --calibration DIR (images to calibrate the int8 ranges on)")
    if args.calibration and args.quantize is None:
        raise UsageError("--calibration belongs to --quantize static|dynamic")
    if args.calibration_count < 1:
        raise UsageError(f"--calibration-count must be at least 1, got {args.calibration_count}")
    if not args.max_miou_drop >= 0:
        raise UsageError(f"--max-miou-drop must be 0 or more (mIoU points), got {args.max_miou_drop}")
    if args.verify_data is not None and not os.path.isdir(args.verify_data):
        raise UsageError(f"--verify-data {args.verify_data!r}: no such folder (expected a segmentation dataset)")
    options: dict[str, Any] = dict(
        postprocess=args.postprocess,
        verify_data=args.verify_data,
        max_miou_drop=args.max_miou_drop,
        progress=not args.json,
    )
    if args.calibration:
        try:
            options["calibration_images"] = calibration_files(args.calibration, args.calibration_count)
        except ValueError as e:
            raise UsageError(f"--calibration: {e}") from e
    return options


def run(args: argparse.Namespace) -> int:
    if args.format == "saved-model":
        return _saved_model(args)
    from .. import export as exporting
    from ._common import load_model, load_processor

    batch = parse_batch(args.batch)
    size = parse_size(args.size, "--size", dynamic=True)
    if args.format == "onnx" and args.opset not in exporting.SUPPORTED_OPSETS:
        raise UsageError(
            f"--opset {args.opset} is not supported: pvtkit exports opsets "
            f"{exporting.SUPPORTED_OPSETS[0]} to {exporting.SUPPORTED_OPSETS[-1]} "
            f"(default {exporting.DEFAULT_OPSET})"
        )
    if args.format == "onnx":  # fail before loading anything when the export extra is missing
        exporting.require("onnx", "pvtkit export onnx")
        exporting.require("onnxscript", "pvtkit export onnx")
        if args.quantize:
            exporting.require("onnxruntime", "--quantize")
    extra = _accuracy_options(args)
    model = load_model(_auto_class(args.task, args), args)
    processor = load_processor(args, model)
    options = dict(
        dtype=args.dtype,
        dynamic_batch=batch is None,
        batch_size=batch or 1,
        dynamic_size=size is None,
        image_size=size,
        with_preprocessing=args.with_preprocessing,
        processor=processor,
        verify=not args.no_verify,
    )
    print(f"exporting {type(model).__name__} from {args.model} to {args.output} ...", file=sys.stderr)
    try:
        if args.format == "onnx":
            report = exporting.export_onnx(
                model, args.output, opset=args.opset, quantize=args.quantize, **options, **extra
            )
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
        '"pvtkit[export]"` (onnx, onnxscript, onnxruntime) for ONNX. `saved-model` writes a TF SavedModel of a '
        'ViT or PVTv2 for TF Serving through pvtkit\'s Keras models (`pip install "pvtkit[tensorflow]"`).',
        epilog="examples:\n"
        "  pvtkit export onnx --model OpenGVLab/pvt_v2_b0 --output pvt_v2_b0.onnx\n"
        "  pvtkit export onnx --model my-vit --output vit.onnx --size 384 --batch 1 --dtype fp16\n"
        "  pvtkit export onnx --model my-model --output m.onnx --with-preprocessing --quantize dynamic\n"
        "  pvtkit export onnx --model my-segformer --output seg.onnx --postprocess --verify-data data/\n"
        "  pvtkit export onnx --model my-segformer --output seg-int8.onnx --quantize static \\\n"
        "      --calibration data/train --verify-data data/ --max-miou-drop 1\n"
        "  pvtkit export torch --model OpenGVLab/pvt_v2_b2 --output pvt_v2_b2.pt2\n"
        "  pvtkit export saved-model --model google/vit-base-patch16-224 --output vit_sm --image-bytes",
        formatter_class=RawHelpFormatter,
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    onnx = formats.add_parser(
        "onnx",
        help="one .onnx file, checked in ONNX Runtime",
        formatter_class=HelpFormatter,
        description="Export to ONNX (see `pvtkit export --help`).",
    )
    torch_ = formats.add_parser(
        "torch",
        help="a torch.export program (.pt2)",
        formatter_class=HelpFormatter,
        description="Export a torch.export program (see `pvtkit export --help`). PVTv2 "
        "programs take sizes whose every feature map is at least 2x2 (61 pixels for the "
        "standard variants, 33 with linear SRA).",
    )
    for p, dtypes in ((onnx, ["fp32", "fp16"]), (torch_, ["fp32", "fp16", "bf16"])):
        add_model_arguments(p, default=None)
        p.add_argument("--output", "-o", required=True, help="file to write (atomically; nothing is left on failure)")
        p.add_argument(
            "--task",
            choices=["auto", *TASKS],
            default="auto",
            help="head to export: classification (logits), features (last_hidden_state), backbone "
            "(stage maps), segmentation (logits at 1/4 size), depth (predicted_depth); auto follows "
            "the checkpoint's architecture (default)",
        )
        p.add_argument("--dtype", choices=dtypes, default="fp32", help="weights and compute dtype")
        p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
        p.add_argument(
            "--size",
            default="dynamic",
            help="'dynamic' (default: any size; traced and checked at the processor's size) or a fixed "
            "HEIGHTxWIDTH (or one side)",
        )
        p.add_argument(
            "--with-preprocessing",
            action="store_true",
            help="the input is uint8 RGB images (batch, height, width, 3) already resized to the "
            "model's size; rescale and normalize run inside the graph (input name `images`)",
        )
        p.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
        p.add_argument("--json", action="store_true", help="print the export report as JSON")
        p.set_defaults(run=run)
    onnx.add_argument("--opset", type=int, default=20, help="ONNX opset, 18-23 (default 20: native Gelu)")
    onnx.add_argument(
        "--quantize",
        choices=["dynamic", "static"],
        help="int8 quantization (ONNX Runtime). dynamic: the weights; prints top-1 agreement and logit drift "
        "against fp32 on real photos (or the --calibration images). static: weights and activations of the "
        "convolutions and matrix products (QDQ), the ranges calibrated on --calibration images; LayerNorm, softmax, "
        "GELU, the resize and the final classifier stay fp32. Bound the accuracy either costs with --verify-data",
    )
    onnx.add_argument(
        "--calibration",
        metavar="DIR",
        help="images for --quantize: a folder searched recursively (of a segmentation dataset, its training "
        "images, never its masks)",
    )
    onnx.add_argument(
        "--calibration-count",
        type=int,
        default=32,
        metavar="N",
        help="how many --calibration images, spread evenly over the sorted files (default 32)",
    )
    onnx.add_argument(
        "--postprocess",
        nargs="?",
        const="labels",
        choices=["labels", "probabilities"],
        help="segmentation: put pvtkit segment's post-processing in the graph. It takes a second input "
        "target_size (int64 [height, width], e.g. the original image's size, given at run time), resizes the "
        "logits to it (bilinear, align_corners=False) and outputs int64 `labels` (batch, height, width) (argmax; "
        "the default) or softmax `probabilities` (batch, classes, height, width). Checked by the share of pixels "
        "whose label equals PyTorch's",
    )
    onnx.add_argument(
        "--verify-data",
        metavar="DIR",
        help="segmentation: a dataset folder (any layout pvtkit reads; its validation split when it has one). "
        "The written file's mIoU and the PyTorch model's are measured on it and reported; the export fails, "
        "writing nothing, when the file loses more than --max-miou-drop points",
    )
    onnx.add_argument(
        "--max-miou-drop",
        type=float,
        default=0.5,
        metavar="POINTS",
        help="mIoU points (of 100) the file may lose against PyTorch on --verify-data (default 0.5)",
    )
    torch_.set_defaults(opset=None, quantize=None)
    saved = formats.add_parser(
        "saved-model",
        help="a TF SavedModel of a ViT or PVTv2, for TF Serving (Keras 3)",
        formatter_class=HelpFormatter,
        description="Export a ViT or PVTv2 checkpoint (transformers', timm's or the PVT authors' layout) as a TF "
        "SavedModel directory through pvtkit's Keras models: signature `serving_default` takes float pixel_values "
        "(batch, 3, H, W) at the model's size (config image_size; batch dynamic) and returns logits (or "
        "last_hidden_state, and ViT's pooler_output); "
        "--image-bytes adds `serve_image_bytes`, which takes encoded images (a string tensor, TF Serving's "
        '{"b64": ...}) and decodes, resizes and normalizes them in the graph with the checkpoint\'s processor '
        "settings. The SavedModel is reloaded and compared with the Keras model at two batch sizes (relative "
        "error at most 1e-4) unless --no-verify. Back end: KERAS_BACKEND (default tensorflow; jax exports through "
        'jax2tf). Needs `pip install "pvtkit[tensorflow]"`.',
    )
    add_model_arguments(saved, default=None)
    saved.add_argument("--output", "-o", required=True, help="directory to write (replaced atomically)")
    saved.add_argument(
        "--task",
        choices=["auto", "classification", "features"],
        default="auto",
        help="classification (logits) or features (last_hidden_state, ...); auto follows "
        "the checkpoint's architecture (default)",
    )
    saved.add_argument(
        "--image-bytes",
        action="store_true",
        help="add the serve_image_bytes signature (encoded images in, preprocessing in the graph)",
    )
    saved.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    saved.add_argument("--json", action="store_true", help="print the export report as JSON")
    saved.set_defaults(run=run)
