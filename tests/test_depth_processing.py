"""`GLPNImageProcessor(images, depth_maps=...)`: depth maps resized to their images' output size as `labels`
without mixing the pixels without a measurement (0) into the others; the PIL and Fast back ends agree, and the
resizes equal direct NumPy computations written out here."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from pvtkit.models.glpn.processing import GLPNImageProcessor, GLPNImageProcessorFast


def holey_depth(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Metres in 0.5-9.5 with holes: a block, a stripe and scattered single pixels of 0 (no measurement)."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.5, 9.5, (height, width))
    depth[5:21, 7:40] = 0
    depth[:, width - 9 : width - 6] = 0
    depth[rng.random((height, width)) < 0.1] = 0
    return depth


def numpy_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each output pixel takes the source pixel its centre falls in: floor((i + 0.5) * in / out)."""
    (h, w), (oh, ow) = depth.shape, size
    rows = np.floor((np.arange(oh) + 0.5) * h / oh).astype(int)
    cols = np.floor((np.arange(ow) + 0.5) * w / ow).astype(int)
    return depth[rows][:, cols]


def numpy_masked_area(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per output pixel, its footprint [i h/oh, (i+1) h/oh) x [j w/ow, ...) on the source, each valid source
    pixel weighted by the area of its overlap with it; 0 where the footprint covers no valid pixel."""
    (h, w), (oh, ow) = depth.shape, size
    out = np.zeros(size)
    for i in range(oh):
        top, bottom = i * h / oh, (i + 1) * h / oh
        for j in range(ow):
            left, right = j * w / ow, (j + 1) * w / ow
            total = weight = 0.0
            for r in range(int(np.floor(top)), int(np.ceil(bottom))):
                dy = min(bottom, r + 1) - max(top, r)
                for c in range(int(np.floor(left)), int(np.ceil(right))):
                    dx = min(right, c + 1) - max(left, c)
                    if depth[r, c] > 0 and dy > 0 and dx > 0:
                        total += dy * dx * depth[r, c]
                        weight += dy * dx
            out[i, j] = total / weight if weight > 0 else 0.0
    return out


@pytest.fixture
def pair():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (75, 110, 3), dtype=np.uint8)
    return image, holey_depth(75, 110)


@pytest.mark.parametrize("cls", [GLPNImageProcessor, GLPNImageProcessorFast])
def test_nearest_equals_a_direct_numpy_nearest_resize(cls, pair):
    image, depth = pair
    out = cls()(image, depth_maps=depth, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 64, 96)
    assert out["labels"].shape == (1, 64, 96) and out["labels"].dtype == torch.float32
    np.testing.assert_array_equal(out["labels"][0].numpy(), numpy_nearest(depth, (64, 96)).astype(np.float32))
    # Upsampling (do_resize off, then a larger size is not GLPN's; use size_divisor 1 on a smaller image).
    small = depth[:13, :17]
    up = cls(size_divisor=1)(np.zeros((13, 17, 3), np.uint8), depth_maps=small, do_resize=False)["labels"][0]
    np.testing.assert_array_equal(np.asarray(up), small.astype(np.float32))


@pytest.mark.parametrize("cls", [GLPNImageProcessor, GLPNImageProcessorFast])
def test_area_equals_a_direct_masked_area_average_and_holes_stay_zero(cls, pair):
    image, depth = pair
    labels = cls()(image, depth_maps=depth, depth_resample="area", return_tensors="np")["labels"]
    assert labels.shape == (1, 64, 96) and labels.dtype == np.float32
    expected = numpy_masked_area(depth, (64, 96))
    np.testing.assert_allclose(labels[0], expected, rtol=1e-6, atol=0)
    # The hole's interior (no valid source pixel under the output pixel) is 0; every other output pixel lies within
    # the range of the valid depths (an average of valid ones only, never pulled towards 0).
    assert (labels[0][(expected == 0)] == 0).all()
    assert (labels[0][8:14, 10:24] == 0).all()
    inside = labels[0][labels[0] > 0]
    assert inside.min() >= depth[depth > 0].min() - 1e-6 and inside.max() <= depth.max() + 1e-6


def test_the_pil_and_fast_back_ends_agree_on_arrays_tensors_and_pil_images(pair):
    image, depth = pair
    millimetres = PIL.Image.fromarray(np.round(depth * 1000).astype(np.uint16))  # I;16
    assert millimetres.mode == "I;16"
    as_int = PIL.Image.fromarray(np.round(depth * 256).astype(np.int32))  # I
    as_float = PIL.Image.fromarray(depth.astype(np.float32))  # F
    for resample in ("nearest", "area"):
        for maps, scale in (
            ([depth, torch.from_numpy(depth)], 1.0),
            ([millimetres, millimetres], 1000.0),
            ([as_int, as_int], 256.0),
            ([as_float, as_float], 1.0),
        ):
            pil = GLPNImageProcessor()([image, image], depth_maps=maps, depth_scale=scale, depth_resample=resample)
            fast = GLPNImageProcessorFast()(
                [image, image], depth_maps=maps, depth_scale=scale, depth_resample=resample, return_tensors="pt"
            )
            for a, b in zip(pil["labels"], fast["labels"]):
                np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=0)
            # Scaled integers give the metres they encode (to the encoding's step).
            np.testing.assert_allclose(pil["labels"][0], pil["labels"][1], rtol=0, atol=0)
            reference = GLPNImageProcessor()(image, depth_maps=depth, depth_resample=resample)["labels"][0]
            np.testing.assert_allclose(pil["labels"][0], reference, atol=1.01 / scale if scale > 1 else 1e-6)
            assert ((pil["labels"][0] == 0) == (reference == 0)).all()


def test_a_batch_tensor_of_maps_and_files_are_taken(pair, tmp_path):
    image, depth = pair
    path = tmp_path / "d.png"
    PIL.Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(path)
    batch = torch.from_numpy(np.stack([depth, depth])).float()
    out = GLPNImageProcessorFast()([image, image], depth_maps=batch, return_tensors="pt")
    assert out["labels"].shape == (2, 64, 96)
    from_file = GLPNImageProcessor()(image, depth_maps=str(path), depth_scale=1000)["labels"][0]
    np.testing.assert_allclose(from_file, out["labels"][0].numpy(), atol=0.51e-3)


def test_bad_depth_maps_are_named(pair):
    image, depth = pair
    processor = GLPNImageProcessor()
    with pytest.raises(ValueError, match=r"depth map 1 .* is 75x100 but image 1 is 75x110"):
        processor([image, image], depth_maps=[depth, depth[:, :100]])
    with pytest.raises(ValueError, match=r"depth map 0 .*shape \(75, 110, 2\); expected a 2-d"):
        processor(image, depth_maps=[np.stack([depth, depth], -1)])
    bad = depth.copy()
    bad[3, 4] = -1.5
    with pytest.raises(ValueError, match=r"depth map 1 .*negative depth -1.5 at row 3, column 4"):
        GLPNImageProcessorFast()([image, image], depth_maps=[depth, bad])
    with pytest.raises(ValueError, match="got 1 depth maps for 2 images"):
        processor([image, image], depth_maps=[depth])
    with pytest.raises(ValueError, match="mode RGB|RGB image"):
        processor(image, depth_maps=PIL.Image.fromarray(image))
    with pytest.raises(ValueError, match="depth_resample"):
        processor(image, depth_maps=depth, depth_resample="bilinear")
    with pytest.raises(ValueError, match="depth_scale"):
        processor(image, depth_maps=depth, depth_scale=0)
    # Non-finite depths are no measurement.
    odd = depth.copy()
    odd[0, 0] = np.nan
    assert processor(image, depth_maps=odd)["labels"][0][0, 0] == 0
