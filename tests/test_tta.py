"""Test-time augmentation (`pvtkit.tta`): every mode equals a composition written here by hand from single forwards
of the same model (resize, forward, upsample, softmax, mirror back, mean), through the library function, the
pipeline (`aug=`), `pvtkit segment`, `pvtkit eval` (mIoU and loss against scikit-learn / NumPy) and the server;
the default runs today's single forward exactly."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

import pvtkit
from pvtkit.cli import main
from pvtkit.processing import semantic_segmentation
from pvtkit.tta import MMSEG_SCALES, Augmentation, as_augmentation, parse_scales, tta_probabilities

from helpers import CLASSES, digit_canvases, save_tiny_segformer, write_pairs

K = len(CLASSES)


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory) -> Path:
    """A random tiny SegFormer at 32x32 (a random model is far from mirror- or scale-invariant: every view counts),
    its classifier scaled up so that classes are decided by clear margins, not float rounding."""
    path = save_tiny_segformer(tmp_path_factory.mktemp("tta") / "tiny-seg")
    model = pvtkit.SegformerForSemanticSegmentation.from_pretrained(path)
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(40)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(tiny_seg):
    return pvtkit.SegformerForSemanticSegmentation.from_pretrained(tiny_seg).eval()


@pytest.fixture(scope="module")
def processor(tiny_seg):
    return pvtkit.SegformerImageProcessor.from_pretrained(tiny_seg)


def wide_canvases(count: int, seed: int) -> list[tuple[PIL.Image.Image, PIL.Image.Image]]:
    """Pairs of 40x70 (height x width): two 40x40 digit canvases side by side, cropped; wider than tall, so slide
    mode (short side to the 32 window) slides three windows across."""
    pairs = digit_canvases(2 * count, size=40, seed=seed)
    out = []
    for (a, ma), (b, mb) in zip(pairs[::2], pairs[1::2]):
        image = np.concatenate([np.asarray(a), np.asarray(b)], 1)[:, :70]
        mask = np.concatenate([np.asarray(ma), np.asarray(mb)], 1)[:, :70]
        out.append((PIL.Image.fromarray(image).convert("RGB"), PIL.Image.fromarray(mask)))
    return out


# ---- the composition, by hand ----------------------------------------------------------------------------------


def hand_resize(pixels: torch.Tensor, scale: float, aligned: bool) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    size = [max(1, int(np.floor(side * scale + 0.5))) for side in (h, w)]  # round half up: no .5 ties here
    if aligned:
        size = [-(-side // 32) * 32 for side in size]
    if size == [h, w]:
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


def hand_slide(model, pixels: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """mmsegmentation's slide inference written out: window starts every `stride`, plus one flush with the far edge,
    each window's logits upsampled to it, overlaps averaged."""
    _, _, h, w = pixels.shape

    def starts(side: int) -> list[int]:
        found = list(range(0, max(side - crop, 0) + 1, stride))
        return found + [side - crop] if found[-1] + crop < side else found

    total = torch.zeros(1, K, h, w)
    count = torch.zeros(1, 1, h, w)
    for top in starts(h):
        for left in starts(w):
            window = pixels[:, :, top : top + crop, left : left + crop]
            logits = F.interpolate(model(pixel_values=window).logits, size=window.shape[-2:], mode="bilinear")
            total[:, :, top : top + crop, left : left + crop] += logits
            count[:, :, top : top + crop, left : left + crop] += 1
    return total / count


def hand_tta(model, pixels, size, scales, flip, aligned=False, slide=None) -> torch.Tensor:
    """Probabilities (1, K, H, W): per scale and mirror, forward, upsample to `size`, softmax (exp / sum), unmirror;
    the mean over the stack of views."""
    views = []
    with torch.no_grad():
        for scale in scales:
            scaled = hand_resize(pixels, scale, aligned)
            for mirrored in (False, True) if flip else (False,):
                view = torch.flip(scaled, dims=[3]) if mirrored else scaled
                logits = model(pixel_values=view).logits if slide is None else hand_slide(model, view, *slide)
                up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).double()
                e = torch.exp(up - up.amax(1, keepdim=True))
                p = e / e.sum(1, keepdim=True)
                views.append(torch.flip(p, dims=[3]) if mirrored else p)
    return torch.stack(views).mean(0)


def decided(p: torch.Tensor, margin: float = 1e-5) -> torch.Tensor:
    """Pixels whose best class leads the second by more than `margin` (where float rounding cannot flip the argmax)."""
    top2 = p.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1] > margin)[0]


# ---- options -----------------------------------------------------------------------------------------------------


