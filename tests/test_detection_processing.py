"""Deformable DETR's image processors and post-processing against transformers', on scikit-image's photos with
hand-written COCO annotations of what is in them.

transformers' PIL back end (`DeformableDetrImageProcessorPil`) is the reference for `DeformableDetrImageProcessor`:
pixels, masks and every `labels` entry bit-identical. Its torchvision back end does not import here (no torchvision
beside this torch), so `DeformableDetrImageProcessorFast` is held to a torch-only reference of the same pipeline
(to float32 rounding), to our PIL processor within the tolerance test_processing.py measures (one 8-bit level), and
its labels to the PIL processor's exactly. (Checked once against transformers 5.25's torchvision back end with
torchvision 0.28 on these photos and sizes: pixels and masks bit-identical, boxes within 6e-8.)
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import torch.nn.functional as F
import transformers
from transformers.image_transforms import get_size_with_aspect_ratio
from transformers.image_utils import get_image_size_for_max_height_width

import pvtkit
from pvtkit.models.deformable_detr.processing import (
    DeformableDetrImageProcessor,
    DeformableDetrImageProcessorFast,
    object_detections,
    resized_size,
)
from pvtkit.models.family import IMAGE_PROCESSOR_TYPES
from pvtkit.processing import BatchFeature, ImageLoadError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # camera is gray: RGB conversion on both sides

# What is in each photo, as COCO would annotate it (x, y, width, height in the photo's pixels). Some objects test
# transformers' rules: a crowd region (dropped), a box of zero width (dropped), a box running off the image
# (clipped), a box wholly outside it (dropped), an object without `iscrowd` (kept), an image with no objects.
ANNOTATIONS = {
    "astronaut": [  # 512 x 512
        {"bbox": [150.0, 30.0, 290.0, 482.0], "category_id": 1, "area": 98000.0, "iscrowd": 0},  # the astronaut
        {"bbox": [0.0, 0.0, 130.0, 180.0], "category_id": 28, "area": 14000.0, "iscrowd": 0},  # the flag
        {"bbox": [300.0, 300.0, 60.0, 40.0], "category_id": 1, "area": 1800.0, "iscrowd": 1},  # a crowd region
        {"bbox": [420.5, 350.25, 140.0, 200.0], "category_id": 77, "area": 9000.0},  # runs off the corner
    ],
    "coffee": [  # 400 x 600
        {"bbox": [170.0, 45.0, 300.0, 290.0], "category_id": 47, "area": 62000.0, "iscrowd": 0},  # cup and saucer
        {"bbox": [52.0, 300.0, 180.0, 92.0], "category_id": 50, "area": 7300.0, "iscrowd": 0},  # spoon
        {"bbox": [500.0, 10.0, 0.0, 50.0], "category_id": 44, "area": 0.0, "iscrowd": 0},  # zero width
    ],
    "chelsea": [  # 300 x 451
        {"bbox": [120.0, 8.0, 260.0, 292.0], "category_id": 17, "area": 51000.0, "iscrowd": 0},  # the cat
        {"bbox": [600.0, 20.0, 30.0, 30.0], "category_id": 17, "area": 900.0, "iscrowd": 0},  # outside the image
    ],
    "rocket": [  # 427 x 640
        {"bbox": [296.0, 38.0, 76.0, 350.0], "category_id": 5, "area": 17500.0, "iscrowd": 0},  # the rocket
        {"bbox": [233.0, 250.0, 60.0, 160.0], "category_id": 5, "area": 6100.0, "iscrowd": 0},  # the tower
    ],
    "camera": [],  # 512 x 512, no objects annotated
}


@pytest.fixture(scope="module")
def photos() -> dict[str, PIL.Image.Image]:
    return {name: PIL.Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS}


def coco(names: list[str]) -> list[dict]:
    return [{"image_id": 100 + PHOTOS.index(n), "annotations": ANNOTATIONS[n]} for n in names]


def theirs(**kwargs) -> transformers.DeformableDetrImageProcessorPil:
    # transformers leaves RGB conversion off (the gray photo would fail there); ours defaults to it
    return transformers.DeformableDetrImageProcessorPil(do_convert_rgb=True, **kwargs)


def assert_labels_equal(ours: list[dict], reference: list[dict]) -> None:
    """Every entry transformers gives, with its dtype and shape, bit for bit; ours has `size` always."""
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert set(b) <= set(a) and "size" in a
        for key in b:
            x, y = torch.as_tensor(np.asarray(a[key])), torch.as_tensor(np.asarray(b[key]))
            assert x.dtype == y.dtype and x.shape == y.shape, (key, x, y)
            assert torch.equal(x, y), (key, x, y)


def assert_equal_to_transformers(ours, reference) -> None:
    """pixel_values (within 1e-5, in practice identical), pixel_mask and labels of two "pt" outputs."""
    assert ours.pixel_values.shape == reference.pixel_values.shape
    assert ours.pixel_values.dtype == reference.pixel_values.dtype == torch.float32
    torch.testing.assert_close(ours.pixel_values, reference.pixel_values, rtol=0, atol=1e-5)
    assert torch.equal(ours.pixel_mask, reference.pixel_mask) and ours.pixel_mask.dtype == torch.int64
    assert_labels_equal(ours.labels, reference.labels)


# ---- PIL back end == transformers' PIL back end -------------------------------------------------------------------


def test_defaults_equal_transformers(photos):
    """The default 800 / 1333 sizing once, on photos of three sizes padded into one batch."""
    names = ["astronaut", "coffee", "chelsea"]
    images = [photos[n] for n in names]
    ours = DeformableDetrImageProcessor()(images, annotations=coco(names), return_tensors="pt")
    assert_equal_to_transformers(ours, theirs()(images, annotations=coco(names), return_tensors="pt"))
    # 512x512 -> 800x800, 400x600 -> 800x1200, 300x451 -> 800x1202: padded to 800x1202
    assert tuple(ours.pixel_values.shape) == (3, 3, 800, 1202)
    assert ours.pixel_mask.sum(dim=(1, 2)).tolist() == [800 * 800, 800 * 1200, 800 * 1202]
    assert [t["size"].tolist() for t in ours.labels] == [[800, 1202]] * 3
    assert [t["class_labels"].tolist() for t in ours.labels] == [[1, 28, 77], [47, 50], [17]]


SMALL = {"shortest_edge": 96, "longest_edge": 160}
OPTIONS = [
    {"size": SMALL},
    {"size": {"height": 80, "width": 120}},
    {"size": {"max_height": 100, "max_width": 90}},
    {"size": SMALL, "pad_size": {"height": 200, "width": 230}},
    {"size": SMALL, "do_convert_annotations": False},
    {"size": SMALL, "do_normalize": False},  # do_convert_annotations follows do_normalize
    {"size": {"shortest_edge": 133, "longest_edge": 211}, "resample": 3},
    {"size": 90, "max_size": 120},  # a legacy int size with max_size
    {"size": SMALL, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4], "rescale_factor": 1 / 127.5},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options_equal_transformers(photos, options):
    """Every size form and option, on all five photos and their annotations at once (constructor options)."""
    images = [photos[n] for n in PHOTOS]
    ours = DeformableDetrImageProcessor(**options)(images, annotations=coco(list(PHOTOS)), return_tensors="pt")
    reference = theirs(**options)(images, annotations=coco(list(PHOTOS)), return_tensors="pt")
    assert_equal_to_transformers(ours, reference)


def test_per_call_options_equal_transformers(photos):
    images = [photos["rocket"], photos["chelsea"]]
    kwargs = {"size": {"max_height": 70, "max_width": 150}, "do_convert_annotations": False, "do_normalize": False}
    ours = DeformableDetrImageProcessor()(images, coco(["rocket", "chelsea"]), return_tensors="pt", **kwargs)
    reference = theirs()(images, annotations=coco(["rocket", "chelsea"]), return_tensors="pt", **kwargs)
    assert_equal_to_transformers(ours, reference)


def test_unresized_and_unpadded(photos):
    """do_resize=False keeps each image's size (boxes normalized by it); do_pad=False gives lists, no mask."""
    crops = [PIL.Image.fromarray(np.asarray(photos["astronaut"])[:61, :97]), photos["chelsea"]]
    annotations = [{"image_id": 1, "annotations": ANNOTATIONS["astronaut"]}, coco(["chelsea"])[0]]
    ours = DeformableDetrImageProcessor(do_resize=False)(crops, annotations, return_tensors="pt")
    assert_equal_to_transformers(ours, theirs(do_resize=False)(crops, annotations=annotations, return_tensors="pt"))
    unpadded = DeformableDetrImageProcessor(size=SMALL, do_pad=False)(crops, annotations)
    reference = theirs(size=SMALL, do_pad=False)(crops, annotations=annotations)
    assert "pixel_mask" not in unpadded and "pixel_mask" not in reference
    assert [p.shape for p in unpadded.pixel_values] == [(3, 96, 152), (3, 96, 144)]
    for a, b in zip(unpadded.pixel_values, reference.pixel_values):
        np.testing.assert_array_equal(a, b)
    assert_labels_equal(unpadded.labels, reference.labels)
    assert all(isinstance(v, np.ndarray) for t in unpadded.labels for v in t.values())


