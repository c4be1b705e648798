"""Tests of pvtkit.processing against transformers' image processors and independent references.

References used:
* transformers' PIL back end (`ViTImageProcessorPil`, `PvtImageProcessorPil`) for the PIL/NumPy processors: the
  outputs must be bit-identical.
* transformers' tensor back end (`ViTImageProcessor`, `PvtImageProcessor`) needs torchvision, which is not
  installed here, so the Fast processors are compared (a) against a torch-only reference written in this file,
  (b) against our PIL processor within a measured tolerance. A direct comparison with transformers' tensor back
  end needs an environment where torchvision imports beside torch; CI has none, so it is not a test here.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoImageProcessor, PvtImageProcessorPil, ViTImageProcessorPil  # noqa: E402

from pvtkit.models.family import IMAGE_PROCESSOR_TYPES  # noqa: E402
from pvtkit.models.pvt_v2.processing import PvtImageProcessor, PvtImageProcessorFast  # noqa: E402
from pvtkit.models.vit.processing import ViTFeatureExtractor, ViTImageProcessor, ViTImageProcessorFast  # noqa: E402
from pvtkit.processing import BatchFeature, ImageLoadError, convert_to_rgb, load_image  # noqa: E402

# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photos() -> dict[str, PIL.Image.Image]:
    """scikit-image's bundled photos in every PIL mode transformers' PIL conversion handles the way we do."""
    astronaut = PIL.Image.fromarray(skimage_data.astronaut())
    camera = PIL.Image.fromarray(skimage_data.camera())
    chelsea = PIL.Image.fromarray(skimage_data.chelsea())
    coffee = PIL.Image.fromarray(skimage_data.coffee())
    logo = PIL.Image.fromarray(skimage_data.logo())  # RGBA, but fully opaque
    ramp = np.tile(np.linspace(0, 255, chelsea.width).astype(np.uint8)[None], (chelsea.height, 1))
    translucent = PIL.Image.fromarray(np.dstack([skimage_data.chelsea(), ramp]))  # RGBA, alpha 0..255
    palette = chelsea.quantize(64)
    palette_t = palette.copy()
    palette_t.info["transparency"] = int(np.asarray(palette)[0, 0])  # make one palette entry transparent
    alpha = PIL.Image.fromarray(np.tile(np.arange(512)[None] // 2, (512, 1)).astype(np.uint8))
    gray_alpha = PIL.Image.merge("LA", (camera, alpha))
    return {
        "astronaut": astronaut,
        "camera": camera,
        "chelsea": chelsea,
        "coffee": coffee,
        "logo": logo,
        "rgba": translucent,
        "palette": palette,
        "palette_transparent": palette_t,
        "cmyk": coffee.convert("CMYK"),
        "LA": gray_alpha,
        "1": camera.convert("1"),
    }


def _transformers_pil(cls: type, **kwargs):
    """transformers' PIL processor with RGB conversion on, which is our default.

    transformers leaves `do_convert_rgb` unset for ViT/PVT, so non-RGB inputs fail there with a channel error;
    `test_transformers_default_rejects_gray` pins that difference.
    """
    return cls(do_convert_rgb=True, **kwargs)


PAIRS = [
    pytest.param(ViTImageProcessor, ViTImageProcessorPil, {}, id="vit"),
    pytest.param(PvtImageProcessor, PvtImageProcessorPil, {}, id="pvt"),
]


# ------------------------------------------------------------------------------------- PIL parity (exact)


@pytest.mark.parametrize(("ours_cls", "ref_cls", "ref_kwargs"), PAIRS)
def test_pil_parity_defaults_every_photo(photos, ours_cls, ref_cls, ref_kwargs):
    """Default settings: bit-identical to transformers' PIL processor on every photo and PIL mode."""
    ours, ref = ours_cls(), _transformers_pil(ref_cls, **ref_kwargs)
    images = list(photos.values())
    got = ours(images, return_tensors="np").pixel_values
    want = ref(images, return_tensors="np").pixel_values
    assert got.shape == (len(images), 3, 224, 224) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