def test_scales_parse_and_bad_ones_are_refused_by_value():
    assert parse_scales("0.5, 0.75,1,1.25") == (0.5, 0.75, 1.0, 1.25)
    assert as_augmentation("ms-flip") == Augmentation(MMSEG_SCALES, True)
    assert as_augmentation({"scales": [1, 1.5], "aligned_resize": True}) == Augmentation((1.0, 1.5), False, True)
    assert not as_augmentation(None).active and not Augmentation((1,)).active and Augmentation(flip=True).active
    for text, bad in [("0.5,0", "'0'"), ("1,-2", "'-2'"), ("a", "'a'"), ("1,,2", "''"), ("nan", "'nan'")]:
        with pytest.raises(ValueError, match=bad):
            parse_scales(text)
    with pytest.raises(ValueError, match="positive"):
        Augmentation((0.5, 0.0))
    with pytest.raises(ValueError, match="'scale'"):
        as_augmentation({"scale": [1]})
    with pytest.raises(ValueError, match="ms-flip"):
        as_augmentation("multi")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "x.png", "-o", "out", "--scales", "1,0"], "--scales '1,0': '0' is not a positive number"),
        (["eval", "-d", "data", "--task", "segmentation", "--scales", "1,x"], "'x' is not a positive number"),
        (["eval", "-d", "data", "--task", "depth", "--scales", "1,2"], "--scales: only for semantic-segmentation"),
        (["eval", "-d", "data", "--task", "depth", "--aligned-resize"], "--aligned-resize: only for semantic-seg"),
    ],
)
def test_bad_tta_options_are_usage_errors_naming_the_value(argv, message, tiny_seg, capsys):
    assert main([*argv, "-m", str(tiny_seg)]) == 2
    assert message in capsys.readouterr().err


# ---- the modes against the hand composition --------------------------------------------------------------------


def test_the_default_is_todays_single_forward_exactly(tiny_seg, model, processor):
    images = [image for image, _ in digit_canvases(3, size=45, seed=3)]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        today = semantic_segmentation(model(pixel_values=pixels).logits, [(45, 45)] * 3)
    for aug in (None, {"scales": [1]}, "none", Augmentation()):
        pipe = pvtkit.pipeline("image-segmentation", model=str(tiny_seg), aug=aug)
        maps = list(pipe.run(images, formatted=False))
        assert all(torch.equal(r.output, t) for r, t in zip(maps, today))


@pytest.mark.parametrize(
    "scales, flip, aligned",
    [((0.5, 1.0, 1.5), False, False), ((1.0,), True, False), ((0.75, 1.25), True, True)],
    ids=["multi-scale", "flip", "multi-scale-flip-aligned"],
)
def test_whole_mode_views_average_as_the_hand_composition(tiny_seg, model, processor, scales, flip, aligned):
    """Whole mode: each view resized from the processor's 32x32, probabilities averaged at the image's 45x50."""
    images = [image.convert("RGB").crop((0, 0, 50, 45)) for image, _ in digit_canvases(2, size=50, seed=4)]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    aug = Augmentation(scales, flip, aligned)
    with torch.no_grad():
        found = tta_probabilities(model, pixels, [(45, 50)] * 2, aug)
    pipe = pvtkit.pipeline("image-segmentation", model=str(tiny_seg), aug=aug)
    maps = [r.output for r in pipe.run(images, formatted=False)]
    single = semantic_segmentation(model(pixel_values=pixels).logits.detach(), [(45, 50)] * 2)
    for i in range(2):
        expected = hand_tta(model, pixels[i : i + 1], (45, 50), scales, flip, aligned)
        torch.testing.assert_close(found[i].double(), expected, atol=2e-6, rtol=0)
        sure = decided(expected)
        assert torch.equal(maps[i][sure], expected.argmax(1)[0][sure]) and sure.float().mean() > 0.95
        assert not torch.equal(maps[i], single[i])  # the views changed the answer: TTA ran


def write_wide_data(root: Path) -> Path:
    write_pairs(root / "val" / "images", root / "val" / "masks", wide_canvases(3, seed=5))
    write_pairs(root / "train" / "images", root / "train" / "masks", wide_canvases(1, seed=6), 3)
    return root


