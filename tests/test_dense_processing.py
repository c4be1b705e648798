"""SegFormer's and GLPN's processors, post-processing and pipelines against transformers' on scikit-image's photos.

transformers' PIL back end (`SegformerImageProcessorPil`, `GLPNImageProcessorPil`) is the reference for the PIL
processors (bit-identical pixels and labels); its tensor back end needs torchvision, which does not import here, so
the Fast processors are held to our PIL ones within the tolerance test_processing.py measures, and their label maps
to exact properties of nearest-neighbour resizing. The label maps are real: scikit-image's horse silhouette, and
class maps made from the photos' own brightness.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import skimage.data as skimage_data
import torch
import transformers

import pvtkit
from pvtkit import (
    GLPNImageProcessor,
    GLPNImageProcessorFast,
    SegformerImageProcessor,
    SegformerImageProcessorFast,
)
from pvtkit.processing import ImageLoadError

from helpers import assert_close

PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket")


@pytest.fixture(scope="module")
def photos() -> dict[str, PIL.Image.Image]:
    return {name: PIL.Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS}


def brightness_classes(image: PIL.Image.Image, classes: int = 12) -> np.ndarray:
    """A class map of the photo's own structure: its gray levels in `classes` bands, 0 the darkest."""
    return (np.asarray(image.convert("L")).astype(np.int64) * classes // 256).astype(np.uint8)


def horse() -> tuple[PIL.Image.Image, np.ndarray]:
    """scikit-image's horse silhouette as a two-class map (1 = horse) and a photo-like RGB rendering of it."""
    mask = (~skimage_data.horse()).astype(np.uint8)  # True is background there
    rgb = np.stack([mask * 180 + 40, mask * 90 + 60, 200 - mask * 120], axis=-1).astype(np.uint8)
    return PIL.Image.fromarray(rgb), mask


# ---- SegFormer's processor -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", [False, True])
def test_segformer_processor_equals_transformers_with_label_maps(photos, reduce):
    # transformers leaves RGB conversion off (the gray photo would fail there); ours defaults to it
    ours = SegformerImageProcessor(do_reduce_labels=reduce)
    theirs = transformers.SegformerImageProcessorPil(do_reduce_labels=reduce, do_convert_rgb=True)
    images = [photos[n] for n in PHOTOS]
    maps = [PIL.Image.fromarray(brightness_classes(im)) for im in images]
    image, mask = horse()
    for img, seg in [*zip(images, maps), (image, PIL.Image.fromarray(mask))]:
        a, b = (
            ours(img, segmentation_maps=seg, return_tensors="np"),
            theirs(img, segmentation_maps=seg, return_tensors="np"),
        )
        np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
        assert a.labels.dtype == b.labels.dtype == np.int64 and a.labels.shape == (1, 512, 512)
        np.testing.assert_array_equal(a.labels, b.labels)
    if reduce:  # 0 -> 255 (ignored), k -> k - 1
        assert set(np.unique(a.labels)) == {0, 255}
    batch_a = ours(images[:2], maps[:2], return_tensors="pt", size={"height": 300, "width": 211})
    batch_b = theirs(images[:2], segmentation_maps=maps[:2], return_tensors="pt", size={"height": 300, "width": 211})
    assert torch.equal(batch_a.pixel_values, batch_b.pixel_values) and torch.equal(batch_a.labels, batch_b.labels)


def test_label_maps_in_every_form_give_the_same_labels(photos):
    processor = SegformerImageProcessor(size=128)
    classes = brightness_classes(photos["chelsea"])
    forms = [
        PIL.Image.fromarray(classes),
        classes,
        classes.astype(np.int32),
        torch.from_numpy(classes.astype(np.int64)),
        classes[None],
        classes[..., None],
        classes.astype(np.float32),
    ]
    palette = PIL.Image.fromarray(classes)
    palette.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist())
    forms.append(palette)  # a palette PNG's indices, not its colours
    want = processor(photos["chelsea"], segmentation_maps=forms[0], return_tensors="np").labels
    for form in forms[1:]:
        np.testing.assert_array_equal(
            processor(photos["chelsea"], segmentation_maps=form, return_tensors="np").labels, want
        )
    wide = np.full((300, 451), 300, dtype=np.int64)  # indices above 255 survive (PIL's 32-bit mode)
    assert (processor(photos["chelsea"], segmentation_maps=wide).labels[0] == 300).all()