OVERRIDES = [
    {"size": {"shortest_edge": 160}},
    {"size": {"height": 96, "width": 130}},
    {"size": 64},
    {"resample": 0},
    {"resample": 1},
    {"resample": 3},
    {"resample": 4},
    {"resample": 5},
    {"resample": 3, "size": {"shortest_edge": 97}},
    {"do_normalize": False},
    {"do_rescale": False},
    {"do_resize": False},
    {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7], "rescale_factor": 1 / 127.5},
]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize(("ours_cls", "ref_cls", "ref_kwargs"), PAIRS)
def test_pil_parity_overrides(photos, ours_cls, ref_cls, ref_kwargs, overrides):
    """Per-call overrides of every option: identical to transformers given the same overrides."""
    images = [photos["astronaut"], photos["chelsea"], photos["rgba"], photos["camera"]]
    got = ours_cls()(images, **overrides).pixel_values
    want = _transformers_pil(ref_cls, **ref_kwargs)(images, **overrides).pixel_values
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def test_pil_parity_constructor_options(photos):
    """Options given to the constructor (not per call) act the same as in transformers."""
    kwargs = {"size": {"shortest_edge": 120}, "resample": 3, "image_mean": [0.3] * 3, "image_std": [0.2] * 3}
    got = ViTImageProcessor(**kwargs)(photos["coffee"]).pixel_values[0]
    want = _transformers_pil(ViTImageProcessorPil, **kwargs)(photos["coffee"]).pixel_values[0]
    assert got.shape == (3, 120, 180)
    np.testing.assert_array_equal(got, want)


def _array_inputs(photos):
    rgb = np.array(photos["chelsea"])
    rgba = np.array(photos["rgba"])
    return {
        "hwc_uint8": (rgb, None),
        "chw_uint8": (np.ascontiguousarray(rgb.transpose(2, 0, 1)), None),
        "hwc_rgba_uint8": (rgba, None),
        "hw1_gray": (np.asarray(photos["camera"])[..., None], None),
        "float_0_1": (rgb.astype(np.float32) / 255.0, None),  # transformers rescales these twice; so do we
        "float_whole_0_255": (rgb.astype(np.float64), None),
        "rgba_float_0_1": (rgba.astype(np.float32) / 255.0, None),
        "torch_chw": (torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), None),
        "batch_4d": (np.stack([rgb, rgb[::-1]]), None),
        "explicit_last": (rgb, "channels_last"),
    }


@pytest.mark.filterwarnings("ignore:.*already lie in.*")
@pytest.mark.parametrize(
    "name",
    [
        "hwc_uint8",
        "chw_uint8",
        "hwc_rgba_uint8",
        "hw1_gray",
        "float_0_1",
        "float_whole_0_255",
        "rgba_float_0_1",
        "torch_chw",
        "batch_4d",
        "explicit_last",
    ],
)
def test_pil_parity_array_inputs(photos, name):
    """NumPy arrays and torch tensors (HWC/CHW, uint8/float, RGBA, 4-d batches) match transformers exactly."""
    image, fmt = _array_inputs(photos)[name]
    kwargs = {"input_data_format": fmt} if fmt else {}
    got = ViTImageProcessor()(image, return_tensors="np", **kwargs).pixel_values
    want = _transformers_pil(ViTImageProcessorPil)(image, return_tensors="np", **kwargs).pixel_values
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_transformers_default_rejects_gray(photos):
    """Documents the one deliberate default difference: transformers does not convert to RGB unless told to."""
    with pytest.raises(ValueError):
        ViTImageProcessorPil()(photos["camera"])
    assert ViTImageProcessor()(photos["camera"], return_tensors="np").pixel_values.shape == (1, 3, 224, 224)
    assert ViTImageProcessor().do_convert_rgb is True


