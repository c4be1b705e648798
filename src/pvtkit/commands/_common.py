"""What the subcommands share: model and device options, loading a model for inference, errors, output."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Nothing here imports torch at module level: `pvtkit --help` and `pvtkit CMD --help` build every parser without it
# (torch loads in about a second; the commands import it when they run).
logger = logging.getLogger("pvtkit")

DEFAULT_MODEL = "OpenGVLab/pvt_v2_b0"
# `dtypes.names` of float32, bfloat16 and float16 (what --dtype accepts), spelled out so parsers need no torch
COMPUTE_DTYPE_NAMES = ("bf16", "fp16", "fp32", "half", "bfloat16", "float", "float16", "float32")
WORKERS_HELP = "(default: one fewer than the usable CPU cores, at most 4)"


def _with_default(action: argparse.Action) -> bool:
    """Whether help should add the action's default: a real value, not a flag's, and not stated already."""
    return (
        bool(action.help)
        and "(default" not in action.help
        and action.default not in (None, argparse.SUPPRESS)
        and not isinstance(action.default, bool)
        and (action.nargs != 0)
    )


class HelpFormatter(argparse.HelpFormatter):
    """Every command's help: `(default: X)` added to options that have a default and do not state it themselves
    (flags, which default to off, get none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        return help + " (default: %(default)s)" if _with_default(action) else help


class RawHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, keeping the description's and epilog's line breaks (examples, layouts)."""


class UsageError(Exception):
    """A mistake in how the command was called (no such model, a bad option value): exit status 2."""


@contextlib.contextmanager
def on_every_rank() -> Iterator[bool]:
    """The body of a command that torchrun may run in several processes; yields whether this is the main one.

    Every process fails the same way, so only the main process (rank 0) logs below ERROR and reports a failure;
    the others exit quietly with the same status (2 usage, 1 failure). The process group is shut down either way.
    """
    from ..distributed import shutdown_distributed

    main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        logging.getLogger("pvtkit").setLevel(logging.ERROR)
    try:
        yield main
    except UsageError:
        if main:
            raise
        raise SystemExit(2) from None
    except (OSError, ValueError, RuntimeError):
        if main:
            raise
        raise SystemExit(1) from None
    finally:
        shutdown_distributed()


def add_model_arguments(parser: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    """`--model` (Hub id, directory or weights file) and the Hub options."""
    parser.add_argument(
        "--model",
        "-m",
        default=default,
        required=default is None,
        help="Hub repo id, local directory or weights file (.safetensors/.pth/.bin), in transformers, timm or "
        "whai362/PVT layout",
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--offline", action="store_true", help="never touch the network; use the Hub cache only")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPE_NAMES, help="compute dtype")


def add_workers_argument(parser: Any, help: str) -> None:
    """`--num-workers`; None until `cli.main` fills in `distributed.default_workers()` (which needs torch)."""
    parser.add_argument("--num-workers", type=int, help=f"{help} {WORKERS_HELP}")


def add_compile_argument(parser: Any, help: str | None = None, batch_flag: str = "--batch-size") -> None:
    """`--compile`: the model through `pvtkit.optimize`; `batch_flag` is the command's option for the batch size."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help=help
        or "torch.compile the model where that pays (pvtkit.optimize): Inductor with frozen weights on the "
        f"CPU for PVTv2/SegFormer/GLPN batches of one image (use {batch_flag} 1; larger batches run faster on the "
        "eager paths and stay eager) and any ViT batch, every batch on CUDA; each new input shape compiles first "
        "(tens of seconds on a CPU); without a working compiler: a warning, then eager",
    )


def resolve_device(name: str) -> torch.device:
    """`devices.resolve_device`, its errors as usage errors naming --device."""
    from ..devices import DeviceError
    from ..devices import resolve_device as resolve

    try:
        return resolve(name)
    except DeviceError as e:
        raise UsageError(f"--device {e}") from e


def compute_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes --dtype offers (`COMPUTE_DTYPE_NAMES` spells them)."""
    import torch

    return torch.float32, torch.bfloat16, torch.float16


def resolve_dtype(name: str) -> torch.dtype:
    from ..dtypes import parse_dtype

    try:
        return parse_dtype(name, compute_dtypes())  # type: ignore[return-value]
    except ValueError as e:
        raise UsageError(f"--dtype: {e}") from e


def parse_size(text: str, option: str = "--image-size", dynamic: bool = False) -> tuple[int, int] | None:
    """`224` or `480x640` (height x width, also `480,640`) -> (h, w); with `dynamic`, the word `dynamic` -> None."""
    if dynamic and text == "dynamic":
        return None
    match = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip().lower())
    if not match or int(match[1]) < 1 or int(match[2] or match[1]) < 1:
        also = "'dynamic', " if dynamic else ""
        raise UsageError(f"{option} {text!r}: expected {also}a size such as 224 or 480x640 (height x width)")
    return int(match[1]), int(match[2] or match[1])


def hub_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"revision": getattr(args, "revision", None), "local_files_only": bool(getattr(args, "offline", False))}


def checkpoint_task(args: argparse.Namespace) -> str | None:
    """The registry task of `args.model`'s class (`auto.checkpoint_task`)."""
    from ..auto import checkpoint_task as task_of_checkpoint

    return task_of_checkpoint(args.model, **hub_kwargs(args))