def test_odd_sizes_equal_transformers(photos):
    """Odd, tiny and very elongated images (the longest edge caps the shortest, which is then rounded)."""
    rocket = np.asarray(photos["rocket"])
    crops = [rocket[:37, :301], rocket[:301, :37], rocket[100:105, 200:207], rocket[:20, :640], rocket[:427, :13]]
    objects = [{"bbox": [3.0, 2.0, 30.0, 20.0], "category_id": 2, "area": 500.0}]
    annotations = [{"image_id": i, "annotations": objects} for i in range(len(crops))]
    for size in (SMALL, {"max_height": 50, "max_width": 50}):
        ours = DeformableDetrImageProcessor(size=size)(crops, annotations, return_tensors="pt")
        assert_equal_to_transformers(ours, theirs(size=size)(crops, annotations=annotations, return_tensors="pt"))


def test_resized_size_equals_transformers_rounding():
    """The size rule on thousands of (height, width) pairs against transformers' own functions."""
    rng = random.Random(0)
    for _ in range(3000):
        height, width = rng.randint(1, 3000), rng.randint(1, 3000)
        shortest = rng.randint(1, 900)
        longest = rng.randint(shortest, 1500)
        want = get_size_with_aspect_ratio((height, width), shortest, longest)
        assert resized_size(height, width, {"shortest_edge": shortest, "longest_edge": longest}) == want
        max_h, max_w = rng.randint(1, 900), rng.randint(1, 900)
        want = get_image_size_for_max_height_width((height, width), max_h, max_w)
        assert resized_size(height, width, {"max_height": max_h, "max_width": max_w}) == want