def test_do_convert_rgb_false_keeps_channels(photos):
    """With conversion off, a grayscale image stays 1-channel, as in transformers (normalized with one value)."""
    got = ViTImageProcessor(do_convert_rgb=False, image_mean=0.5, image_std=0.5)(photos["camera"]).pixel_values[0]
    want = ViTImageProcessorPil(image_mean=0.5, image_std=0.5)(photos["camera"]).pixel_values[0]
    assert got.shape == (1, 224, 224)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ImageLoadError, match="channels"):
        ViTImageProcessor(do_convert_rgb=False)(photos["camera"])


def test_ambiguous_channels_warn_and_explicit_format(photos):
    """A 3x3x3 array is ambiguous: we warn and assume channels-first (transformers' rule); the explicit format
    removes the warning and gives transformers' result."""
    tiny = np.asarray(photos["astronaut"])[:3, :3]
    with pytest.warns(UserWarning, match="ambiguous"):
        first = ViTImageProcessor()(tiny, size=8).pixel_values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        last = ViTImageProcessor()(tiny, size=8, input_data_format="channels_last").pixel_values[0]
    want = _transformers_pil(ViTImageProcessorPil)(tiny, size=8, input_data_format="channels_last").pixel_values[0]
    np.testing.assert_array_equal(last, want)
    np.testing.assert_array_equal(
        first,
        ViTImageProcessor()(np.ascontiguousarray(tiny), size=8, input_data_format="channels_first").pixel_values[0],
    )
    assert not np.array_equal(first, last)


# ------------------------------------------------------------------------------------ PIL modes -> RGB


def test_modes_convert_to_rgb(photos):
    """Each mode's RGB against a reference computed from its source pixels (not from the code under test)."""
    camera = np.asarray(photos["camera"])
    coffee = np.asarray(photos["coffee"])
    # L: the gray value in all three channels.
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(photos["camera"])), np.repeat(camera[..., None], 3, -1))
    # CMYK made from RGB by PIL is lossless (K = 0), so converting back must give the photo again.
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(photos["cmyk"])), coffee)
    # 1: black or white, where the bilevel image says.
    bits = np.asarray(photos["1"])
    expected_bits = np.repeat(bits[..., None] * 255, 3, -1).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(photos["1"])), expected_bits)
    # P: palette lookup.
    pal = photos["palette"]
    table = np.asarray(pal.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(pal)), table[np.asarray(pal)])
    # P with a transparent entry: those pixels become white, others the palette colour.
    pt = photos["palette_transparent"]
    expected = table[np.asarray(pt)].copy()
    expected[np.asarray(pt) == pt.info["transparency"]] = 255
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(pt)), expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_over_white(photos, mode):
    """Alpha is blended onto white (alpha * colour + (1 - alpha) * 255), not dropped; PIL rounds in integers so
    we allow one level."""
    image = photos["rgba"] if mode == "RGBA" else photos["LA"]
    arr = np.asarray(image).astype(np.float64)
    colour = arr[..., :3] if mode == "RGBA" else np.repeat(arr[..., :1], 3, -1)
    alpha = arr[..., -1:] / 255.0
    expected = alpha * colour + (1 - alpha) * 255.0
    got = np.asarray(convert_to_rgb(image)).astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0
    assert (alpha < 1).any() and not np.array_equal(got, colour)  # the photo really has transparency


