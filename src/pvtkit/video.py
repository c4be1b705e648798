"""Video for the dense pipelines: decode a clip with PyAV, segment it or estimate its depth in batches of frames,
optionally smoothed over time, and write an overlay video plus per-frame numbers.

```python
segmenter = pvtkit.pipeline("image-segmentation", model="nvidia/segformer-b0-finetuned-ade-512-512")
record = segment_video(segmenter, "street.mp4", Path("out/street"), temporal_ema=0.5)
# out/street_overlay.mp4 (the classes' colours over every frame), out/street_areas.csv (per frame and class)
```

PyAV (the extra `pvtkit[video]`) is imported only when a video is read or written: it brings FFmpeg's demuxers,
decoders and encoders. Frames are decoded in presentation order, turned upright when the stream carries a rotation
(phones' portrait clips), and converted to RGB. The output is an MP4 with the input's frame count, frame rate and
(upright) size, one frame every 1/fps seconds, no audio: H.264 (libx264, CRF 18, 4:2:0 chroma, so it plays
everywhere; 4:4:4 when a side is odd, which 4:2:0 cannot hold) when PyAV's FFmpeg has libx264, as the PyPI wheels
do, otherwise MPEG-4 Part 2 at a high bit rate.

Temporal smoothing (`temporal_ema=ALPHA`, 0 < ALPHA <= 1) is an exponential moving average over frames, ALPHA
being the weight of the new frame: `state = ALPHA * new + (1 - ALPHA) * state`, the first frame starting the state;
1 is no smoothing. Segmentation averages the per-pixel class probabilities (softmax of the logits resized to the
frame) and takes the argmax of the average; depth averages the depth maps.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image

from ._files import atomic_files, atomic_open

if TYPE_CHECKING:
    import torch

# Containers recognised as video by extension (GIF stays an image: `load_image` reads its first frame).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp", ".ogv"}
)
CRF = 18  # libx264's constant rate factor: visually lossless for overlays, small files
PROBABILITY_BYTES = 512 * 2**20  # full-size class probabilities held at once for --temporal-ema
INSTALL_HINT = 'reading and writing video needs PyAV: pip install "pvtkit[video]"'


def is_video_file(path: Any) -> bool:
    """Whether `path` (a str or path; anything else is not) names a video container, by its extension."""
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in VIDEO_EXTENSIONS


def require_av() -> Any:
    """The `av` module, or an ImportError saying which extra to install."""
    try:
        import av
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return av


def video_codec() -> str:
    """The encoder the overlay videos use: libx264 when PyAV's FFmpeg has it, else FFmpeg's own mpeg4."""
    return "libx264" if "libx264" in require_av().codecs_available else "mpeg4"


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    """What a video's first stream says about itself.

    Attributes:
        path: The file.
        frames: Frame count from the container's header; 0 when it does not say (then count while decoding).
        fps: Average frame rate (frames per second) as an exact fraction.
        height, width: Size of the frames as shown, after `rotation`.
        rotation: Degrees counterclockwise the frames are turned to be upright (0, 90, 180 or -90).
    """

    path: str
    frames: int
    fps: Fraction
    height: int
    width: int
    rotation: int


@dataclass
class Frame:
    """One decoded frame: its index, its time in seconds from the stream's start, and the upright RGB image."""

    index: int
    time: float
    image: PIL.Image.Image


_TRANSPOSE = {
    90: PIL.Image.Transpose.ROTATE_90,
    180: PIL.Image.Transpose.ROTATE_180,
    -180: PIL.Image.Transpose.ROTATE_180,
    -90: PIL.Image.Transpose.ROTATE_270,
    270: PIL.Image.Transpose.ROTATE_270,
}


def _upright(image: PIL.Image.Image, rotation: int) -> PIL.Image.Image:
    """`image` turned `rotation` degrees counterclockwise (multiples of 90 exactly, others by resampling)."""
    if not rotation:
        return image
    if rotation in _TRANSPOSE:
        return image.transpose(_TRANSPOSE[rotation])
    return image.rotate(rotation, expand=True, resample=PIL.Image.Resampling.BILINEAR)