def test_labels_worked_by_hand():
    """An independent check of the annotation arithmetic: a 100x200 image, its box [50, 25, 100, 50] (corners 50,
    25 - 150, 75), resized to 50x100 (corners 25, 12.5 - 75, 37.5: center 50, 25, size 50 x 25, i.e. 0.5 of each
    side), padded to 100x100 (fractions of the padded image: x halves stay, y halves halve)."""
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    target = {"image_id": 7, "annotations": [{"bbox": [50, 25, 100, 50], "category_id": 3, "area": 5000}]}
    out = DeformableDetrImageProcessor(size={"height": 50, "width": 100}, pad_size={"height": 100, "width": 100})(
        image, target, return_tensors="pt"
    )
    (labels,) = out.labels
    torch.testing.assert_close(labels["boxes"], torch.tensor([[0.5, 0.25, 0.5, 0.25]]), rtol=0, atol=1e-7)
    assert labels["area"].tolist() == [1250.0] and labels["class_labels"].tolist() == [3]
    assert labels["image_id"].tolist() == [7] and labels["iscrowd"].tolist() == [0]
    assert labels["orig_size"].tolist() == [100, 200] and labels["size"].tolist() == [100, 100]
    assert out.pixel_mask[0, :50].all() and not out.pixel_mask[0, 50:].any()
    corners = DeformableDetrImageProcessor(size={"height": 50, "width": 100}, do_convert_annotations=False)(
        image, target, return_tensors="pt"
    ).labels[0]["boxes"]
    assert corners.tolist() == [[25.0, 12.5, 75.0, 37.5]]


# ---- the tensor back end -------------------------------------------------------------------------------------------


def torch_reference(photo: PIL.Image.Image, size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """What the Fast processor should give, computed here: antialiased bilinear `F.interpolate` on the uint8 image
    (torchvision's uint8 path on CPU), (x/255 - mean) / std in float64, zeros below and to the right."""
    x = torch.from_numpy(np.array(photo.convert("RGB"))).permute(2, 0, 1)[None].contiguous()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0].double() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).double(), torch.tensor([0.229, 0.224, 0.225]).double()
    x = (x - mean[:, None, None]) / std[:, None, None]
    return F.pad(x, (0, padded[1] - size[1], 0, padded[0] - size[0]))