def test_high_bit_modes_scaled_not_clipped(photos):
    """I;16, I and F scale onto 0..255 (deliberate difference: PIL's convert, used by transformers, clips)."""
    camera = np.asarray(photos["camera"])
    i16 = PIL.Image.fromarray(camera.astype(np.uint16) * 257)
    assert i16.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(i16))[..., 0], camera)
    assert not np.array_equal(np.asarray(i16.convert("RGB"))[..., 0], camera)  # PIL's own convert clips
    # I and F holding 8-bit data: unchanged, and equal to transformers.
    for mode in ("I", "F"):
        img = photos["camera"].convert(mode)
        np.testing.assert_array_equal(np.asarray(convert_to_rgb(img))[..., 0], camera)
        got = ViTImageProcessor()(img, return_tensors="np").pixel_values
        want = _transformers_pil(ViTImageProcessorPil)(img, return_tensors="np").pixel_values
        np.testing.assert_array_equal(got, want)
    # I holding 16-bit data, F holding fractions.
    i32 = PIL.Image.fromarray(camera.astype(np.int32) * 257)
    assert i32.mode == "I"
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(i32))[..., 0], camera)
    f01 = PIL.Image.fromarray(camera.astype(np.float32) / 255.0)
    assert f01.mode == "F"
    np.testing.assert_array_equal(np.asarray(convert_to_rgb(f01))[..., 0], camera)
    # The processor sees the same image whether it arrives as 8-bit or 16-bit.
    proc = ViTImageProcessor()
    np.testing.assert_array_equal(proc(i16).pixel_values[0], proc(photos["camera"]).pixel_values[0])


# ------------------------------------------------------------------------------------------- files, EXIF


def _write_exif_jpeg(path, orientation: int) -> np.ndarray:
    """A 40x24 JPEG with a bright left half and an EXIF orientation tag; returns its decoded pixels."""
    arr = np.zeros((24, 40, 3), dtype=np.uint8)
    arr[:, :20] = 230
    img = PIL.Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), quality=95)
    with PIL.Image.open(path) as raw:
        return np.asarray(raw.convert("RGB"))


def test_exif_orientation_applied_for_files(tmp_path):
    """Orientation 6 (camera turned clockwise) rotates the pixels 90 degrees clockwise; the flag turns it off."""
    path = tmp_path / "rotated.jpg"
    raw = _write_exif_jpeg(path, 6)
    upright = np.asarray(load_image(path))
    assert load_image(path).mode == "RGB" and upright.shape == (40, 24, 3)
    np.testing.assert_array_equal(upright, np.rot90(raw, k=-1))
    assert upright[0, :, 0].mean() > 200 and upright[-1, :, 0].mean() < 30  # bright half now on top
    np.testing.assert_array_equal(np.asarray(load_image(str(path), exif_transpose=False)), raw)
    # The processor reads paths the same way; the per-call and constructor flags turn it off.
    small = {"size": {"shortest_edge": 24}}
    by_path = ViTImageProcessor()(str(path), **small).pixel_values[0]
    assert by_path.shape == (3, 40, 24)
    np.testing.assert_array_equal(by_path, ViTImageProcessor()(PIL.Image.fromarray(upright), **small).pixel_values[0])
    assert ViTImageProcessor()(path, exif_transpose=False, **small).pixel_values[0].shape == (3, 24, 40)
    assert ViTImageProcessor(exif_transpose=False)(path, **small).pixel_values[0].shape == (3, 24, 40)


def test_paths_match_pil_inputs(tmp_path, photos):
    """PNG paths (str and Path, mixed with other inputs) give what the decoded images give."""
    for name in ("logo", "camera"):
        photos[name].save(tmp_path / f"{name}.png")
    mixed = [tmp_path / "logo.png", str(tmp_path / "camera.png"), photos["astronaut"]]
    for cls in (ViTImageProcessor, ViTImageProcessorFast):
        got = cls()(mixed, return_tensors="pt").pixel_values
        want = cls()([photos["logo"], photos["camera"], photos["astronaut"]], return_tensors="pt").pixel_values
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- bad inputs


BOTH = [ViTImageProcessor, ViTImageProcessorFast]