class VideoReader:
    """A video file's frames, decoded with PyAV; errors name the file.

    Use as a context manager; `info` describes the stream, iterating yields `Frame`s in presentation order.

    Raises:
        ValueError: The file is not a video PyAV can read (no video stream, corrupt or truncated data).
        FileNotFoundError: There is no such file.
    """

    def __init__(self, path: str | Path) -> None:
        av = require_av()
        self.path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self.container = av.open(self.path, "r")
        except av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: cannot read the video: {_ffmpeg_message(e)}") from e
        try:
            if not self.container.streams.video:
                raise ValueError(f"{self.path}: no video stream (streams: {len(self.container.streams)})")
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
            # The first frame is decoded now: its side data holds the rotation, so the upright size is known
            # before the outputs are opened.
            self._decoded = self._decode()
            self._first = next(self._decoded, None)
            if self._first is None:
                raise ValueError(f"{self.path}: the video stream holds no decodable frames")
            self.info = self._describe(self._first)
        except BaseException:
            self.container.close()
            raise

    def _decode(self) -> Iterator[Any]:
        av = require_av()
        index = 0
        try:
            for frame in self.container.decode(self.stream):
                yield frame
                index += 1
        except av.error.FFmpegError as e:
            raise ValueError(f"{self.path}: cannot decode frame {index}: {_ffmpeg_message(e)}") from e

    def _describe(self, first: Any) -> VideoInfo:
        stream = self.stream
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or fps <= 0:
            raise ValueError(f"{self.path}: the video stream has no frame rate")
        rotation = int(round(first.rotation or 0))
        height, width = first.height, first.width
        if rotation % 180:
            height, width = width, height
        return VideoInfo(self.path, int(stream.frames or 0), Fraction(fps), height, width, rotation)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def __iter__(self) -> Iterator[Frame]:
        """The frames in presentation order, once (the reader is a stream)."""
        if self._first is None:
            raise RuntimeError(f"{self.path}: the frames were already read")
        first, self._first = self._first, None
        start = self.stream.start_time or 0
        for index, frame in enumerate(itertools.chain([first], self._decoded)):
            if frame.pts is not None and frame.time_base is not None:
                time = float((frame.pts - start) * frame.time_base)
            else:
                time = float(index / self.info.fps)
            yield Frame(index, round(time, 6), _upright(frame.to_image(), int(round(frame.rotation or 0))))


def _ffmpeg_message(error: BaseException) -> str:
    """FFmpeg's own words (e.g. 'Invalid data found when processing input'), without the file name PyAV adds."""
    return getattr(error, "strerror", None) or str(error)


def frame_batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """`frames` in lists of `size` (the last one shorter)."""
    iterator = iter(frames)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# --------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def video_writer(path: str | Path, fps: Fraction, height: int, width: int) -> Iterator[Any]:
    """An MP4 at `path` of `fps` frames per second; yields `write(image)` taking RGB PIL images of (`width`,
    `height`). Written atomically: the file appears complete when the block ends, and not at all if it raises."""
    av = require_av()
    path = Path(path)
    codec = video_codec()
    odd = height % 2 or width % 2
    if odd and codec != "libx264":
        raise ValueError(f"cannot write {path}: {codec} needs an even frame size, got {width}x{height}")
    with atomic_files(path) as staging:
        container = av.open(str(staging / path.name), "w", format="mp4")
        try:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv444p" if odd else "yuv420p"
            stream.codec_context.time_base = 1 / fps
            if codec == "libx264":
                stream.options = {"crf": str(CRF)}
            else:
                stream.bit_rate = max(2_000_000, int(width * height * float(fps) * 0.5))
            count = 0

            def write(image: PIL.Image.Image) -> None:
                nonlocal count
                if image.size != (width, height):
                    raise ValueError(
                        f"{path}: frame {count} is {image.size[0]}x{image.size[1]}, expected {width}x{height}"
                    )
                frame = av.VideoFrame.from_image(image.convert("RGB"))
                frame.pts = count
                count += 1
                for packet in stream.encode(frame):
                    container.mux(packet)

            yield write
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        except av.error.FFmpegError as e:
            raise ValueError(f"cannot write {path} ({codec}): {_ffmpeg_message(e)}") from e
        finally:
            container.close()


# --------------------------------------------------------------------------------------------- smoothing