def test_fast_equals_torch_reference_and_pil_labels(photos):
    images = [photos[n] for n in PHOTOS]
    fast = DeformableDetrImageProcessorFast(size=SMALL)(images, annotations=coco(list(PHOTOS)), return_tensors="pt")
    pil = DeformableDetrImageProcessor(size=SMALL)(images, annotations=coco(list(PHOTOS)), return_tensors="pt")
    padded = tuple(fast.pixel_values.shape[-2:])
    for i, image in enumerate(images):
        size = resized_size(image.height, image.width, SMALL)
        torch.testing.assert_close(
            fast.pixel_values[i].double(), torch_reference(image, size, padded), rtol=0, atol=1e-5
        )
    assert torch.equal(fast.pixel_mask, pil.pixel_mask)
    assert_labels_equal(fast.labels, pil.labels)
    assert all(torch.equal(fast.labels[i][k], pil.labels[i][k]) for i in range(len(images)) for k in fast.labels[i])


@pytest.mark.parametrize("options", [{"size": SMALL}, {"size": {"max_height": 90, "max_width": 90}, "resample": 3}])
def test_fast_within_one_level_of_pil(photos, options):
    """torch's antialiased kernels and PIL's differ by at most one 8-bit level on under 1% of values (the bound
    test_processing.py measures); the padding is zero in both."""
    images = [photos[n] for n in PHOTOS]
    fast = DeformableDetrImageProcessorFast(**options)(images, return_tensors="pt").pixel_values
    pil = DeformableDetrImageProcessor(**options)(images, return_tensors="pt").pixel_values
    diff = (fast - pil).abs().double()
    assert diff.max() <= 1.0 / 255 / 0.224 + 1e-5
    assert (diff > 1e-4).double().mean() <= 0.01 and diff.mean() <= 2e-4


def test_fast_return_types_and_device(photos):
    """Fast keeps tensors (lists of them unpadded, on the requested device); "np" gives arrays."""
    images, annotations = [photos["coffee"], photos["rocket"]], coco(["coffee", "rocket"])
    fast = DeformableDetrImageProcessorFast(size=SMALL)
    out = fast(images, annotations, device="cpu")
    assert isinstance(out.pixel_values, list) and all(isinstance(p, torch.Tensor) for p in out.pixel_values)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for t in out.labels for v in t.values())
    as_np = fast(images, annotations, return_tensors="np")
    assert isinstance(as_np.pixel_values, np.ndarray) and isinstance(as_np.pixel_mask, np.ndarray)
    assert all(isinstance(v, np.ndarray) for t in as_np.labels for v in t.values())
    unpadded = fast(images, do_pad=False)
    assert [tuple(p.shape) for p in unpadded.pixel_values] == [(3, 96, 144), (3, 96, 143)]
    with pytest.raises(ValueError, match="cannot stack images of different shapes"):
        fast(images, do_pad=False, return_tensors="pt")
    labels = DeformableDetrImageProcessor(size=SMALL)(images, annotations, return_tensors="pt").labels[0]
    assert isinstance(labels, BatchFeature) and labels.to("cpu")["boxes"].dtype == torch.float32


# ---- post-processing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5])
@pytest.mark.parametrize("top_k", [7, 100, 1000])
def test_post_processing_equals_transformers(threshold, top_k):
    logits = torch.randn(3, 40, 9) * 2  # 360 (query, class) pairs: top_k 1000 takes them all
    boxes = torch.rand(3, 40, 4) * 0.5 + 0.1
    outputs = SimpleNamespace(logits=logits, pred_boxes=boxes)
    reference = transformers.DeformableDetrImageProcessorPil()
    sizes = [(480, 640), (333, 517), (64, 64)]
    for target_sizes in (None, sizes, torch.tensor(sizes)):
        ours = DeformableDetrImageProcessor().post_process_object_detection(outputs, threshold, target_sizes, top_k)
        want = reference.post_process_object_detection(outputs, threshold, target_sizes, top_k)
        assert len(ours) == 3 and sum(len(r["scores"]) for r in ours) > 0
        for a, b in zip(ours, want):
            assert set(a) == {"scores", "labels", "boxes"}
            assert all(torch.equal(a[k], b[k]) for k in a)
            assert (a["scores"] > threshold).all() and (a["scores"][:-1] >= a["scores"][1:]).all()
    fast = DeformableDetrImageProcessorFast().post_process_object_detection(outputs, threshold, sizes, top_k)
    assert all(
        torch.equal(a[k], b[k])
        for a, b in zip(fast, reference.post_process_object_detection(outputs, threshold, sizes, top_k))
        for k in a
    )