def test_eval_slide_mode_with_scales_and_flip_equals_the_hand_composition(tiny_seg, model, processor, tmp_path):
    """`pvtkit eval --mode slide --scales 0.75,1.25 --flip`: the image's short side to the 32 window (40x70 ->
    32x56), each scale's windows slid (24x42: one row of two clipped windows; 40x70: two rows of three), the
    softmax averaged at the mask's size; mIoU from scikit-learn's confusion matrix of the hand argmax, loss the
    mean -log p of the true class."""
    data = write_wide_data(tmp_path / "data")
    out = tmp_path / "report.json"
    argv = ["eval", "-m", str(tiny_seg), "-d", str(data), "--mode", "slide", "--scales", "0.75,1.25", "--flip"]
    assert main([*argv, "--format", "json", "-o", str(out), "-q", "--num-workers", "0"]) == 0
    report = json.loads(out.read_text())
    assert report["tta"] == {"scales": [0.75, 1.25], "flip": True, "aligned_resize": False}
    labels, predicted, nll, undecided = [], [], [], 0
    for path in sorted((data / "val" / "images").glob("*.jpg")):
        image = PIL.Image.open(path).convert("RGB")
        mask = torch.from_numpy(np.asarray(PIL.Image.open(data / "val" / "masks" / f"{path.stem}.png")).astype(int))
        resized = image.resize((56, 32), PIL.Image.Resampling.BILINEAR)  # short side 40 -> 32, 70 -> 56
        pixels = processor(resized, do_resize=False, return_tensors="pt")["pixel_values"]
        p = hand_tta(model, pixels, tuple(mask.shape), (0.75, 1.25), True, slide=(32, 21))
        labels.append(mask.ravel().numpy())
        predicted.append(p.argmax(1)[0].ravel().numpy())
        undecided += int((~decided(p)).sum())
        nll.append(-torch.log(p[0].gather(0, mask[None]))[0].ravel().numpy())
    labels, predicted = np.concatenate(labels), np.concatenate(predicted)
    cm = confusion_matrix(labels, predicted, labels=list(range(K))).astype(float)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = np.diag(cm)[union > 0] / union[union > 0]
    # a pixel whose two best classes tie within float rounding may go either way: it moves one count between cells
    assert np.abs(np.array(report["confusion_matrix"]["counts"]) - cm).sum() <= 2 * undecided < 0.05 * len(labels)
    assert report["mean_iou"] == pytest.approx(iou.mean(), abs=1e-12 if undecided == 0 else 0.02)
    assert report["loss"] == pytest.approx(np.concatenate(nll).mean(), rel=1e-5)
    plain = tmp_path / "plain.json"
    assert main([*argv[:-3], "--format", "json", "-o", str(plain), "-q", "--num-workers", "0"]) == 0
    assert json.loads(plain.read_text())["tta"] is None
    assert main([*argv, "-q", "--num-workers", "0"]) == 0  # the table names the augmentation


def test_eval_table_and_segment_cli_run_the_augmentation(tiny_seg, model, processor, tmp_path, capsys):
    data = write_wide_data(tmp_path / "data")
    argv = ["eval", "-m", str(tiny_seg), "-d", str(data), "--scales", "0.5,1", "--flip", "--aligned-resize", "-q"]
    assert main([*argv, "--num-workers", "0"]) == 0
    assert "test-time aug     scales 0.5, 1 + flip (4 views), aligned resize" in capsys.readouterr().out
    image_path = data / "val" / "images" / "0000.jpg"
    out = tmp_path / "seg"
    argv = ["segment", str(image_path), "-m", str(tiny_seg), "-o", str(out), "--format", "json", "--num-workers", "0"]
    assert main([*argv, "--scales", "0.5,1", "--flip", "--aligned-resize"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    written = torch.from_numpy(np.asarray(PIL.Image.open(record["label_png"])).astype(np.int64))
    image = PIL.Image.open(image_path).convert("RGB")
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    expected = hand_tta(model, pixels, (40, 70), (0.5, 1.0), True, aligned=True)
    sure = decided(expected)
    assert torch.equal(written[sure], expected.argmax(1)[0][sure]) and sure.float().mean() > 0.95


# ---- serving -----------------------------------------------------------------------------------------------------


def serve_answer(source: Path, aug, image: PIL.Image.Image):
    pytest.importorskip("kserve")
    from pvtkit.serving import ImageModel

    served = ImageModel("m", str(source), device="cpu", aug=aug, warmup=False, max_delay_ms=0)
    served.load()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    try:
        return asyncio.run(served.run_images([("x.png", buffer.getvalue())])).answers[0]
    finally:
        served.stop()


def test_the_server_answers_what_the_augmented_pipeline_does(tiny_seg):
    image = wide_canvases(1, seed=9)[0][0]
    aug = {"scales": [0.75, 1.5], "flip": True}
    pipe = pvtkit.pipeline("image-segmentation", model=str(tiny_seg), aug=aug)
    expected = next(iter(pipe.run([image], formatted=False))).output.numpy()
    np.testing.assert_array_equal(serve_answer(tiny_seg, aug, image), expected)


def test_the_depth_server_and_pipeline_flip_average_the_mirrored_depth(tmp_path):
    torch.manual_seed(0)
    config = pvtkit.GLPNConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16
    )
    glpn = pvtkit.GLPNForDepthEstimation(config).eval()
    glpn.save_pretrained(tmp_path / "glpn")
    pvtkit.GLPNImageProcessor().save_pretrained(tmp_path / "glpn")
    image = wide_canvases(1, seed=9)[0][0].resize((70, 64))
    pixels = pvtkit.GLPNImageProcessor()(image, return_tensors="pt")["pixel_values"]  # 64x64: multiples of 32
    with torch.no_grad():
        mean = (
            glpn(pixel_values=pixels).predicted_depth
            + torch.flip(glpn(pixel_values=torch.flip(pixels, [3])).predicted_depth, [2])
        ) / 2
    expected = F.interpolate(mean[:, None], size=(64, 70), mode="bicubic", align_corners=False)[0, 0]
    piped = pvtkit.pipeline("depth", model=str(tmp_path / "glpn"), flip=True)(image)["predicted_depth"]
    torch.testing.assert_close(piped, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.from_numpy(serve_answer(tmp_path / "glpn", "flip", image)), expected, atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="segmentation models, --flip alone also for depth"):
        serve_answer(tmp_path / "glpn", {"scales": [1, 2]}, image)
