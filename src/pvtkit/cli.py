"""The `pvtkit` command line: thin wrappers that parse, call the library and print.

Each subcommand lives in `pvtkit.commands.<name>` and registers its own parser. Exit status: 0 on success,
1 when the work failed or some inputs failed (a clear one-line message per problem on stderr), 2 for usage errors
(a bad flag, no such model), 130 when interrupted. Errors never print a traceback unless `--debug` is given.

Building the parser imports no torch (`pvtkit --help` and `pvtkit CMD --help` answer at once); a command imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .commands._common import HelpFormatter, UsageError


def version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("pvtkit")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def configure_process(argv: Sequence[str]) -> None:
    """What the `pvtkit` command sets in its own process's environment, before torch loads (the library sets none).

    PyTorch's transparent-huge-page backing of large CPU tensors (one page fault per 2 MB instead of one per 4 kB;
    on some machines, VMs especially, a large share of a forward or training step; README, "Speed"). And for
    `serve`, passive OpenMP waiting: `serve` decodes images in threads beside the model's OpenMP threads, and
    spinning idle OpenMP threads take the cores the decoding needs (16 clients: 19 img/s spinning, 32 passive;
    README, "Serving"). Both are read once, when torch loads, so once it has they would change nothing; a value
    the user set is kept.
    """
    if "torch" in sys.modules:
        return
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if next((a for a in argv if not a.startswith("-")), None) == "serve":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvtkit",
        description="PVTv2, SegFormer, GLPN, Deformable DETR and ViT from the command line: classify and segment "
        "images, estimate depth, detect objects, extract features, inspect, fine-tune, evaluate, convert and export checkpoints (Hugging Face, "
        "timm, the original PVT and SegFormer releases, mmsegmentation). "
        "Run `pvtkit COMMAND --help` for each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pvtkit {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded, inferred and converted")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` (default: this process's arguments, when it is the `pvtkit` command or `python -m
    pvtkit`, which then also sets the environment of `configure_process`); the exit status."""
    if argv is None:
        configure_process(sys.argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "num_workers", 0) is None:  # --num-workers left out: the default needs torch, so it is set here
        from .distributed import default_workers

        args.num_workers = default_workers()
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