def test_post_processing_checks_its_inputs():
    logits, boxes = torch.randn(2, 5, 3), torch.rand(2, 5, 4)
    with pytest.raises(ValueError, match="got 1 target sizes for a batch of 2"):
        object_detections(logits, boxes, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="pred_boxes"):
        object_detections(logits, boxes[:, :4])
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        object_detections(logits, boxes, top_k=0)


# ---- config files ---------------------------------------------------------------------------------------------------


def test_config_round_trip_with_transformers(tmp_path, photos):
    images, annotations = [photos["chelsea"], photos["coffee"]], coco(["chelsea", "coffee"])
    options = {"size": {"max_height": 120, "max_width": 100}, "pad_size": {"height": 130, "width": 110}}
    ours = DeformableDetrImageProcessor(**options, do_convert_annotations=False)
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "DeformableDetrImageProcessor" and saved["format"] == "coco_detection"
    assert saved["size"] == options["size"] and saved["pad_size"] == options["pad_size"]
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert type(loaded).__name__.startswith("DeformableDetrImageProcessor") and not loaded.do_convert_annotations
    assert_equal_to_transformers(
        ours(images, annotations, return_tensors="pt"), loaded(images, annotations=annotations, return_tensors="pt")
    )
    back = pvtkit.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert type(back) is DeformableDetrImageProcessor and back.to_dict() == ours.to_dict()

    theirs(size=SMALL, do_pad=False).save_pretrained(tmp_path / "hf")
    from_hf = pvtkit.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert type(from_hf) is DeformableDetrImageProcessor and from_hf.size == SMALL and not from_hf.do_pad
    assert from_hf.do_convert_annotations and from_hf.pad_size is None
    fast = pvtkit.AutoImageProcessor.from_pretrained(tmp_path / "hf", use_fast=True)
    assert type(fast) is DeformableDetrImageProcessorFast and fast.size == SMALL

    fast.save_pretrained(tmp_path / "fast")  # transformers 4's name, which transformers 5 resolves
    assert json.loads((tmp_path / "fast" / "preprocessor_config.json").read_text())["image_processor_type"] == (
        "DeformableDetrImageProcessorFast"
    )
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path / "fast")).__name__.startswith(
        "DeformableDetrImageProcessor"
    )