@pytest.mark.parametrize("cls", BOTH)
def test_bad_files(tmp_path, cls):
    """Corrupt, non-image and truncated files raise ImageLoadError naming the path; missing ones FileNotFound."""
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    truncated = tmp_path / "truncated.png"
    PIL.Image.fromarray(skimage_data.astronaut()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    for path in (corrupt, text, truncated):
        with pytest.raises(ImageLoadError, match="expected") as info:
            cls()(str(path))
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        cls()(tmp_path / "missing.png")
    # A PIL image opened lazily from a truncated file only fails when decoded, inside the processor.
    with PIL.Image.open(truncated) as lazy, pytest.raises(ImageLoadError, match="truncated.png.*expected"):
        cls()(lazy)


@pytest.mark.parametrize("limit_factor", [0.9, 0.4], ids=["warning-level", "error-level"])
def test_decompression_bomb(tmp_path, monkeypatch, limit_factor):
    """Both of PIL's bomb levels (warning above the limit, error above twice it) become ImageLoadError."""
    path = tmp_path / "big.png"
    PIL.Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", int(100 * 100 * limit_factor))
    with pytest.raises(ImageLoadError, match="big.png.*too large|big.png.*large"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="big.png"):
        ViTImageProcessor()(path)


BAD_ARRAYS = {
    "empty": (np.zeros((0, 0, 3), dtype=np.uint8), "empty"),
    "two_channels": (np.zeros((8, 8, 2), dtype=np.uint8), "channel"),
    "five_channels_first": (np.zeros((5, 8, 8), dtype=np.uint8), "channel"),
    "nan": (np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN"),
    "four_d_single": (np.zeros((1, 1, 8, 8, 3), dtype=np.uint8), "2-d"),
    "float_out_of_range": (np.full((8, 8, 3), 3.5, dtype=np.float32), "0..255"),
}


@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_bad_arrays(cls, name):
    """Unusable arrays raise ImageLoadError describing the input (shape, dtype) and what was expected."""
    array, fragment = BAD_ARRAYS[name]
    if cls is ViTImageProcessorFast and name == "float_out_of_range":
        # The tensor back end (like transformers') resizes floats as floats, so this one is valid there.
        assert cls()(array).pixel_values[0].shape == (3, 224, 224)
        return
    with pytest.raises(ImageLoadError, match=fragment) as info:
        cls()(array)
    assert str(tuple(array.shape)) in str(info.value)
    with pytest.raises(ImageLoadError):
        cls()(torch.from_numpy(array))


def test_bad_calls():
    """Empty batches, wrong types, bad options and unstackable batches fail clearly."""
    proc = ViTImageProcessor()
    with pytest.raises(ImageLoadError, match="no images"):
        proc([])
    with pytest.raises(TypeError, match="expected a PIL image"):
        proc([b"bytes"])
    with pytest.raises(ValueError, match="size"):
        proc(np.zeros((8, 8, 3), np.uint8), size={"longest_edge": 3})
    with pytest.raises(ValueError, match="resample"):
        proc(np.zeros((8, 8, 3), np.uint8), resample=9)
    with pytest.raises(TypeError, match="unknown"):
        proc(np.zeros((8, 8, 3), np.uint8), do_crop=True)
    with pytest.raises(ValueError, match="different shapes"):
        proc(
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 16, 3), np.uint8)],
            size={"shortest_edge": 8},
            return_tensors="pt",
        )
    with pytest.raises(ValueError, match="no torch kernel"):
        ViTImageProcessorFast()(np.zeros((8, 8, 3), np.uint8), resample=4)


# ----------------------------------------------------------------------------------------- tensor back end


def _torch_reference(image_hwc: np.ndarray, size, mode: str, mean, std) -> np.ndarray:
    """Independent computation of what the Fast processor should give for an RGB uint8 image on CPU: antialiased
    `F.interpolate` on the uint8 image (torchvision resizes uint8 natively on CPU), then (x/255 - m)/s in float64."""
    x = torch.from_numpy(np.array(image_hwc)).permute(2, 0, 1)[None].contiguous()
    x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)[0].numpy().astype(np.float64)
    return (x / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]


