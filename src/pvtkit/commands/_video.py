"""Video inputs of `pvtkit segment` and `pvtkit depth`: the shared option and the loop that takes images and videos
in input order (`pvtkit.video` does the work)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._common import ResultFiles, UsageError, open_output, summarize_failures, write_records

# What `--help` says about video inputs (both commands).
VIDEO_HELP = (
    "A video file (mp4, mkv, webm, avi, mov, ...; decoded with PyAV, the extra pvtkit[video]) is processed frame by "
    "frame in batches of --batch-size frames and gives a video of the same frame count, rate and size (H.264 MP4) "
    "plus a CSV of per-frame numbers; --temporal-ema smooths the frames over time."
)


def add_video_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--temporal-ema ALPHA`; `what` names what is averaged."""
    parser.add_argument(
        "--temporal-ema",
        type=float,
        metavar="ALPHA",
        help=f"video inputs: smooth {what} over frames with an exponential moving average, ALPHA (0 < ALPHA <= 1) "
        "being the new frame's weight: state = ALPHA * frame + (1 - ALPHA) * state (1: no smoothing; default: off)",
    )


def check_video_arguments(args: argparse.Namespace) -> None:
    alpha = args.temporal_ema
    if alpha is not None and not 0.0 < alpha <= 1.0:
        raise UsageError(f"--temporal-ema must be in (0, 1] (the new frame's weight), got {alpha}")


def has_videos(items: Sequence[Any]) -> bool:
    from ..video import is_video_file

    return any(is_video_file(item) for item in items)


def write_all_media(
    ctx: Any,
    args: argparse.Namespace,
    command: str,
    items: Sequence[Any],
    pipe: Any,
    files: ResultFiles,
    video: Callable[[int], dict[str, Any]],
    write_record: Callable[..., None],
    done: str,
) -> int:
    """`write_all` for inputs that include videos, in one process: runs of images go through `pipe` and `files`,
    each video through `video(index) -> record`; the records go to stdout or --records in input order. A video
    that cannot be read or written is reported and the rest are still processed. The exit status."""
    if ctx.world_size > 1:
        raise UsageError(f"video inputs run in one process; run `pvtkit {command}` without torchrun")
    try:
        from ..video import require_av

        require_av()
    except ImportError as e:
        raise UsageError(str(e)) from e
    with open_output(args.records) as stream:
        failed = write_records(stream, args, command, items, _results(items, pipe, files, video), write_record)
    return summarize_failures(command, failed, len(items), done)


def _results(
    items: Sequence[Any], pipe: Any, files: ResultFiles, video: Callable[[int], dict[str, Any]]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(index, record, error) per item in order: consecutive images batched through the pipeline, videos one by one."""
    from ..pipelines import describe_error
    from ..video import is_video_file

    index = 0
    while index < len(items):
        if is_video_file(items[index]):
            try:
                yield index, video(index), None
            except (OSError, ValueError) as e:
                yield index, None, describe_error(e)
            index += 1
            continue
        end = index
        while end < len(items) and not is_video_file(items[end]):
            end += 1
        for result in pipe.run(list(items[index:end]), formatted=False):
            result = files(result, index + result.index)
            yield index + result.index, result.output, result.error
        index = end
