"""`pvtkit segment VIDEO` and `pvtkit depth VIDEO`: a clip encoded here with PyAV (handwritten digits moving across
a 64x48 frame, 12 frames at 12 fps) goes through tiny random models; the outputs are decoded again with PyAV and
checked against the pipelines run on the decoded input frames and against an EMA computed here with NumPy."""

from __future__ import annotations

import csv
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.special
import skimage.transform
import torch

import pvtkit
from pvtkit.cli import main
from pvtkit.pipelines import class_areas
from pvtkit.visualize import colormap, palette

from helpers import CLASSES, digit_canvases, save_tiny_segformer

av = pytest.importorskip("av")

FPS, FRAMES, HEIGHT, WIDTH = Fraction(12), 12, 48, 64
ENCODER = dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4])


def encode(path: Path, frames: list[np.ndarray], fps: Fraction = FPS, rotation: int = 0) -> Path:
    """`frames` (H, W, 3 uint8) as an H.264 MP4, near-lossless (CRF 10)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "10"}
        if rotation:
            stream.set_display_rotation(rotation)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode(path: Path) -> tuple[list[PIL.Image.Image], Fraction, list[float]]:
    """Every frame of `path` as RGB images, the stream's average rate and the frames' times."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.to_image(), float(f.time)) for f in container.decode(stream)]
        return [f for f, _ in frames], stream.average_rate, [t for _, t in frames]


def moving_digits() -> list[np.ndarray]:
    """Two digit canvases sliding across a dark 64x48 frame, 2 pixels per frame, in colour."""
    a, b = (np.asarray(image) for image, _ in digit_canvases(2, size=32, per_canvas=2, seed=7))
    frames = []
    for i in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 12, dtype=np.uint8)
        frame[8:40, 2 * i : 2 * i + 32, 0] = a
        frame[8:40, 2 * i : 2 * i + 32, 1] = a // 2
        frame[16:48, 30 - i : 62 - i, 2] = b
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return encode(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_digits())


@pytest.fixture(scope="module")
def input_frames(clip) -> list[PIL.Image.Image]:
    frames, rate, _ = decode(clip)
    assert len(frames) == FRAMES and rate == FPS
    return frames


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory) -> Path:
    return save_tiny_segformer(tmp_path_factory.mktemp("seg") / "model")


@pytest.fixture(scope="module")
def glpn_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glpn") / "model"
    torch.manual_seed(4)
    pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**ENCODER, decoder_hidden_size=16)).save_pretrained(path)
    pvtkit.GLPNImageProcessor().save_pretrained(path)
    return path