@pytest.mark.parametrize(
    ("cls", "mean", "std"),
    [
        (ViTImageProcessorFast, [0.5] * 3, [0.5] * 3),
        (PvtImageProcessorFast, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ],
)
@pytest.mark.parametrize("resample", [2, 3])
def test_fast_vs_torch_reference(photos, cls, mean, std, resample):
    """Fast processor == torch-only reference to float32 rounding (atol 1e-5) on RGB photos."""
    for name in ("astronaut", "coffee", "chelsea"):
        arr = np.asarray(photos[name])
        got = cls()(photos[name], resample=resample, return_tensors="pt").pixel_values[0]
        want = _torch_reference(arr, (224, 224), {2: "bilinear", 3: "bicubic"}[resample], mean, std)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


# Measured on these photos in every mode (torch 2.13, Pillow 13, CPU, 224x224 / shortest_edge 150 / 100x57): torch's
# native uint8 antialiased kernels and PIL's disagree by exactly one 8-bit level on at most 0.6% of values (bilinear
# <= 0.25%, bicubic <= 0.6%; some sizes are bit-identical), never more. After normalization one level is
# 1/255/std: 0.0078 for ViT's std 0.5 and 0.0175 for PVT's 0.224; the worst measured mean |diff| was 1.03e-4.
FAST_MAX_LEVELS, FAST_MAX_FRACTION, FAST_MAX_MEAN = 1.0, 0.01, 2e-4


def _assert_fast_close(got: torch.Tensor, want: np.ndarray, std) -> None:
    """At most one 8-bit level anywhere, on under 1% of values, and a tiny mean difference."""
    diff = np.abs(got.cpu().numpy().astype(np.float64) - np.asarray(want, dtype=np.float64))
    level = 1.0 / 255.0 / min(std)
    assert diff.max() <= FAST_MAX_LEVELS * level + 1e-5
    assert (diff > 1e-4).mean() <= FAST_MAX_FRACTION
    assert diff.mean() <= FAST_MAX_MEAN


@pytest.mark.parametrize(
    ("fast_cls", "pil_cls"), [(ViTImageProcessorFast, ViTImageProcessor), (PvtImageProcessorFast, PvtImageProcessor)]
)
@pytest.mark.parametrize(
    "overrides",
    [{}, {"resample": 3}, {"size": {"shortest_edge": 150}}, {"resample": 3, "size": {"height": 100, "width": 57}}],
    ids=str,
)
def test_fast_vs_pil(photos, fast_cls, pil_cls, overrides):
    """Fast vs our PIL processor (== transformers' PIL processor) within the measured tolerance above, on every
    photo/mode, in one mixed-size call; order of outputs follows the inputs despite grouping by shape."""
    images = list(photos.values())
    got = fast_cls()(images, **overrides).pixel_values
    want = pil_cls()(images, **overrides).pixel_values
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor) and tuple(g.shape) == w.shape
        _assert_fast_close(g, w, fast_cls().image_std)


def test_fast_nearest_matches_pil(photos):
    """NEAREST maps to torch's 'nearest-exact', which picks PIL's pixels."""
    got = ViTImageProcessorFast()(photos["chelsea"], resample=0, size=(100, 77), return_tensors="np").pixel_values
    want = ViTImageProcessor()(photos["chelsea"], resample=0, size=(100, 77), return_tensors="np").pixel_values
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_fast_rgba_and_gray_arrays(photos):
    """Array inputs in the tensor back end: gray is repeated exactly; RGBA is composited over white in float32 and
    brought back to uint8 the way torchvision's `to_dtype` does (x * 255.999, truncated; reference computed here),
    which differs from the NumPy path's rounding by at most one 8-bit level."""
    raw = {"do_resize": False, "do_rescale": False, "do_normalize": False}
    gray = np.array(photos["camera"])
    np.testing.assert_array_equal(ViTImageProcessorFast()(gray, **raw).pixel_values[0].numpy(), np.stack([gray] * 3))
    rgba = np.array(photos["rgba"])
    x = torch.from_numpy(rgba).permute(2, 0, 1).float() / 255.0
    reference = ((x[:3] * x[3:] + (1 - x[3:])) * (255.0 + 1.0 - 1e-3)).to(torch.uint8)
    torch.testing.assert_close(ViTImageProcessorFast()(rgba, **raw).pixel_values[0], reference, rtol=0, atol=0)
    numpy_path = ViTImageProcessor()(rgba, **raw).pixel_values[0].astype(np.int64)
    assert np.abs(reference.numpy().astype(np.int64) - numpy_path).max() == 1


