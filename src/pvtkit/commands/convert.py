"""`pvtkit convert`: any supported checkpoint -> a transformers-format directory."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..auto import convert_checkpoint

    model = convert_checkpoint(
        args.source,
        args.destination,
        variant=args.variant,
        dtype=args.dtype,
        revision=args.revision,
        local_files_only=args.offline,
    )
    print(
        f"wrote {type(model).__name__} ({model.num_parameters() / 1e6:.1f}M parameters, {model.dtype}) "
        f"to {args.destination}"
    )
    return 0


def register(sub: Any) -> None:
    from ._common import HelpFormatter

    parser = sub.add_parser(
        "convert",
        help="any supported checkpoint -> a transformers-format directory",
        description="Convert a PVTv2, SegFormer, GLPN or ViT checkpoint (transformers, timm, whai362/PVT, NVlabs "
        "SegFormer or mmsegmentation layout; a directory, a "
        ".safetensors/.pth/.bin/.pt file or a Hub repo id) into a directory with config.json, model.safetensors "
        "and preprocessor_config.json that transformers and pvtkit load. Without --variant and without a "
        "config.json the architecture is inferred from the tensors.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("source", help="checkpoint: directory, weights file or Hub repo id")
    parser.add_argument("destination", help="output directory (replaced atomically)")
    parser.add_argument(
        "--variant", help="published architecture to use, e.g. b2, b2_linear, base_patch16_224, mit_b2, glpn_kitti"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"],
        help="cast the weights before saving (default: keep)",
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--offline", action="store_true", help="use the Hub cache only")
    parser.set_defaults(run=run)
