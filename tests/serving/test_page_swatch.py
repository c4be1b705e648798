"""`pvtkit serve`'s page shows each segmentation class's colour beside its share, so the overlay can be read: the
upload record gives each class the colour the overlay paints it (`visualize.palette`), checked against the overlay's
own pixels, and the page draws it, checked in a real headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import socket
import threading
import time

import numpy as np
import PIL.Image
import pytest
import requests
import skimage.data
import torch
from scipy import ndimage

import pvtkit
from pvtkit.serving import ImageModel, build_app, make_server
from pvtkit.visualize import palette

pytestmark = pytest.mark.integration  # the real KServe model server

SEG_LABELS = {0: "sky", 1: "cat", 2: "cup", 3: "road", 4: "tree"}


@pytest.fixture(scope="module")
def photo() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(skimage.data.chelsea()).save(buffer, format="PNG")  # lossless: the overlay's only JPEG
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny random SegFormer (its answer on chelsea spans several classes), served on a free loopback port."""
    path = tmp_path_factory.mktemp("swatch") / "tiny-seg"
    torch.manual_seed(6)
    config = pvtkit.SegformerConfig(
        depths=(1, 1, 1, 1),
        hidden_sizes=(8, 16, 24, 32),
        num_attention_heads=(1, 2, 3, 4),
        decoder_hidden_size=16,
        num_labels=5,
        id2label=SEG_LABELS,
    )
    pvtkit.SegformerForSemanticSegmentation(config).save_pretrained(path)
    pvtkit.SegformerImageProcessor(size=64).save_pretrained(path)
    model = ImageModel("tiny-seg", str(path))
    model.load()
    app = build_app([model], max_body_mb=5.0, grace_s=5.0)
    server = make_server(app, grace_s=5.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not become ready"
        with contextlib.suppress(requests.ConnectionError):
            if server.started and requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                break
        time.sleep(0.05)
    try:
        yield url, path
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def test_each_class_has_the_colour_the_overlay_paints_it(served, photo):
    url, path = served
    record = requests.post(f"{url}/predict?model=tiny-seg&overlay=1", files={"file": ("cat.png", photo)}, timeout=60)
    record = record.json()
    assert len(record["classes"]) >= 2
    for entry in record["classes"]:
        assert entry["color"] == "#{:02x}{:02x}{:02x}".format(*palette(len(SEG_LABELS))[entry["id"]])
    # The overlay is the image blended half and half with the class colours: undo the blend inside each class's
    # larger regions (away from its edges, where JPEG smears) and the colour is the record's.
    pipe = pvtkit.pipeline("image-segmentation", model=str(path))
    image = pvtkit.load_image(photo)
    classes = next(pipe.run([image], formatted=False)).output.numpy()
    overlay = PIL.Image.open(io.BytesIO(base64.b64decode(record["overlay"].split(",", 1)[1])))
    painted = 2 * np.asarray(overlay, dtype=np.float64) - np.asarray(image, dtype=np.float64)
    checked = 0
    for entry in record["classes"]:
        inside = ndimage.binary_erosion(classes == entry["id"], iterations=4)
        if inside.sum() < 500:
            continue
        colour = np.array([int(entry["color"][i : i + 2], 16) for i in (1, 3, 5)])
        assert np.abs(np.median(painted[inside], axis=0) - colour).max() <= 12, entry
        checked += 1
    assert checked >= 2


@pytest.mark.browser
def test_the_page_shows_each_class_s_colour_beside_its_share(served, photo, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = served
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    image_file = tmp_path / "cat.png"
    image_file.write_bytes(photo)
    record = requests.post(f"{url}/predict?model=tiny-seg", files={"file": ("cat.png", photo)}, timeout=60).json()
    shown = record["classes"][:5]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            page.set_input_files("#file", str(image_file))
            page.wait_for_selector("#overlay:not([hidden])")
            assert page.locator("td.label").all_inner_texts() == [c["label"] for c in shown]
            assert page.locator("td.score").all_inner_texts() == [f"{100 * c['fraction']:.2f}%" for c in shown]
            colours = page.eval_on_selector_all(
                "td.label .swatch", "spans => spans.map((s) => getComputedStyle(s).backgroundColor)"
            )
            expected = ["rgb({}, {}, {})".format(*(int(c["color"][i : i + 2], 16) for i in (1, 3, 5))) for c in shown]
            assert colours == expected
            box = page.locator("td.label .swatch").first.bounding_box()
            assert box is not None and box["width"] > 5 and box["height"] > 5  # visible, not an empty inline span
        finally:
            browser.close()