@pytest.mark.filterwarnings("ignore:.*already lie in.*")
def test_fast_float_and_device(photos):
    """Float inputs stay float through the resize (transformers' tensor semantics); `device` is honoured."""
    arr = np.asarray(photos["astronaut"]).astype(np.float32)
    got = ViTImageProcessorFast()(arr, device="cpu", return_tensors="pt").pixel_values
    x = F.interpolate(
        torch.from_numpy(arr).permute(2, 0, 1)[None],
        size=(224, 224),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    torch.testing.assert_close(got, (x - 127.5) / 127.5, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- outputs


def test_return_types_and_batch_feature(photos):
    """None -> list of arrays, 'np' -> one array, 'pt' -> one tensor; BatchFeature works as model kwargs."""
    proc = PvtImageProcessor()
    images = [photos["astronaut"], photos["camera"]]
    as_list = proc(images).pixel_values
    assert isinstance(as_list, list) and all(isinstance(a, np.ndarray) for a in as_list)
    as_np = proc(images, return_tensors="np")
    assert isinstance(as_np, BatchFeature) and isinstance(as_np.pixel_values, np.ndarray)
    batch = proc(images, return_tensors="pt")
    assert isinstance(batch["pixel_values"], torch.Tensor) and batch.pixel_values.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(batch.pixel_values.numpy(), as_np.pixel_values)

    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=32, image_size=224
    )
    with torch.no_grad():
        out = transformers.ViTModel(config).eval()(**batch)
    assert out.last_hidden_state.shape == (2, 1 + (224 // 32) ** 2, 32)
    half = batch.to(torch.float16)
    assert half is batch and batch.pixel_values.dtype == torch.float16
    assert batch.to("cpu").pixel_values.device.type == "cpu"
    with pytest.raises(AttributeError):
        _ = batch.labels


def test_feature_extractor_alias(photos):
    """ViTFeatureExtractor warns, computes like ViTImageProcessor and saves under the current name."""
    with pytest.warns(DeprecationWarning, match="ViTImageProcessor"):
        fe = ViTFeatureExtractor()
    want = ViTImageProcessor()(photos["coffee"]).pixel_values[0]
    np.testing.assert_array_equal(fe(photos["coffee"]).pixel_values[0], want)
    assert fe.to_dict()["image_processor_type"] == "ViTImageProcessor"


# ---------------------------------------------------------------------------------- preprocessor_config.json

CLASS_PAIRS = [(ViTImageProcessor, ViTImageProcessorPil), (PvtImageProcessor, PvtImageProcessorPil)]


@pytest.mark.parametrize(("ours_cls", "ref_cls"), CLASS_PAIRS)
def test_config_ours_to_transformers(tmp_path, photos, ours_cls, ref_cls):
    """transformers loads our file (class and Auto) and computes the same; our keys are transformers' keys."""
    ours = ours_cls(size={"shortest_edge": 200}, resample=3, image_mean=[0.4, 0.4, 0.4])
    written = ours.save_pretrained(tmp_path)
    assert written == [str(tmp_path / "preprocessor_config.json")]
    assert [p.name for p in tmp_path.iterdir()] == ["preprocessor_config.json"]  # no temporary file left
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    ref_keys = set(ref_cls().to_dict())
    assert ref_keys | {"do_convert_rgb"} == set(saved)
    assert saved["image_processor_type"] == ref_cls().to_dict()["image_processor_type"]
    for theirs in (ref_cls.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path, backend="pil")):
        assert type(theirs).__name__ == ref_cls.__name__
        np.testing.assert_array_equal(ours(photos["rgba"]).pixel_values[0], theirs(photos["rgba"]).pixel_values[0])
        assert theirs.to_dict()["size"] == saved["size"] and theirs.resample == 3


@pytest.mark.parametrize(("ours_cls", "ref_cls"), CLASS_PAIRS)
def test_config_transformers_to_ours(tmp_path, photos, ours_cls, ref_cls):
    """We load transformers' file (directory or file path) and compute the same; options survive a re-save."""
    theirs = ref_cls(size={"height": 192, "width": 160}, resample=0, rescale_factor=1 / 128, do_convert_rgb=True)
    theirs.save_pretrained(tmp_path / "hf")
    for source in (tmp_path / "hf", tmp_path / "hf" / "preprocessor_config.json"):
        ours = ours_cls.from_pretrained(source)
        want = theirs(photos["chelsea"]).pixel_values[0]
        np.testing.assert_array_equal(ours(photos["chelsea"]).pixel_values[0], want)
    ours.save_pretrained(tmp_path / "ours")
    hf_json = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    ours_json = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert ours_json == hf_json
    assert ours_cls.from_dict(ours.to_dict()).to_dict() == ours.to_dict()


def test_config_class_defaults_from_transformers_file(tmp_path, photos):
    """A transformers file saved with all defaults loads to the same computation (ViT; see PAIRS for PVT)."""
    ViTImageProcessorPil().save_pretrained(tmp_path)
    ours = ViTImageProcessor.from_pretrained(tmp_path)
    assert ours.to_dict() == ViTImageProcessor().to_dict()
    want = ViTImageProcessorPil()(photos["astronaut"]).pixel_values[0]
    np.testing.assert_array_equal(ours(photos["astronaut"]).pixel_values[0], want)


def test_config_fast_and_legacy(tmp_path, photos):
    """Fast saves as '...Fast' (transformers resolves it to its ViT processor); old-style files (int size,
    feature_extractor_type) load; options we do not implement are refused; kwargs override the file."""
    ViTImageProcessorFast(resample=3).save_pretrained(tmp_path / "fast")
    saved = json.loads((tmp_path / "fast" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "ViTImageProcessorFast"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns that it falls back to its PIL back end
        hf = AutoImageProcessor.from_pretrained(tmp_path / "fast")
    assert hf.resample == 3
    got = ViTImageProcessorFast.from_pretrained(tmp_path / "fast")(photos["coffee"], return_tensors="pt").pixel_values
    _assert_fast_close(got, hf(photos["coffee"], return_tensors="np").pixel_values, (0.5,))

    legacy = {
        "feature_extractor_type": "ViTFeatureExtractor",
        "size": 384,
        "resample": 2,
        "do_resize": True,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    loaded = ViTImageProcessor.from_pretrained(tmp_path / "legacy.json", do_resize=False)
    assert loaded.size == {"height": 384, "width": 384} and loaded.do_resize is False
    with pytest.raises(ValueError, match="do_center_crop"):
        ViTImageProcessor.from_dict({"do_center_crop": True, "crop_size": {"height": 10, "width": 10}})
    with pytest.raises(FileNotFoundError):
        ViTImageProcessor.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ViTImageProcessor.from_pretrained(tmp_path / "bad.json")


def test_config_unknown_keys_kept_with_warning(tmp_path):
    """Keys we do not know survive a load/save round trip (with a warning) instead of being dropped."""
    with pytest.warns(UserWarning, match="image_seq_length"):
        proc = ViTImageProcessor.from_dict({"image_seq_length": 196})
    proc.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_seq_length"] == 196
    assert os.listdir(tmp_path) == ["preprocessor_config.json"]


def test_image_processor_types_dispatch():
    """Every class's `image_processor_type` maps back to that class, and transformers' names map to ours."""
    for cls in (ViTImageProcessor, PvtImageProcessor, ViTImageProcessorFast, PvtImageProcessorFast):
        assert IMAGE_PROCESSOR_TYPES[cls().to_dict()["image_processor_type"]] is cls
    assert IMAGE_PROCESSOR_TYPES[ViTImageProcessorPil().to_dict()["image_processor_type"]] is ViTImageProcessor
    assert IMAGE_PROCESSOR_TYPES[PvtImageProcessorPil().to_dict()["image_processor_type"]] is PvtImageProcessor