def run(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main([*args, "--format", "json", "--num-workers", "0"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def areas_by_frame(path: Path) -> dict[int, dict[int, int]]:
    """The areas CSV as {frame: {class id: pixels}}."""
    table: dict[int, dict[int, int]] = {}
    for row in read_csv(path):
        table.setdefault(int(row["frame"]), {})[int(row["class_id"])] = int(row["pixels"])
    return table


def counts(classes: np.ndarray) -> dict[int, int]:
    ids, n = np.unique(classes, return_counts=True)
    return {int(k): int(c) for k, c in zip(ids, n)}


def blend(image: PIL.Image.Image, classes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The overlay the command should draw, in NumPy: each pixel mixed with its class's palette colour."""
    colours = palette(len(CLASSES)).astype(np.float64)
    return (1 - alpha) * np.asarray(image.convert("RGB"), dtype=np.float64) + alpha * colours[classes]


def independent_ema(model_dir: Path, frames: list[PIL.Image.Image], alpha: float | None) -> list[np.ndarray]:
    """Per frame, the class map of the EMA of softmax probabilities at the frame's size, computed without
    pvtkit's post-processing: the model's logits resized by scikit-image (bilinear, half-pixel centres, edges
    repeated: what the pipeline's resize does), SciPy's softmax, the average in float64."""
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = pvtkit.SegformerImageProcessor.from_pretrained(model_dir)
    state, maps = None, []
    for frame in frames:
        with torch.no_grad():
            logits = model(**processor(frame, return_tensors="pt")).logits[0].double().numpy()  # (K, h, w)
        resized = np.stack(
            [
                skimage.transform.resize(c, (frame.height, frame.width), order=1, mode="edge", anti_aliasing=False)
                for c in logits
            ]
        )
        p = scipy.special.softmax(resized, axis=0)
        state = p if state is None or alpha is None else alpha * p + (1 - alpha) * state
        maps.append(state.argmax(0))
    return maps


# ---- segment ---------------------------------------------------------------------------------------------------


def test_segment_video_round_trips_frames_overlay_and_areas(seg_dir, clip, input_frames, tmp_path, capsys):
    out = tmp_path / "out"
    code, records, err = run(capsys, "segment", str(clip), "-m", str(seg_dir), "-o", str(out), "--batch-size", "5")
    assert code == 0, err
    (record,) = records
    assert record["frames"] == FRAMES and record["fps"] == 12.0 and record["size"] == [HEIGHT, WIDTH]
    assert record["video"] == str(out / "clip_overlay.mp4") and record["areas_csv"] == str(out / "clip_areas.csv")

    overlays, rate, times = decode(out / "clip_overlay.mp4")
    assert len(overlays) == FRAMES and rate == FPS and {o.size for o in overlays} == {(WIDTH, HEIGHT)}
    np.testing.assert_allclose(times, [i / 12 for i in range(FRAMES)], atol=1e-3)

    segmenter = pvtkit.pipeline("image-segmentation", model=seg_dir)
    labels = [r.output.numpy() for r in segmenter.run(input_frames, formatted=False)]
    assert sum(len(np.unique(m)) for m in labels) > FRAMES  # the tiny model draws several classes, not one

    # per-frame areas: exactly the pipeline's class_areas of the decoded input frames, times i / fps
    rows = read_csv(out / "clip_areas.csv")
    for i, classes in enumerate(labels):
        mine = [r for r in rows if int(r["frame"]) == i]
        expected = class_areas(classes, segmenter.labels)
        assert [(int(r["class_id"]), r["label"], int(r["pixels"]), float(r["fraction"])) for r in mine] == [
            (a["id"], a["label"], a["pixels"], a["fraction"]) for a in expected
        ]
        assert float(mine[0]["time"]) == pytest.approx(i / 12, abs=1e-3)
    totals = sum(np.bincount(m.ravel(), minlength=len(CLASSES)) for m in labels)
    assert {c["id"]: c["pixels"] for c in record["classes"]} == {k: int(v) for k, v in enumerate(totals) if v}

    # the overlay of each frame is that frame's blend, within H.264's error; the neighbours' blends are further off
    errors = np.array(
        [
            [np.abs(np.asarray(o, dtype=np.float64) - blend(f, m)).mean() for f, m in zip(input_frames, labels)]
            for o in overlays
        ]
    )
    assert errors.diagonal().max() < 6.0, errors.diagonal()  # 4:2:0 chroma over 8x8 class edges: ~2-4 levels
    off = errors + np.diag(np.full(FRAMES, np.inf))
    assert (off.min(axis=1) > 2 * errors.diagonal()).all(), (off.min(axis=1), errors.diagonal())


def test_segment_video_temporal_ema_matches_an_independent_ema(
    seg_dir, clip, input_frames, tmp_path, capsys, monkeypatch
):
    import pvtkit.video
    from pvtkit.video import segment_frames

    alpha = 0.3
    out = tmp_path / "out"
    args = ("segment", str(clip), "-m", str(seg_dir), "-o", str(out), "--temporal-ema", str(alpha), "--no-overlay")
    code, (record,), err = run(capsys, *args)
    assert code == 0, err
    assert "video" not in record and [p.name for p in out.iterdir()] == ["clip_areas.csv"]
    expected = independent_ema(seg_dir, input_frames, alpha)
    plain = independent_ema(seg_dir, input_frames, None)
    assert sum((e != p).sum() for e, p in zip(expected, plain)) > 50  # the smoothing changes the answer

    # the library, in batches of 4 frames whose probabilities go one frame at a time (a budget of 1 byte)
    monkeypatch.setattr(pvtkit.video, "PROBABILITY_BYTES", 1)
    segmenter = pvtkit.pipeline("image-segmentation", model=seg_dir, batch_size=4)
    smoothed = list(segment_frames(segmenter, input_frames, temporal_ema=alpha))
    assert len(smoothed) == FRAMES
    for mine, theirs in zip(smoothed, expected):
        assert (mine == theirs).mean() > 0.998  # float32 against float64: only near-ties may differ
    table = areas_by_frame(out / "clip_areas.csv")  # the command's areas (batches of 8) are the same maps
    assert [table[i] for i in range(FRAMES)] == [counts(m) for m in smoothed]


# ---- depth -----------------------------------------------------------------------------------------------------


def test_depth_video_round_trips_with_temporal_ema(glpn_dir, clip, input_frames, tmp_path, capsys):
    alpha = 0.5
    out = tmp_path / "out"
    args = ("depth", str(clip), "-m", str(glpn_dir), "-o", str(out), "--temporal-ema", str(alpha), "--batch-size", "8")
    code, records, err = run(capsys, *args)
    assert code == 0, err
    (record,) = records
    assert record["frames"] == FRAMES and record["size"] == [HEIGHT, WIDTH] and record["temporal_ema"] == alpha

    estimator = pvtkit.pipeline("depth-estimation", model=glpn_dir)
    state, smoothed = None, []
    for result in estimator.run(input_frames, formatted=False):  # the EMA here, in float64
        depth = result.output.numpy().astype(np.float64)
        state = depth if state is None else alpha * depth + (1 - alpha) * state
        smoothed.append(state)
    rows = read_csv(out / "clip_depth_stats.csv")
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    for row, depth in zip(rows, smoothed):
        for key, value in (("min", depth.min()), ("median", np.median(depth)), ("max", depth.max())):
            assert float(row[key]) == pytest.approx(value, rel=1e-5, abs=1e-5)
    assert record["min"] == pytest.approx(min(d.min() for d in smoothed), rel=1e-5)
    assert record["max"] == pytest.approx(max(d.max() for d in smoothed), rel=1e-5)

    views, rate, _ = decode(out / "clip_depth.mp4")
    assert len(views) == FRAMES and rate == FPS and {v.size for v in views} == {(WIDTH, HEIGHT)}
    low, high = smoothed[0].min(), smoothed[0].max()  # one colour scale for the clip: the first frame's range
    assert record["color_range"] == pytest.approx([low, high], rel=1e-5)
    for view, depth in zip(views, smoothed):
        expected = PIL.Image.fromarray(colormap(np.clip((depth - low) / (high - low), 0, 1)))
        # compared in luma, which 4:2:0 keeps at full resolution (a random GLPN's depth changes colour every pixel)
        luma = [np.asarray(v.convert("L"), dtype=np.float64) for v in (view, expected)]
        assert np.abs(luma[0] - luma[1]).mean() < 2.0


# ---- errors ----------------------------------------------------------------------------------------------------


def test_corrupt_videos_are_reported_and_the_other_inputs_processed(seg_dir, clip, input_frames, tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 4)
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(clip.read_bytes()[:600])  # an MP4 cut short, misnamed: no index, no frames
    image = tmp_path / "still.png"
    input_frames[3].save(image)
    out = tmp_path / "out"
    inputs = [str(garbage), str(clip), str(truncated), str(image)]
    code, records, err = run(capsys, "segment", *inputs, "-m", str(seg_dir), "-o", str(out))
    assert code == 1
    assert [r["path"] for r in records] == inputs
    for bad in (0, 2):
        assert inputs[bad] in records[bad]["error"] and "video" in records[bad]["error"]
        assert f"pvtkit segment: error: {inputs[bad]}" in err
    assert "2 of 4 input(s) failed" in err
    assert records[1]["frames"] == FRAMES and records[3]["label_png"] == str(out / "still.png")
    assert sorted(p.name for p in out.iterdir()) == [
        "clip_areas.csv",
        "clip_overlay.mp4",
        "still.png",
        "still_overlay.jpg",
    ]


def test_bad_temporal_ema_is_a_usage_error(seg_dir, clip, tmp_path, capsys):
    assert main(["segment", str(clip), "-m", str(seg_dir), "-o", str(tmp_path), "--temporal-ema", "0"]) == 2
    assert "--temporal-ema must be in (0, 1]" in capsys.readouterr().err


def test_rotated_video_is_read_upright(tmp_path):
    from pvtkit.video import VideoReader

    frames = moving_digits()[:3]
    path = encode(tmp_path / "portrait.mov", frames, fps=Fraction(30000, 1001), rotation=90)
    with av.open(str(path)) as container:
        raw = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with VideoReader(path) as reader:
        assert (reader.info.height, reader.info.width, reader.info.rotation) == (WIDTH, HEIGHT, 90)
        assert reader.info.fps == Fraction(30000, 1001)
        decoded = list(reader)
    assert [f.index for f in decoded] == [0, 1, 2]
    for frame, array in zip(decoded, raw):  # 90 degrees counterclockwise, as the display matrix says
        np.testing.assert_array_equal(np.asarray(frame.image), np.rot90(array))


def test_missing_pyav_names_the_extra(monkeypatch):
    from pvtkit.video import require_av

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r'pip install "pvtkit\[video\]"'):
        require_av()
