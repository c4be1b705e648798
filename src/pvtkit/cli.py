"""The `pvtkit` command line: thin wrappers that parse, call the library and print.

Each subcommand lives in `pvtkit.commands.<name>` and registers its own parser. Exit status: 0 on success,
1 when the work failed or some inputs failed (a clear one-line message per problem on stderr), 2 for usage errors
(a bad flag, no such model), 130 when interrupted. Errors never print a traceback unless `--debug` is given.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvtkit",
        description="PVTv2, SegFormer, GLPN and ViT from the command line: classify and segment images, estimate "
        "depth, extract features, inspect, fine-tune, evaluate, convert and export checkpoints (Hugging Face, "
        "timm, the original PVT and SegFormer releases, mmsegmentation). "
        "Run `pvtkit COMMAND --help` for each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded, inferred and converted")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .commands._common import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="pvtkit: %(message)s")
    # huggingface_hub prints through a handler of its own: without this, each of its lines would appear twice
    logging.getLogger("huggingface_hub").propagate = False
    try:
        return args.run(args)
    except UsageError as e:
        if args.debug:
            raise
        print(f"pvtkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `pvtkit eval ... | head`: the reader has stopped; say nothing, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's exit-time flush does not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the signal
    except (OSError, ValueError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"pvtkit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pvtkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