class TemporalEMA:
    """Exponential moving average over frames: `state = alpha * new + (1 - alpha) * state`, `alpha` being the weight
    of the new frame; the first frame (or one of a new shape) starts the state. Works on torch tensors in place."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"the temporal EMA weight must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.state: torch.Tensor | None = None

    def __call__(self, value: torch.Tensor) -> torch.Tensor:
        if self.state is None or self.state.shape != value.shape:
            self.state = value.clone()
        else:
            self.state.mul_(1.0 - self.alpha).add_(value, alpha=self.alpha)
        return self.state


# --------------------------------------------------------------------------------------------- inference


def _pixel_batches(pipe: Any, images: list[PIL.Image.Image]) -> Iterator[tuple[Any, list[tuple[int, int]]]]:
    """The pipeline's own preprocessing of one batch of frames: (pixels, sizes) groups, in order."""
    for _, pixels, errors, sizes in pipe.batches(images, batch_size=len(images), num_workers=0):
        if errors:
            raise ValueError(f"frame {errors[0][0]}: {errors[0][1]}")
        if pixels is not None:
            yield pixels, sizes


def segment_frames(
    pipe: Any, images: Iterable[PIL.Image.Image], temporal_ema: float | None = None
) -> Iterator[np.ndarray]:
    """Per frame, in order, its `(H, W)` int64 class map from a segmentation pipeline, `pipe.batch_size` frames per
    forward pass. Without `temporal_ema` the maps are the pipeline's own (`forward`); with it, the class of the
    exponential moving average of the per-pixel class probabilities at the frame's size (`pipe.probabilities`,
    test-time augmentation included): the argmax, or for a one-channel (binary) model 1 where it is > 0.5."""
    import torch

    ema = TemporalEMA(temporal_ema) if temporal_ema is not None else None
    for batch in frame_batches(images, pipe.batch_size):
        for pixels, sizes in _pixel_batches(pipe, batch):
            if ema is None:
                maps = pipe.forward(pixels, sizes)
            else:
                # Full-size probabilities are large (150 classes of a 1080p frame: 1.2 GB), so the batch goes to
                # `probabilities` in chunks that hold at most PROBABILITY_BYTES of them.
                per_frame = len(pipe.labels) * sizes[0][0] * sizes[0][1] * 4
                step = max(1, PROBABILITY_BYTES // max(per_frame, 1))
                maps = []
                with torch.inference_mode():  # the state is updated in place: inference tensors throughout
                    for start in range(0, len(pixels), step):
                        chunk = pipe.probabilities(pixels[start : start + step], sizes[start : start + step])
                        for probabilities in chunk:
                            state = ema(probabilities[0])  # (K, H, W)
                            maps.append(state.argmax(0) if state.shape[0] > 1 else (state[0] > 0.5).long())
                        del chunk
            yield from (m.cpu().numpy() for m in maps)


def depth_frames(
    pipe: Any, images: Iterable[PIL.Image.Image], temporal_ema: float | None = None
) -> Iterator[np.ndarray]:
    """Per frame, in order, its `(H, W)` float32 depth from a depth pipeline, `pipe.batch_size` frames per forward
    pass; with `temporal_ema`, the exponential moving average of the depth maps."""
    import torch

    ema = TemporalEMA(temporal_ema) if temporal_ema is not None else None
    for batch in frame_batches(images, pipe.batch_size):
        for pixels, sizes in _pixel_batches(pipe, batch):
            depths = pipe.forward(pixels, sizes)
            if ema is not None:
                with torch.inference_mode():
                    depths = [ema(d).clone() for d in depths]
            yield from (d.cpu().numpy() for d in depths)


def _progress(info: VideoInfo) -> Any:
    from tqdm import tqdm

    return tqdm(total=info.frames or None, unit="frame", desc=Path(info.path).name, file=sys.stderr, disable=None)


def _tee(frames: Iterable[Frame], keep: list[Frame]) -> Iterator[PIL.Image.Image]:
    """The frames' images, each frame also appended to `keep` (the writer needs its image and time later)."""
    for frame in frames:
        keep.append(frame)
        yield frame.image


def _video_record(info: VideoInfo, frames: int) -> dict[str, Any]:
    return {
        "path": info.path,
        "size": [info.height, info.width],
        "frames": frames,
        "fps": round(float(info.fps), 6),
    }


def segment_video(
    pipe: Any,
    path: str | Path,
    stem: Path,
    temporal_ema: float | None = None,
    overlay: bool = True,
    alpha: float = 0.5,
) -> dict[str, Any]:
    """Segment every frame of the video at `path`; write `{stem}_overlay.mp4` (the classes' colours blended over the
    frames with weight `alpha`; unless `overlay` is False) and `{stem}_areas.csv` (per frame and class present:
    frame, time in seconds, class id, label, pixels, fraction of the frame), both atomically. Returns the record:
    path, size, frames, fps, the files, and `classes`, each class's area summed over all frames."""
    from .pipelines import class_areas
    from .visualize import label_overlay, palette

    labels = pipe.labels
    colours = palette(max(len(labels), 1))
    areas_path, video_path = stem.with_name(stem.name + "_areas.csv"), stem.with_name(stem.name + "_overlay.mp4")
    totals = np.zeros(len(labels), dtype=np.int64)
    count = 0
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(VideoReader(path))
        info = reader.info
        table = csv.writer(stack.enter_context(atomic_open(areas_path)))
        table.writerow(["frame", "time", "class_id", "label", "pixels", "fraction"])
        write = stack.enter_context(video_writer(video_path, info.fps, info.height, info.width)) if overlay else None
        bar = stack.enter_context(_progress(info))
        pending: list[Frame] = []
        for classes in segment_frames(pipe, _tee(reader, pending), temporal_ema):
            frame = pending.pop(0)
            for area in class_areas(classes, labels):
                table.writerow([frame.index, frame.time, area["id"], area["label"], area["pixels"], area["fraction"]])
            totals += np.bincount(classes.ravel(), minlength=len(labels))[: len(labels)]
            if write is not None:
                write(label_overlay(frame.image, classes, colours, alpha))
            count += 1
            bar.update(1)
    record = _video_record(info, count)
    record.update({"temporal_ema": temporal_ema, "areas_csv": str(areas_path)})
    if overlay:
        record["video"] = str(video_path)
    record["classes"] = _total_areas(totals, labels)
    return record


def _total_areas(totals: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """`class_areas`'s records from pixel counts per class summed over frames: the classes present, largest first."""
    total = int(totals.sum())
    order = [int(k) for k in np.argsort(-totals, kind="stable") if totals[k] > 0]
    return [
        {"id": k, "label": labels[k], "pixels": int(totals[k]), "fraction": round(int(totals[k]) / total, 6)}
        for k in order
    ]


def depth_video(
    pipe: Any, path: str | Path, stem: Path, temporal_ema: float | None = None, color: bool = True
) -> dict[str, Any]:
    """Estimate the depth of every frame of the video at `path`; write `{stem}_depth.mp4` (the depth coloured dark
    near to bright far, on one scale for the whole clip: the first frame's minimum to maximum, later frames clipped
    to it, so colours do not flicker; unless `color` is False) and `{stem}_depth_stats.csv` (per frame: frame, time
    in seconds, min, median, max), both atomically. Returns the record: path, size, frames, fps, the files, the
    colour scale and the minimum, maximum and mean depth over all frames."""
    from .visualize import colormap

    stats_path, video_path = stem.with_name(stem.name + "_depth_stats.csv"), stem.with_name(stem.name + "_depth.mp4")
    low = high = None
    overall_min, overall_max, total, count = np.inf, -np.inf, 0.0, 0
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(VideoReader(path))
        info = reader.info
        table = csv.writer(stack.enter_context(atomic_open(stats_path)))
        table.writerow(["frame", "time", "min", "median", "max"])
        write = stack.enter_context(video_writer(video_path, info.fps, info.height, info.width)) if color else None
        bar = stack.enter_context(_progress(info))
        pending: list[Frame] = []
        for depth in depth_frames(pipe, _tee(reader, pending), temporal_ema):
            frame = pending.pop(0)
            lo, mid, hi = (float(v) for v in np.percentile(depth, [0, 50, 100]))
            table.writerow([frame.index, frame.time, round(lo, 6), round(mid, 6), round(hi, 6)])
            overall_min, overall_max = min(overall_min, lo), max(overall_max, hi)
            total += float(depth.mean(dtype=np.float64))
            if write is not None:
                if low is None:
                    low, high = lo, hi
                span = high - low if high > low else 1.0
                write(PIL.Image.fromarray(colormap((depth - low) / span)))
            count += 1
            bar.update(1)
    record = _video_record(info, count)
    record.update({"temporal_ema": temporal_ema, "stats_csv": str(stats_path)})
    if color:
        record.update({"video": str(video_path), "color_range": [round(low, 6), round(high, 6)]})
    record.update({"min": round(overall_min, 6), "max": round(overall_max, 6), "mean": round(total / max(count, 1), 6)})
    return record
