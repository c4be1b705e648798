"""The `pvtkit` command line: thin wrappers that parse, call the library and print.

Exit status: 0 on success, 1 when the work failed (a clear one-line message on stderr), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _convert(args: argparse.Namespace) -> int:
    from .auto import convert_checkpoint

    model = convert_checkpoint(
        args.source, args.destination, variant=args.variant, dtype=args.dtype,
        revision=args.revision, local_files_only=args.offline,
    )  # fmt: skip
    print(f"wrote {type(model).__name__} ({model.num_parameters() / 1e6:.1f}M parameters, {model.dtype}) "
          f"to {args.destination}")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvtkit",
        description="PVTv2 and ViT: convert checkpoints between timm, the original PVT release and Hugging Face.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is inferred and converted")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = sub.add_parser(
        "convert",
        help="any supported checkpoint -> a transformers-format directory",
        description="Convert a PVTv2 or ViT checkpoint (transformers, timm or whai362/PVT layout; a directory, a "
        ".safetensors/.pth/.bin/.pt file or a Hub repo id) into a directory with config.json, model.safetensors "
        "and preprocessor_config.json that transformers and pvtkit load. Without --variant and without a "
        "config.json the architecture is inferred from the tensors.",
    )
    convert.add_argument("source", help="checkpoint: directory, weights file or Hub repo id")
    convert.add_argument("destination", help="output directory (replaced atomically)")
    convert.add_argument("--variant", help="published architecture to use, e.g. b2, b2_linear, base_patch16_224")
    convert.add_argument("--dtype", choices=["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"],
                         help="cast the weights before saving (default: keep)")  # fmt: skip
    convert.add_argument("--revision", help="Hub branch, tag or commit")
    convert.add_argument("--offline", action="store_true", help="use the Hub cache only")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="pvtkit: %(message)s")
    try:
        return args.run(args)
    except (FileNotFoundError, PermissionError, ValueError, OSError) as e:
        print(f"pvtkit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pvtkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