def load_model(auto_class: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(args.model)`; a model that cannot be found or read is a `UsageError`."""
    try:
        return auto_class.from_pretrained(args.model, **hub_kwargs(args), **kwargs)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {args.model!r}: {e}") from e


def load_processor(args: argparse.Namespace, model: Any, use_fast: bool = False) -> Any:
    """The checkpoint's image processor; without a `preprocessor_config.json`, the family's defaults (logged)."""
    from ..auto import image_processor_for

    return image_processor_for(args.model, model, use_fast=use_fast, **hub_kwargs(args))


def report_failure(command: str, path: str, error: str) -> None:
    """One stderr line for an input that failed, naming it (unless the message already does)."""
    where = "" if path and path in error else f"{path}: " if path else ""
    print(f"pvtkit {command}: error: {where}{error}", file=sys.stderr)


@contextlib.contextmanager
def open_output(path: str | None, binary: bool = False) -> Iterator[IO[Any]]:
    """`path` written atomically (a temporary file renamed at the end), or stdout when `path` is None or '-'."""
    if path is None or path == "-":
        yield sys.stdout.buffer if binary else sys.stdout
        return
    from .._files import atomic_open

    with atomic_open(path, "wb" if binary else "w") as f:
        yield f


# --------------------------------------------------------------------------------------------- image inputs


def expand_inputs(inputs: list[str]) -> list[Path | Exception]:
    """Files and folders -> image paths in order; an input that cannot be expanded becomes its error, in place."""
    from ..data.folders import find_images

    items: list[Path | Exception] = []
    for item in inputs:
        try:
            items.extend(find_images([item]))
        except (OSError, ValueError) as e:
            items.append(e)
    return items


def input_name(item: Path | Exception, inputs: Sequence[str]) -> str:
    """How to name an item in messages: its path, or for an expansion error the user's input it is about."""
    if not isinstance(item, Exception):
        return str(item)
    text = str(item)
    return next((i for i in inputs if i in text), text.split(":")[0])


def output_stems(items: Sequence[Path | Exception], inputs: Sequence[str]) -> list[Path | None]:
    """Per image, the name its output files start with: its path inside the folder it was found in (so a folder's
    structure is kept), or its file name without the extension; a name two images would share gets `-2`, `-3`."""
    folders = [Path(i) for i in inputs if Path(i).is_dir()]
    stems: list[Path | None] = []
    seen: dict[Path, int] = {}
    for item in items:
        if isinstance(item, Exception):
            stems.append(None)
            continue
        folder = next((f for f in folders if item.is_relative_to(f)), None)
        stem = item.relative_to(folder).with_suffix("") if folder is not None else Path(item.stem)
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else stem.with_name(f"{stem.name}-{seen[stem]}"))
    return stems


def stream_sharded(
    ctx: Any, items: Sequence[Any], run: Callable[[list[Any]], Iterator[Any]], batch_size: int, desc: str
) -> Iterator[tuple[int, Any, str | None]]:
    """Run `run(shard)` (PipelineResults for this rank's share of `items`) on every rank; on the main rank, yield
    `(index into items, output, error)` for every item in input order, under a progress bar. Every rank takes part
    in every gathering round, even with nothing left, so uneven shards cannot hang torchrun."""
    from tqdm import tqdm

    from ..data.folders import shard

    mine = shard(items, ctx.rank, ctx.world_size)
    rounds = math.ceil(math.ceil(len(items) / ctx.world_size) / batch_size)
    results = run(mine)
    bar = tqdm(total=len(items), unit="img", disable=None if ctx.is_main else True, file=sys.stderr, desc=desc)
    try:
        for _ in range(rounds):
            chunk = [(r.index * ctx.world_size + ctx.rank, r.output, r.error) for r in islice(results, batch_size)]
            if not ctx.is_main:
                ctx.gather_objects(chunk)
                continue
            for index, output, error in sorted(sum(ctx.gather_objects(chunk), []), key=lambda t: t[0]):
                if error is not None:
                    bar.clear()
                yield index, output, error
                bar.update(1)
    finally:
        bar.close()


def summarize_failures(command: str, failed: int, total: int, done: str) -> int:
    """The closing stderr line when some inputs failed; the exit status (1 if any failed)."""
    if failed:
        print(f"pvtkit {command}: {failed} of {total} input(s) failed; the others were {done}", file=sys.stderr)
    return 1 if failed else 0


class ResultFiles:
    """What `segment`, `depth` and `detect` share: on the rank that computed an image's raw answer, write its files under
    `root` and turn the answer into its (small) record, which is all that travels to rank 0; a failure to write is
    that input's error. Subclasses define `write(index, output) -> record`."""

    def __init__(self, root: str | os.PathLike, items: Sequence[Any], inputs: Sequence[str]) -> None:
        self.root, self.items, self.stems = Path(root), items, output_stems(items, inputs)

    def __call__(self, result: Any, index: int) -> Any:
        if result.ok:
            try:
                output = result.output
                raw = {k: v.numpy() for k, v in output.items()} if isinstance(output, dict) else output.numpy()
                result.output = self.write(index, raw)
            except (OSError, ValueError) as e:
                result.output, result.error = None, f"cannot write the outputs: {e}"
        return result

    def stem(self, index: int) -> Path:
        """Where image `index`'s files go, without a suffix (its folder created)."""
        stem = self.root / self.stems[index]  # type: ignore[operator]
        stem.parent.mkdir(parents=True, exist_ok=True)
        return stem

    def write(self, index: int, output: Any) -> dict[str, Any]:
        raise NotImplementedError


def write_all(
    ctx: Any,
    args: argparse.Namespace,
    command: str,
    items: Sequence[Any],
    pipe: Any,
    files: ResultFiles,
    write_record: Callable[..., None],
    done: str,
) -> int:
    """Run a dense pipeline over `items` on every rank, write each image's files where it was computed and the
    records (stdout or `--records`) on rank 0, in input order; the exit status."""

    def results(mine: list[Any]) -> Iterator[Any]:
        for result in pipe.run(mine, formatted=False):
            yield files(result, result.index * ctx.world_size + ctx.rank)

    with open_output(args.records if ctx.is_main else os.devnull) as stream:
        outcomes = stream_sharded(ctx, items, results, args.batch_size, command)
        failed = write_records(stream, args, command, items, outcomes, write_record)
    return summarize_failures(command, failed, len(items), done) if ctx.is_main else 0


def write_records(
    stream: Any,
    args: argparse.Namespace,
    command: str,
    items: Sequence[Any],
    outcomes: Iterable[tuple[int, dict[str, Any] | None, str | None]],
    write_record: Callable[..., None],
) -> int:
    """Each `(index, record, error)` written to `stream` as `--format` says, each failure also reported on stderr;
    how many failed."""
    failed = 0
    for index, record, error in outcomes:
        path = input_name(items[index], args.inputs)
        if error is not None:
            failed += 1
            report_failure(command, path, error)
        write_record(stream, args.format, path, record, error)
    return failed


@contextlib.contextmanager
def image_job(args: argparse.Namespace, task: str, **options: Any) -> Iterator[tuple[Any, list[Any], Any]]:
    """What `classify`, `segment` and `depth` share: --batch-size checked, the device and dtype, torchrun's process
    group (shut down at the end), this process's share of the CPU threads, the inputs expanded, and the `task`
    pipeline loaded (a model that cannot be loaded is a usage error). Yields (context, items, pipeline)."""
    from ..distributed import init_distributed, share_cpu_threads, shutdown_distributed
    from ..pipelines import describe_error, pipeline

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    ctx = init_distributed(device)
    try:
        share_cpu_threads(ctx, device)
        items = expand_inputs(args.inputs)
        try:
            pipe = pipeline(
                task,
                model=args.model,
                device=device,
                dtype=dtype,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                revision=args.revision,
                local_files_only=args.offline,
                compile=args.compile,
                **options,
            )
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load model {args.model!r}: {describe_error(e)}") from e
        yield ctx, items, pipe
    finally:
        shutdown_distributed()


def add_dense_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `segment` and `depth` share after their own: batch, device, records and decoding workers."""
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (slide mode: windows)")
    add_device_arguments(parser)
    add_compile_argument(parser)
    parser.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="table for humans; json = JSON Lines, one record per input",
    )
    parser.add_argument("--records", help="write the records here (atomically) instead of stdout")
    add_workers_argument(parser, "image-decoding worker processes (0: decode in the main process)")


def output_folder(args: argparse.Namespace) -> Path:
    """--output as a folder that may not exist yet; a file there is a usage error."""
    path = Path(args.output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {args.output!r} exists and is not a directory")
    return path
