"""`pvtkit features`: multi-scale feature maps or pooled embeddings of images, saved as safetensors."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import (
    HelpFormatter,
    UsageError,
    add_compile_argument,
    add_device_arguments,
    add_model_arguments,
    add_workers_argument,
    expand_inputs,
    report_failure,
    resolve_device,
    resolve_dtype,
)


def parse_stages(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        stages = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise UsageError(f"--stages {text!r}: expected stage numbers such as 1,2,3,4") from e
    if not stages or any(s not in (1, 2, 3, 4) for s in stages):
        raise UsageError(f"--stages {text!r}: stages are numbered 1 to 4")
    return sorted(set(stages))


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from .._files import atomic_write
    from ..pipelines import describe_error, pipeline

    stages = parse_stages(args.stages)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if not args.output.endswith(".safetensors"):
        raise UsageError(f"--output {args.output!r}: expected a .safetensors file name")
    items = expand_inputs(args.inputs)
    try:
        extractor = pipeline(
            "image-feature-extraction",
            model=args.model,
            device=device,
            dtype=dtype,
            pooled=args.pooled,
            stages=stages,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            revision=args.revision,
            local_files_only=args.offline,
            compile=args.compile,
        )
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {args.model!r}: {describe_error(e)}") from e
    features: dict[str, list[torch.Tensor]] = {}
    paths: list[str] = []
    failed = 0
    for result in tqdm(extractor.run(items), total=len(items), unit="img", desc="features", disable=None):
        item = items[result.index]
        if not result.ok:
            failed += 1
            report_failure("features", str(item) if not isinstance(item, Exception) else "", result.error)
            continue
        paths.append(str(item))
        for name, tensor in result.output.items():
            features.setdefault(name, []).append(tensor)
    if not paths:
        print(f"pvtkit features: none of the {len(items)} input(s) could be read; nothing written", file=sys.stderr)
        return 1
    tensors = {name: torch.stack(ts).contiguous() for name, ts in features.items()}
    metadata = {
        "paths": json.dumps(paths, ensure_ascii=False),
        "model": str(args.model),
        "pooled": str(bool(args.pooled)).lower(),
    }
    atomic_write(args.output, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
    print(f"wrote {args.output}: {shapes} for {len(paths)} image(s)", file=sys.stderr)
    if failed:
        print(f"pvtkit features: {failed} of {len(items)} input(s) failed; the others were written", file=sys.stderr)
    return 1 if failed else 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "features",
        help="backbone feature maps or pooled embeddings -> .safetensors",
        description="Run images through a PVTv2 backbone (or a ViT encoder) and save the features in one "
        ".safetensors file: for PVTv2 one tensor per stage (`stage1`..`stage4`, N x C x H x W at strides 4, 8, "
        "16, 32; with --pooled their spatial means, N x C); for ViT `last_hidden_state` (N x tokens x D) or, "
        "with --pooled, the [CLS] token (`pooled`, N x D). Row i belongs to the i-th path in the file's "
        "metadata `paths` (JSON); inputs that cannot be read are reported and left out.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    add_model_arguments(parser)
    parser.add_argument("--output", "-o", required=True, help="the .safetensors file to write (atomically)")
    parser.add_argument("--stages", help="PVTv2 stages to keep, e.g. 1,2,3,4 (default: all four)")
    parser.add_argument("--pooled", action="store_true", help="spatially pooled embeddings instead of maps")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_device_arguments(parser)
    add_compile_argument(parser)
    add_workers_argument(parser, "image-decoding processes")
    parser.set_defaults(run=run)