def test_legacy_config_loads(tmp_path):
    """SenseTime/deformable-detr's file (transformers 4's feature extractor: an int size with max_size)."""
    legacy = {
        "feature_extractor_type": "DeformableDetrFeatureExtractor",
        "do_normalize": True,
        "do_resize": True,
        "format": "coco_detection",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "max_size": 1333,
        "size": 800,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    loaded = pvtkit.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DeformableDetrImageProcessor
    assert loaded.size == {"shortest_edge": 800, "longest_edge": 1333} and loaded.do_pad
    assert loaded.to_dict() == DeformableDetrImageProcessor().to_dict()
    assert DeformableDetrImageProcessor(size=600, pad_and_return_pixel_mask=False).to_dict()["do_pad"] is False


def test_registry():
    for name in ("DeformableDetrImageProcessor", "DeformableDetrImageProcessorPil", "DeformableDetrFeatureExtractor"):
        assert IMAGE_PROCESSOR_TYPES[name] is DeformableDetrImageProcessor
    assert IMAGE_PROCESSOR_TYPES["DeformableDetrImageProcessorFast"] is DeformableDetrImageProcessorFast
    assert DeformableDetrImageProcessor.model_input_names == ["pixel_values", "pixel_mask"]


# ---- errors --------------------------------------------------------------------------------------------------------

GOOD = {"bbox": [10, 20, 30, 40], "category_id": 1, "area": 1200.0}
BAD_OBJECTS = [
    ({"category_id": 1, "area": 1.0}, r"image 1, object 1 has no 'bbox'"),
    ({**GOOD, "bbox": [1, 2, 3]}, r"image 1, object 1: bbox is \[1, 2, 3\]; expected \[x, y, width, height\]"),
    ({**GOOD, "bbox": [1, 2, float("nan"), 4]}, r"image 1, object 1: bbox \[1, 2, nan, 4\]"),
    ({**GOOD, "bbox": [5, 5, -3, 4]}, r"image 1, object 1: bbox \[5, 5, -3, 4\] has a negative width \(-3\)"),
    ({**GOOD, "bbox": "10 20 30 40"}, r"image 1, object 1: bbox is '10 20 30 40'"),
    ({**GOOD, "category_id": 1.5}, r"image 1, object 1: category_id is 1.5; expected a whole number >= 0"),
    ({**GOOD, "category_id": "cat"}, r"image 1, object 1: category_id is 'cat'"),
    ({**GOOD, "category_id": -1}, r"image 1, object 1: category_id is -1"),
    ({"bbox": [1, 2, 3, 4], "category_id": 1}, r"image 1, object 1 has no 'area'"),
    ({**GOOD, "area": -5.0}, r"image 1, object 1: area is -5.0"),
    ({**GOOD, "iscrowd": 2}, r"image 1, object 1: iscrowd is 2; expected 0 or 1"),
    ([10, 20, 30, 40], r"image 1, object 1 is a list; expected a dict"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_OBJECTS, ids=[m for _, m in BAD_OBJECTS])
@pytest.mark.parametrize("cls", [DeformableDetrImageProcessor, DeformableDetrImageProcessorFast])
def test_bad_objects_name_the_image_object_and_value(cls, bad, message):
    images = [np.zeros((50, 60, 3), np.uint8)] * 2
    annotations = [{"image_id": 0, "annotations": [GOOD]}, {"image_id": 1, "annotations": [GOOD, bad]}]
    with pytest.raises(ValueError, match=message):
        cls(size=SMALL)(images, annotations)


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ([{"image_id": 0, "annotations": []}], r"got 1 annotations for 2 images"),
        ([{"image_id": 0, "annotations": []}, {"annotations": []}], r"annotation of image 1 has no 'image_id'"),
        ([{"image_id": 0, "annotations": []}, {"image_id": 1}], r"annotation of image 1 has no 'annotations'"),
        ([{"image_id": 0, "annotations": []}, {"image_id": "a", "annotations": []}], r"image 1: image_id is 'a'"),
        ([{"image_id": 0, "annotations": []}, {"image_id": 1, "annotations": GOOD}], r"'annotations' is a dict"),
        ([{"image_id": 0, "annotations": []}, [GOOD]], r"annotation of image 1 is a list"),
        ("annotations.json", r"annotations must be a dict \(one image\) or a list of dicts"),
    ],
)
def test_bad_annotations(annotations, message):
    with pytest.raises(ValueError, match=message):
        DeformableDetrImageProcessor(size=SMALL)([np.zeros((50, 60, 3), np.uint8)] * 2, annotations)


def test_bad_options():
    image = np.zeros((50, 60, 3), np.uint8)
    for size in ({"shortest_edge": 800}, {"longest_edge": 1333}, {"height": 0, "width": 3}, "800"):
        with pytest.raises(ValueError, match="size must be one of"):
            DeformableDetrImageProcessor(size=size)
    with pytest.raises(ValueError, match="pad_size must be"):
        DeformableDetrImageProcessor(pad_size={"height": 10})
    with pytest.raises(ValueError, match=r"image 1 is 96x115 \(height x width\) after resizing, larger than pad_size"):
        DeformableDetrImageProcessor(size=SMALL, pad_size=(100, 100))([np.zeros((8, 8, 3), np.uint8), image])
    with pytest.raises(ValueError, match="format 'coco_panoptic' is not supported"):
        DeformableDetrImageProcessor(format="coco_panoptic")
    with pytest.raises(ValueError, match="return_segmentation_masks=True is not supported"):
        DeformableDetrImageProcessor()(image, return_segmentation_masks=True)
    with pytest.raises(TypeError, match="unknown preprocess option"):
        DeformableDetrImageProcessor()(image, max_height=3)
    with pytest.raises(ImageLoadError, match="would be resized to 0x"):
        DeformableDetrImageProcessor(size=SMALL)(np.zeros((1, 400), np.uint8))  # a one-pixel-high strip