@pytest.mark.parametrize("cls", [SegformerImageProcessor, SegformerImageProcessorFast])
def test_label_maps_are_resized_by_nearest_neighbour(cls):
    """Never interpolated: an exact 2x upscale repeats every label, a downscale keeps only values present."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 150, (37, 53)).astype(np.uint8)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    up = cls(size={"height": 74, "width": 106})(image, segmentation_maps=labels, return_tensors="np").labels[0]
    np.testing.assert_array_equal(up, np.kron(labels, np.ones((2, 2), dtype=np.int64)))
    down = cls(size={"height": 20, "width": 17})(image, segmentation_maps=labels, return_tensors="np").labels[0]
    assert set(np.unique(down)) <= set(np.unique(labels))


def test_fast_segformer_processor_matches_ours(photos):
    images = [photos[n] for n in PHOTOS]
    maps = [brightness_classes(im) for im in images]
    fast = SegformerImageProcessorFast()(images, segmentation_maps=maps, return_tensors="pt")
    pil = SegformerImageProcessor()(images, segmentation_maps=maps, return_tensors="pt")
    # torch's antialiased bilinear vs PIL's: within a uint8 step (the bound test_processing.py measures), after
    # normalization by ImageNet's std
    assert (fast.pixel_values - pil.pixel_values).abs().max() <= 1.01 / 255 / min(SegformerImageProcessor().image_std)
    assert (fast.labels == pil.labels).float().mean() > 0.98  # PIL's and torch's nearest differ on some rows/cols


def test_transformers_configs_load_and_ours_load_in_transformers(tmp_path, photos):
    legacy = {
        "feature_extractor_type": "SegformerFeatureExtractor",
        "reduce_labels": True,
        "size": 512,
        "do_normalize": True,
        "do_resize": True,
        "resample": 2,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }  # nvidia/segformer-b0-finetuned-ade-512-512's file
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    loaded = pvtkit.AutoImageProcessor.from_pretrained(tmp_path)
    assert (
        type(loaded) is SegformerImageProcessor
        and loaded.do_reduce_labels
        and loaded.size == {"height": 512, "width": 512}
    )
    theirs = transformers.SegformerImageProcessorPil(do_reduce_labels=True, size={"height": 96, "width": 128})
    theirs.save_pretrained(tmp_path / "hf")
    ours = pvtkit.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    seg = brightness_classes(photos["coffee"])
    a, b = (
        ours(photos["coffee"], seg, return_tensors="np"),
        theirs(photos["coffee"], segmentation_maps=seg, return_tensors="np"),
    )
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert type(back).__name__.startswith("SegformerImageProcessor") and back.do_reduce_labels
    assert pvtkit.AutoImageProcessor.from_pretrained(tmp_path / "ours", use_fast=True).__class__ is (
        SegformerImageProcessorFast
    )


def test_post_processing_equals_transformers():
    logits = torch.randn(2, 6, 16, 24)
    outputs = transformers.modeling_outputs.SemanticSegmenterOutput(logits=logits)
    ours, theirs = SegformerImageProcessor(), transformers.SegformerImageProcessorPil()
    for sizes in (None, [(64, 96), (37, 41)]):
        a = ours.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        b = theirs.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        assert len(a) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    as_tensor = ours.post_process_semantic_segmentation(outputs, target_sizes=torch.tensor([[64, 96], [37, 41]]))
    assert all(torch.equal(x, y) for x, y in zip(as_tensor, a))  # (transformers fails on a tensor of sizes)
    a = ours.post_process_semantic_segmentation(outputs, [(20, 30)] * 2, return_segmentation_scores=True)
    b = theirs.post_process_semantic_segmentation(outputs, [(20, 30)] * 2, return_segmentation_scores=True)
    assert torch.equal(a[1].segmentation, b[1].segmentation)
    assert torch.equal(a[1]["segmentation_scores"], b[1]["segmentation_scores"])
    with pytest.raises(ValueError, match="got 1 target sizes for a batch of 2"):
        ours.post_process_semantic_segmentation(outputs, [(4, 4)])


# ---- GLPN's processor -----------------------------------------------------------------------------------------


def test_glpn_processor_equals_transformers(photos, tmp_path):
    ours, theirs = GLPNImageProcessor(), transformers.GLPNImageProcessorPil(do_convert_rgb=True)
    for name in PHOTOS:
        a, b = ours(photos[name], return_tensors="np"), theirs(photos[name], return_tensors="np")
        assert a.pixel_values.shape == b.pixel_values.shape and a.pixel_values.shape[-1] % 32 == 0
        np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
    odd = ours(photos["chelsea"], size_divisor=7).pixel_values[0]
    assert odd.shape == (3, 294, 448)  # 300 x 451 rounded down to multiples of 7
    ours.save_pretrained(tmp_path)
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path)).__name__.startswith("GLPNImageProcessor")
    assert type(pvtkit.AutoImageProcessor.from_pretrained(tmp_path, use_fast=True)) is GLPNImageProcessorFast
    fast = GLPNImageProcessorFast()(photos["coffee"], return_tensors="pt").pixel_values
    assert (fast - torch.from_numpy(ours(photos["coffee"], return_tensors="np").pixel_values)).abs().max() <= 1.01 / 255


def test_depth_post_processing_equals_transformers():
    depth = torch.rand(2, 32, 48) * 10
    outputs = transformers.modeling_outputs.DepthEstimatorOutput(predicted_depth=depth)
    for sizes in (None, [(100, 150), (31, 17)]):
        a = GLPNImageProcessor().post_process_depth_estimation(outputs, target_sizes=sizes)
        b = transformers.GLPNImageProcessorPil().post_process_depth_estimation(outputs, target_sizes=sizes)
        assert all(torch.equal(x["predicted_depth"], y["predicted_depth"]) for x, y in zip(a, b))


# ---- bad input ------------------------------------------------------------------------------------------------


def test_bad_label_maps_and_images_are_named(photos):
    processor = SegformerImageProcessor(size=64)
    chelsea = photos["chelsea"]  # 300 x 451
    classes = brightness_classes(chelsea)
    with pytest.raises(
        ImageLoadError,
        match=r"segmentation map .* has shape \(300, 451, 3\); expected \(height, "
        r"width\) class indices, one channel",
    ):
        processor(chelsea, segmentation_maps=np.asarray(chelsea))
    with pytest.raises(ImageLoadError, match="is a RGB image; expected one class index per pixel"):
        processor(chelsea, segmentation_maps=chelsea)
    with pytest.raises(
        ImageLoadError, match=r"holds non-integer values \(e.g. \d+.5\); expected integer class indices"
    ):
        processor(chelsea, segmentation_maps=classes.astype(np.float32) + 0.5)
    with pytest.raises(ValueError, match=r"segmentation map 0 .* is 451x300 but image 0 is 300x451"):
        processor(chelsea, segmentation_maps=classes.T)
    with pytest.raises(ValueError, match="got 1 segmentation maps for 2 images"):
        processor([chelsea, chelsea], segmentation_maps=[classes])
    with pytest.raises(ImageLoadError, match=r"300x451 \(height x width\) is smaller than size_divisor 512"):
        GLPNImageProcessor(size_divisor=512)(chelsea)
    with pytest.raises(ValueError, match="size_divisor must be a positive int"):
        GLPNImageProcessor(size_divisor=0)
    with pytest.raises(ValueError, match="does not implement do_reduce_labels=True"):
        pvtkit.PvtImageProcessor(do_reduce_labels=True)


# ---- pipelines against transformers' ------------------------------------------------------------------------------


def test_segmentation_pipeline_gives_transformers_records(tmp_path, photos):
    fields = dict(
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 48, 64],
        num_attention_heads=[1, 2, 3, 4],
        decoder_hidden_size=32,
        num_labels=4,
        id2label={0: "sky", 1: "cat", 2: "cup", 3: "road"},
    )
    theirs = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(**fields)).eval()
    theirs.save_pretrained(tmp_path)
    processor = transformers.SegformerImageProcessorPil(size={"height": 128, "width": 128})
    processor.save_pretrained(tmp_path)
    reference = transformers.pipeline("image-segmentation", model=theirs, image_processor=processor)
    ours = pvtkit.pipeline("image-segmentation", model=str(tmp_path))
    for name in ("chelsea", "coffee", "camera"):
        a, b = ours(photos[name]), reference(photos[name])
        assert [r["label"] for r in a] == [r["label"] for r in b] and all(r["score"] is None for r in a)
        for x, y in zip(a, b):
            assert x["mask"].mode == y["mask"].mode == "L" and x["mask"].size == photos[name].size
            agree = (np.asarray(x["mask"]) == np.asarray(y["mask"])).mean()
            assert agree > 0.999, f"{name} {x['label']}: {agree:.4%} of pixels agree"
    assert isinstance(ours, pvtkit.ImageSegmentationPipeline)


def test_depth_pipeline_gives_transformers_records(tmp_path, photos):
    fields = dict(
        depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4], decoder_hidden_size=16
    )
    theirs = transformers.GLPNForDepthEstimation(transformers.GLPNConfig(**fields)).eval()
    theirs.save_pretrained(tmp_path)
    transformers.GLPNImageProcessorPil().save_pretrained(tmp_path)
    reference = transformers.pipeline(
        "depth-estimation", model=theirs, image_processor=transformers.GLPNImageProcessorPil()
    )
    ours = pvtkit.pipeline("depth-estimation", model=str(tmp_path))
    results = ours([photos["chelsea"], photos["astronaut"]], batch_size=2)  # two sizes: two forward passes
    for name, a in zip(("chelsea", "astronaut"), results):
        b = reference(photos[name])
        assert_close(a["predicted_depth"], b["predicted_depth"], what=f"{name} depth")
        assert a["depth"].mode == "L" and a["depth"].size == photos[name].size
        assert np.abs(np.asarray(a["depth"], dtype=int) - np.asarray(b["depth"], dtype=int)).max() <= 1


def test_pipelines_refuse_the_wrong_or_untrained_model(tmp_path):
    config = pvtkit.SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4], num_labels=3
    )
    pvtkit.SegformerModel(config).save_pretrained(tmp_path / "encoder")
    with pytest.raises(ValueError, match="no trained segmentation head"):
        pvtkit.pipeline("image-segmentation", model=str(tmp_path / "encoder"))
    with pytest.raises(ValueError, match="AutoModelForDepthEstimation has no 'segformer' model"):
        pvtkit.pipeline("depth-estimation", model=str(tmp_path / "encoder"))
    model = pvtkit.SegformerForSemanticSegmentation(config)
    with pytest.raises(ValueError, match=r"stride \(300, 300\) must be positive and at most the crop \(256, 256\)"):
        pvtkit.pipeline("image-segmentation", model=model, mode="slide", crop=(256, 256), stride=(300, 300))
    with pytest.raises(ValueError, match="mode must be 'whole' or 'slide'"):
        pvtkit.pipeline("image-segmentation", model=model, mode="tiles")
