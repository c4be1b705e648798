"""`pvtkit serve`: KServe's V1/V2 protocols through real clients (tritonclient, requests, headless Chromium),
dynamic batching, limits, readiness, metrics and a graceful stop, on tiny random checkpoints.

The reference for every answer is pvtkit's own pipeline (itself tested against transformers' pipeline) on the
same image bytes: what the server says must be what `pvtkit classify` / `pvtkit segment` say.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import requests
import skimage.data
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import pvtkit
from pvtkit.cli import main
from pvtkit.serving import DynamicBatcher, ImageModel, Overloaded, build_app, make_server

from helpers import tiny_detector

pytestmark = pytest.mark.integration  # with the real KServe's model server, Triton's clients

TINY_PVT = dict(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4))
LABELS = {0: "cat", 1: "dog", 2: "cup", 3: "rocket", 4: "coin", 5: "camera", 6: "astronaut"}
SEG_LABELS = {0: "sky", 1: "cat", 2: "cup", 3: "road", 4: "tree"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """scikit-image's photos, encoded as clients send them: JPEG, grayscale PNG, RGBA PNG, palette GIF."""
    return {
        "chelsea.jpg": encoded(skimage.data.chelsea(), "JPEG", quality=90),
        "astronaut.jpg": encoded(skimage.data.astronaut()[::2, ::2], "JPEG", quality=90),
        "camera.png": encoded(skimage.data.camera()[::4, ::4], "PNG"),
        "logo.png": encoded(skimage.data.logo(), "PNG"),
        "coffee.gif": encoded(
            np.asarray(PIL.Image.fromarray(skimage.data.coffee()).convert("P").convert("RGB")), "GIF"
        ),
    }


@pytest.fixture(scope="module")
def pvt_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-pvt") / "tiny-pvt"
    torch.manual_seed(5)
    pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY_PVT, id2label=LABELS)).save_pretrained(path)
    pvtkit.PvtImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-seg") / "tiny-seg"
    torch.manual_seed(6)
    config = pvtkit.SegformerConfig(**TINY_PVT, decoder_hidden_size=16, num_labels=5, id2label=SEG_LABELS)
    pvtkit.SegformerForSemanticSegmentation(config).save_pretrained(path)
    pvtkit.SegformerImageProcessor(size=64).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-depth") / "tiny-glpn"
    torch.manual_seed(7)
    config = pvtkit.GLPNConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 3, 4], decoder_hidden_size=16
    )
    pvtkit.GLPNForDepthEstimation(config).save_pretrained(path)
    pvtkit.GLPNImageProcessor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(pvt_dir):
    """The pipeline the server's answers must equal."""
    return pvtkit.pipeline("image-classification", model=str(pvt_dir), top_k=5)


def reference_logits(reference, data: bytes) -> np.ndarray:
    image = pvtkit.load_image(data)
    pixels = reference.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return reference.model(pixel_values=pixels).logits[0].numpy()


@contextlib.contextmanager
def serving(*models: ImageModel, max_body_mb: float = 20.0, grace_s: float = 10.0, grpc_address: str | None = None):
    """`models` (loaded) served on a free loopback port in a background thread; yields the base URL."""
    app = build_app(list(models), max_body_mb=max_body_mb, grpc_address=grpc_address, grace_s=grace_s)
    server = make_server(app, grace_s=grace_s)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


def loaded(name: str, source, **options) -> ImageModel:
    model = ImageModel(name, str(source), **options)
    model.load()
    return model


@pytest.fixture(scope="module")
def server(pvt_dir, seg_dir):
    """Both tiny models behind one server, with a 1 MiB body limit."""
    with serving(loaded("tiny-pvt", pvt_dir, max_batch_size=4), loaded("tiny-seg", seg_dir), max_body_mb=1) as url:
        wait_ready(url)
        yield url


# ------------------------------------------------------------------------------------------------ protocols


def test_v2_with_tritonclient_binary_and_json(server, photos, reference):
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny-pvt")
    meta = client.get_model_metadata("tiny-pvt")
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "pixel_values": "FP32"}
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities", "labels", "scores"]
    names = list(photos)
    blobs = np.array([photos[n] for n in names], dtype=np.object_)
    expected = np.stack([reference_logits(reference, photos[n]) for n in names])
    records = [reference([pvtkit.load_image(photos[n])])[0] for n in names]

    image = triton.InferInput("image", [len(names)], "BYTES")
    image.set_data_from_numpy(blobs, binary_data=True)
    outputs = [
        triton.InferRequestedOutput("logits", binary_data=True),
        triton.InferRequestedOutput("labels", binary_data=True),
        triton.InferRequestedOutput("scores", binary_data=False),
        triton.InferRequestedOutput("probabilities", class_count=3),
    ]
    result = client.infer("tiny-pvt", [image], outputs=outputs, parameters={"top_k": 4})
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    labels = [[b.decode() for b in row] for row in result.as_numpy("labels")]
    assert labels == [[r["label"] for r in rec[:4]] for rec in records]
    np.testing.assert_allclose(result.as_numpy("scores"), [[r["score"] for r in rec[:4]] for rec in records], rtol=1e-5)
    top3 = [[b.decode().split(":", 2) for b in row] for row in result.as_numpy("probabilities")]
    assert [[label for _, _, label in row] for row in top3] == [[r["label"] for r in rec[:3]] for rec in records]
    assert [[LABELS[int(i)] for _, i, _ in row] for row in top3] == [[r["label"] for r in rec[:3]] for rec in records]

    # JSON only (no binary extension): the images as base64 text; the default outputs.
    image = triton.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(
        np.array([[base64.b64encode(photos["chelsea.jpg"])]], dtype=np.object_), binary_data=False
    )
    result = client.infer("tiny-pvt", [image], outputs=[triton.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("logits")[0], expected[0], rtol=1e-5, atol=1e-6)

    # Preprocessed FP32 pixels, binary.
    pixels = reference.image_processor([pvtkit.load_image(photos[n]) for n in names[:2]], return_tensors="np")
    tensor = triton.InferInput("pixel_values", list(pixels["pixel_values"].shape), "FP32")
    tensor.set_data_from_numpy(pixels["pixel_values"], binary_data=True)
    result = client.infer("tiny-pvt", [tensor], outputs=[triton.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), expected[:2], rtol=1e-5, atol=1e-6)


GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

client = triton.InferenceServerClient(sys.argv[1])
out = {"live": client.is_server_live(), "ready": client.is_server_ready(), "model": client.is_model_ready("tiny-pvt")}
blobs = [open(path, "rb").read() for path in sys.argv[2:]]
image = triton.InferInput("image", [len(blobs)], "BYTES")
image.set_data_from_numpy(np.array(blobs, dtype=np.object_))
result = client.infer("tiny-pvt", [image], outputs=[triton.InferRequestedOutput("logits"),
                                                     triton.InferRequestedOutput("labels")])
out["logits"] = result.as_numpy("logits").tolist()
out["labels"] = [[b.decode() for b in row] for row in result.as_numpy("labels")]
bad = triton.InferInput("image", [1], "BYTES")
bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
for name, model, inputs in [("bad", "tiny-pvt", [bad]), ("missing", "no-such-model", [image])]:
    try:
        client.infer(model, inputs)
    except InferenceServerException as e:
        out[name] = [e.status(), e.message()]
print(json.dumps(out))
"""


def test_v2_over_grpc_with_tritonclient(pvt_dir, photos, reference, tmp_path):
    # tritonclient.grpc and KServe register the same protobuf names: the client runs in a process of its own.
    names = ["chelsea.jpg", "logo.png"]
    for n in names:
        (tmp_path / n).write_bytes(photos[n])
    port = free_port()
    with serving(loaded("tiny-pvt", pvt_dir, max_batch_size=4), grpc_address=f"127.0.0.1:{port}") as url:
        wait_ready(url)
        run = subprocess.run(
            [sys.executable, "-c", GRPC_CLIENT, f"127.0.0.1:{port}", *(str(tmp_path / n) for n in names)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["live"] and out["ready"] and out["model"]
    expected = np.stack([reference_logits(reference, photos[n]) for n in names])
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-6)
    assert out["labels"] == [[r["label"] for r in reference([pvtkit.load_image(photos[n])])[0]] for n in names]
    assert out["bad"][0] == "StatusCode.INVALID_ARGUMENT" and "cannot decode as an image" in out["bad"][1]
    assert out["missing"][0] == "StatusCode.NOT_FOUND"


def test_v2_errors_through_tritonclient(server, photos):
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    bad = triton.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"GIF89a but not really"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match=r"\[400\].*cannot decode as an image"):
        client.infer("tiny-pvt", [bad])
    ints = triton.InferInput("pixel_values", [1, 3, 64, 64], "INT32")
    ints.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.int32))
    with pytest.raises(InferenceServerException, match=r"\[400\].*datatype INT32"):
        client.infer("tiny-pvt", [ints])
    flat = triton.InferInput("pixel_values", [1, 4, 64, 64], "FP32")
    flat.set_data_from_numpy(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(InferenceServerException, match=r"\[400\].*shape \(3, height, width\)"):
        client.infer("tiny-pvt", [flat])
    good = triton.InferInput("image", [1], "BYTES")
    good.set_data_from_numpy(np.array([photos["chelsea.jpg"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"\[400\].*no output 'boxes'"):
        client.infer("tiny-pvt", [good], outputs=[triton.InferRequestedOutput("boxes")])
    with pytest.raises(InferenceServerException, match=r"\[404\]"):
        client.infer("no-such-model", [good])


def test_v1_tf_serving_and_vertex_instances(server, photos, reference):
    b64 = {n: base64.b64encode(d).decode() for n, d in photos.items()}
    body = {
        "instances": [{"b64": b64["chelsea.jpg"]}, {"image_bytes": {"b64": b64["logo.png"]}, "key": "x"}],
        "parameters": {"top_k": 3},
    }
    r = requests.post(f"{server}/v1/models/tiny-pvt:predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    expected = reference([pvtkit.load_image(photos["chelsea.jpg"]), pvtkit.load_image(photos["logo.png"])], top_k=3)
    got = r.json()["predictions"]
    assert [[p["label"] for p in g] for g in got] == [[p["label"] for p in e] for e in expected]
    np.testing.assert_allclose(
        [[p["score"] for p in g] for g in got], [[p["score"] for p in e] for e in expected], rtol=1e-5
    )
    assert requests.get(f"{server}/v1/models/tiny-pvt", timeout=10).json() == {"name": "tiny-pvt", "ready": True}


def test_predict_upload_answers_like_classify_json(server, photos, tmp_path, capsys, pvt_dir):
    (tmp_path / "chelsea.jpg").write_bytes(photos["chelsea.jpg"])
    assert (
        main(["classify", str(tmp_path / "chelsea.jpg"), "-m", str(pvt_dir), "--format", "json", "--num-workers", "0"])
        == 0
    )
    cli = json.loads(capsys.readouterr().out.splitlines()[0])
    r = requests.post(
        f"{server}/predict?model=tiny-pvt", files={"file": ("chelsea.jpg", photos["chelsea.jpg"])}, timeout=30
    )
    assert r.status_code == 200, r.text
    upload = r.json()
    assert upload["path"] == "chelsea.jpg" and [p["label"] for p in upload["predictions"]] == [
        p["label"] for p in cli["predictions"]
    ]
    np.testing.assert_allclose(
        [p["score"] for p in upload["predictions"]], [p["score"] for p in cli["predictions"]], rtol=1e-5
    )
    raw = requests.post(
        f"{server}/predict", data=photos["chelsea.jpg"], headers={"content-type": "image/jpeg"}, timeout=30
    ).json()  # the first model is the default
    assert raw["predictions"] == upload["predictions"]
    several = requests.post(
        f"{server}/predict?top_k=2",
        files=[("a", ("a.png", photos["camera.png"])), ("b", ("b.gif", photos["coffee.gif"]))],
        timeout=30,
    )
    assert [r["path"] for r in several.json()] == ["a.png", "b.gif"]
    assert all(len(r["predictions"]) == 2 for r in several.json())


def test_segmentation_model(server, photos, seg_dir):
    pipe = pvtkit.pipeline("image-segmentation", model=str(seg_dir))
    image = pvtkit.load_image(photos["chelsea.jpg"])
    classes = pipe.run([image], formatted=False).__next__().output.numpy()
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photos["chelsea.jpg"]], dtype=np.object_))
    result = client.infer("tiny-seg", [tensor])
    np.testing.assert_array_equal(result.as_numpy("segmentation")[0], classes)
    r = requests.post(
        f"{server}/predict?model=tiny-seg&overlay=1", files={"file": ("cat.jpg", photos["chelsea.jpg"])}, timeout=30
    ).json()
    ids, counts = np.unique(classes, return_counts=True)
    assert r["size"] == list(classes.shape)
    assert {c["id"]: c["pixels"] for c in r["classes"]} == dict(zip(ids.tolist(), counts.tolist()))
    overlay = PIL.Image.open(io.BytesIO(base64.b64decode(r["overlay"].split(",", 1)[1])))
    assert overlay.size == (image.width, image.height)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-detr") / "tiny-detr"
    tiny_detector(seed=2).save_pretrained(path)
    pvtkit.DeformableDetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}).save_pretrained(path)
    return path


def test_detection_model_over_v2_v1_and_predict(detector_dir, photos):
    """A Deformable DETR answers V2's `boxes` (FP32 [N, K, 4]), `scores` and `labels` (the class ids), padded to the
    request's most detections with score 0 and label -1, equal to `pvtkit.pipeline("object-detection")`; V1 and
    `/predict` answer the pipeline's own records, and `/predict?overlay=1` the photo with the boxes drawn."""
    pipe = pvtkit.pipeline("object-detection", model=str(detector_dir))
    images = [photos["chelsea.jpg"], photos["astronaut.jpg"]]
    expected = [pipe(pvtkit.load_image(d)) for d in images]
    assert expected[0] and len(expected[0]) != len(expected[1])  # something to compare, and padding to do
    ids = {name: i for i, name in pipe.model.config.id2label.items()}
    with serving(loaded("tiny-detr", detector_dir, max_batch_size=2)) as url:
        wait_ready(url)
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        meta = client.get_model_metadata("tiny-detr")
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
            ("boxes", "FP32"),
            ("scores", "FP32"),
            ("labels", "INT64"),
        ]
        tensor = triton.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        result = client.infer("tiny-detr", [tensor])
        boxes, scores, labels = (result.as_numpy(n) for n in ("boxes", "scores", "labels"))
        most = max(len(e) for e in expected)
        assert boxes.shape == (2, most, 4) and scores.shape == labels.shape == (2, most)
        for i, records in enumerate(expected):
            n = len(records)
            np.testing.assert_allclose(scores[i, :n], [r["score"] for r in records], rtol=1e-4, atol=1e-6)
            assert labels[i, :n].tolist() == [ids[r["label"]] for r in records]
            corners = [[r["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for r in records]
            np.testing.assert_allclose(boxes[i, :n], corners, atol=1.01)  # the records truncate to pixels
            assert (scores[i, n:] == 0).all() and (labels[i, n:] == -1).all()
        only = client.infer("tiny-detr", [tensor], outputs=[triton.InferRequestedOutput("scores", binary_data=False)])
        assert only.as_numpy("boxes") is None and only.as_numpy("scores").shape == (2, most)

        body = {"instances": [{"b64": base64.b64encode(d).decode()} for d in images]}
        r = requests.post(f"{url}/v1/models/tiny-detr:predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        for got, want in zip(r.json()["predictions"], expected):
            assert [(d["label"], d["box"]) for d in got] == [(d["label"], d["box"]) for d in want]
        r = requests.post(f"{url}/predict?overlay=1", files={"file": ("cat.jpg", images[0])}, timeout=60)
        assert r.status_code == 200, r.text
        record = r.json()
        assert record["path"] == "cat.jpg" and [d["box"] for d in record["detections"]] == [
            d["box"] for d in expected[0]
        ]
        drawn = PIL.Image.open(io.BytesIO(base64.b64decode(record["overlay"].split(",", 1)[1])))
        photo = pvtkit.load_image(images[0])
        assert drawn.size == photo.size and np.abs(np.asarray(drawn, float) - np.asarray(photo, float)).max() > 100


DEPTH_GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

client = triton.InferenceServerClient(sys.argv[1])
meta = client.get_model_metadata("tiny-glpn", as_json=True)
out = {"outputs": [[o["name"], o["datatype"]] for o in meta["outputs"]]}
blobs = [open(path, "rb").read() for path in sys.argv[2:]]
same = triton.InferInput("image", [2], "BYTES")
same.set_data_from_numpy(np.array(blobs[:2], dtype=np.object_))
result = client.infer("tiny-glpn", [same], outputs=[triton.InferRequestedOutput("predicted_depth")])
out["depth"] = result.as_numpy("predicted_depth").tolist()
out["dtype"] = str(result.as_numpy("predicted_depth").dtype)
mixed = triton.InferInput("image", [2], "BYTES")
mixed.set_data_from_numpy(np.array([blobs[0], blobs[2]], dtype=np.object_))
try:
    client.infer("tiny-glpn", [mixed])
except InferenceServerException as e:
    out["mixed"] = [e.status(), e.message()]
print(json.dumps(out))
"""


def test_depth_model_over_v2_rest_and_grpc_v1_and_predict(depth_dir, photos, tmp_path):
    """A GLPN answers V2's `predicted_depth` (FP32 [N, H, W] at the images' size) equal to `pvtkit.pipeline("depth")`
    over REST and gRPC, V1 and `/predict` the depth's statistics (and `/predict` a 16-bit PNG in millimetres); images
    of different sizes in one V2 request are a clear 400."""
    pipe = pvtkit.pipeline("depth", model=str(depth_dir))
    cat = photos["chelsea.jpg"]
    mirrored = encoded(skimage.data.chelsea()[:, ::-1].copy(), "PNG")  # the same size as chelsea, another image
    expected = np.stack([pipe(pvtkit.load_image(d))["predicted_depth"].numpy() for d in (cat, mirrored)])
    assert expected.shape == (2, 300, 451)
    names = {"cat.jpg": cat, "mirrored.png": mirrored, "logo.png": photos["logo.png"]}
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
    port = free_port()
    with serving(loaded("tiny-glpn", depth_dir, max_batch_size=4), grpc_address=f"127.0.0.1:{port}") as url:
        wait_ready(url)
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        meta = client.get_model_metadata("tiny-glpn")
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("predicted_depth", "FP32")]
        image = triton.InferInput("image", [2], "BYTES")
        image.set_data_from_numpy(np.array([cat, mirrored], dtype=np.object_), binary_data=True)
        result = client.infer("tiny-glpn", [image])  # the default output
        depth = result.as_numpy("predicted_depth")
        assert depth.dtype == np.float32 and depth.shape == (2, 300, 451)
        np.testing.assert_allclose(depth, expected, rtol=1e-4, atol=1e-6)
        as_json = client.infer(
            "tiny-glpn", [image], outputs=[triton.InferRequestedOutput("predicted_depth", binary_data=False)]
        )
        np.testing.assert_allclose(as_json.as_numpy("predicted_depth"), expected, rtol=1e-4, atol=1e-6)

        mixed = triton.InferInput("image", [2], "BYTES")
        mixed.set_data_from_numpy(np.array([cat, photos["logo.png"]], dtype=np.object_), binary_data=True)
        with pytest.raises(InferenceServerException, match=r"\[400\].*different sizes \(300x451, 500x500\)"):
            client.infer("tiny-glpn", [mixed])

        run = subprocess.run(
            [sys.executable, "-c", DEPTH_GRPC_CLIENT, f"127.0.0.1:{port}", *(str(tmp_path / n) for n in names)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout)
        assert out["outputs"] == [["predicted_depth", "FP32"]] and out["dtype"] == "float32"
        np.testing.assert_allclose(out["depth"], expected, rtol=1e-4, atol=1e-6)
        assert out["mixed"][0] == "StatusCode.INVALID_ARGUMENT" and "different sizes" in out["mixed"][1]

        def stats(d: np.ndarray) -> dict:
            return {"size": list(d.shape), "min": d.min(), "max": d.max(), "mean": d.mean(), "median": np.median(d)}

        body = {"instances": [{"b64": base64.b64encode(d).decode()} for d in (cat, photos["logo.png"])]}
        r = requests.post(f"{url}/v1/models/tiny-glpn:predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        logo = pipe(pvtkit.load_image(photos["logo.png"]))["predicted_depth"].numpy()
        for got, want in zip(r.json()["predictions"], (stats(expected[0]), stats(logo))):
            assert got["size"] == want.pop("size") and set(got) == {"size", *want}
            for key, value in want.items():
                assert got[key] == pytest.approx(float(value), rel=1e-4), key

        r = requests.post(f"{url}/predict?overlay=1", files={"file": ("cat.jpg", cat)}, timeout=60)
        assert r.status_code == 200, r.text
        record = r.json()
        assert record["path"] == "cat.jpg" and record["size"] == [300, 451] and record["depth_scale"] == 1000.0
        assert record["median"] == pytest.approx(float(np.median(expected[0])), rel=1e-4)
        png = PIL.Image.open(io.BytesIO(base64.b64decode(record["depth_png"])))
        assert png.mode.startswith("I") and png.text["depth_scale"] == "1000.0"
        np.testing.assert_allclose(np.asarray(png).astype(np.float64) / 1000, expected[0], atol=0.6e-3)
        view = PIL.Image.open(io.BytesIO(base64.b64decode(record["overlay"].split(",", 1)[1])))
        assert view.size == (451, 300)
        models = requests.get(f"{url}/models", timeout=10).json()
        assert models == [
            {"name": "tiny-glpn", "task": "depth-estimation", "ready": True, "labels": 0, "overlay": True}
        ]


# ------------------------------------------------------------------------------------------------ bad input


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


SHORT_BINARY = b'{"inputs":[{"name":"i","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":50}}]}'


def test_bad_requests_get_a_clear_answer_and_the_server_stays_up(server, photos):
    jpg = photos["chelsea.jpg"]
    v2 = f"{server}/v2/models/tiny-pvt/infer"
    v1 = f"{server}/v1/models/tiny-pvt:predict"
    json_type = {"content-type": "application/json"}
    cases = [
        ("truncated JPEG", f"{server}/predict", jpg[: len(jpg) // 3], {"content-type": "image/jpeg"}, 400, "truncated"),
        ("not an image", f"{server}/predict", b"hello, world", {"content-type": "image/png"}, 400, "cannot decode"),
        ("empty body", f"{server}/predict", b"", {"content-type": "image/jpeg"}, 400, "empty"),
        ("wrong content type", f"{server}/predict", jpg, {"content-type": "text/plain"}, 400, "content type"),
        ("no file in form", f"{server}/predict", None, None, 400, "no file"),
        ("bomb", f"{server}/predict", bomb_png(), {"content-type": "image/png"}, 400, "refusing to decode"),
        (
            "over the body limit",
            f"{server}/predict",
            b"\xff" * (2 * 2**20),
            {"content-type": "image/jpeg"},
            413,
            "MiB limit",
        ),
        ("unknown model", f"{server}/predict?model=nope", jpg, {"content-type": "image/jpeg"}, 404, "nope"),
        ("bad top_k", f"{server}/predict?top_k=zero", jpg, {"content-type": "image/jpeg"}, 400, "top_k"),
        ("malformed JSON v2", v2, b"{not json", json_type, 400, "JSON"),
        ("inputs not a list", v2, b'{"inputs": 3}', json_type, 400, "inputs"),
        (
            "data not fitting the shape",
            v2,
            json.dumps(
                {"inputs": [{"name": "pixel_values", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [1.0, 2.0]}]}
            ).encode(),
            json_type,
            400,
            "pixel_values",
        ),
        (
            "two inputs",
            v2,
            json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}] * 2}).encode(),
            json_type,
            400,
            "one input",
        ),
        (
            "bad binary header",
            v2,
            b'{"inputs": []}xxxx',
            {"content-type": "application/octet-stream", "inference-header-content-length": "999"},
            400,
            "Inference-Header-Content-Length",
        ),
        (
            "binary size past the end",
            v2,
            SHORT_BINARY + b"abc",
            {"content-type": "application/octet-stream", "inference-header-content-length": str(len(SHORT_BINARY))},
            400,
            "runs past",
        ),
        ("unknown model v2", f"{server}/v2/models/nope/infer", b'{"inputs": []}', json_type, 404, "nope"),
        ("malformed JSON v1", v1, b"[[[", json_type, 400, "format"),
        ("no instances", v1, b'{"signature": "x"}', json_type, 400, "instances"),
        ("bad base64", v1, b'{"instances": [{"b64": "%%%"}]}', json_type, 400, "base64"),
        ("pixels of the wrong rank", v1, b'{"instances": [[1, 2, 3]]}', json_type, 400, "shape"),
        ("unknown model v1", f"{server}/v1/models/nope:predict", b'{"instances": []}', json_type, 404, "nope"),
        (
            "parameters not an object",
            v2,
            SHORT_BINARY[:-2] + b'],"parameters":[1]}',
            {"content-type": "application/octet-stream"},
            400,
            "parameters",
        ),
        (
            "more images than the queue holds",
            v1,
            json.dumps({"instances": [{"b64": "AAAA"}] * 300}).encode(),
            json_type,
            400,
            "per request",
        ),
        (
            "repository unload is not served",
            f"{server}/v2/repository/models/tiny-pvt/unload",
            b"",
            json_type,
            404,
            "not found",
        ),
    ]
    for name, url, body, headers, status, fragment in cases:
        if body is None:  # a multipart form with a text field only
            r = requests.post(url, files={"note": (None, "just text")}, timeout=30)
        else:
            r = requests.post(url, data=body, headers=headers, timeout=30)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert fragment.lower() in r.json()["error"].lower(), (name, r.text)
    chunked = requests.post(
        f"{server}/predict", data=iter([b"\xff" * 2**19] * 4), timeout=30, headers={"content-type": "image/jpeg"}
    )  # no Content-Length: refused as it arrives
    assert chunked.status_code == 413 and "MiB limit" in chunked.json()["error"]
    charset = requests.post(
        v1,
        data=json.dumps({"instances": [{"b64": base64.b64encode(jpg).decode()}]}),
        headers={"content-type": "application/json; charset=utf-8"},
        timeout=30,
    )
    assert charset.status_code == 200 and len(charset.json()["predictions"][0]) == 5
    assert requests.get(f"{server}/v2/health/live", timeout=10).status_code == 200
    ok = requests.post(f"{server}/predict", data=jpg, headers={"content-type": "image/jpeg"}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 5
    metrics = requests.get(f"{server}/metrics", timeout=10).text
    for line in [
        'pvtkit_request_errors_total{kind="bad_input"}',
        'pvtkit_request_errors_total{kind="too_large"}',
        'pvtkit_request_errors_total{kind="not_found"}',
        "pvtkit_batch_size_bucket",
        'pvtkit_queue_depth{model="tiny-pvt"}',
        "request_predict_seconds_bucket",
        'pvtkit_request_duration_seconds_bucket{le="0.005",route="/predict"}',
    ]:
        assert line in metrics, line


# ------------------------------------------------------------------------------------------------ batching


class Gate:
    """Wraps a model's forward so a test can hold batches in the model and see their sizes."""

    def __init__(self, model: ImageModel) -> None:
        self.forward, self.open, self.sizes, self.entered = model._forward, threading.Event(), [], threading.Event()
        model._forward = self  # type: ignore[method-assign]
        model.batcher.run = self

    def __call__(self, pixels: np.ndarray):
        self.entered.set()
        assert self.open.wait(60)
        self.sizes.append(len(pixels))
        return self.forward(pixels)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(pvt_dir, photos, reference):
    model = loaded("tiny-pvt", pvt_dir, max_batch_size=8, max_delay_ms=50, warmup=False)
    gate = Gate(model)
    gate.open.set()
    names = list(photos) * 4  # 20 requests, 5 different images
    with serving(model) as url, ThreadPoolExecutor(20) as pool:
        wait_ready(url)
        gate.open.clear()
        gate.entered.clear()
        gate.sizes.clear()
        first = pool.submit(
            requests.post, f"{url}/predict", data=photos[names[0]], timeout=60, headers={"content-type": "image/jpeg"}
        )
        assert gate.entered.wait(30)  # the first image is in the model; the rest queue behind it
        rest = [
            pool.submit(
                requests.post, f"{url}/predict", data=photos[n], headers={"content-type": "image/jpeg"}, timeout=60
            )
            for n in names[1:]
        ]
        deadline = time.monotonic() + 30
        while model.batcher.depth < len(rest) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.open.set()
        answers = [first.result().json()] + [f.result().json() for f in rest]
    assert sum(gate.sizes) == len(names) and max(gate.sizes) == 8, gate.sizes  # gathered, never beyond the limit
    for name, answer in zip(names, answers):
        expected = reference([pvtkit.load_image(photos[name])])[0]
        assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in expected], name
        np.testing.assert_allclose(
            [p["score"] for p in answer["predictions"]], [p["score"] for p in expected], rtol=1e-5
        )


def test_a_full_queue_answers_503_with_retry_after_and_a_deadline_504(pvt_dir, photos):
    busy = loaded("busy", pvt_dir, max_batch_size=1, max_queue=2, warmup=False)
    slow = loaded("slow", pvt_dir, max_batch_size=1, timeout_s=1.0, warmup=False)
    gates = [Gate(busy), Gate(slow)]

    def post(url: str) -> requests.Response:
        return requests.post(url, data=photos["chelsea.jpg"], headers={"content-type": "image/jpeg"}, timeout=60)

    with serving(busy, slow) as url, ThreadPoolExecutor(4) as pool:
        wait_ready(url)
        held = [pool.submit(post, f"{url}/predict?model=busy")]
        assert gates[0].entered.wait(30)
        held += [pool.submit(post, f"{url}/predict?model=busy") for _ in range(2)]
        deadline = time.monotonic() + 30
        while busy.batcher.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post(f"{url}/predict?model=busy")
        assert refused.status_code == 503 and "max-queue" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        started = time.monotonic()
        late = post(f"{url}/predict?model=slow")
        assert late.status_code == 504 and "deadline" in late.json()["error"], late.text
        assert 0.9 < time.monotonic() - started < 30
        for gate in gates:
            gate.open.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]  # the queued ones were not lost
        assert post(f"{url}/predict?model=busy").status_code == 200


def test_ready_only_after_warm_up(pvt_dir, photos):
    model = loaded("warming", pvt_dir)
    release = threading.Event()
    warm_up = model.warm_up
    model.warm_up = lambda: (release.wait(60), warm_up())  # type: ignore[method-assign]
    with serving(model) as url:
        assert requests.get(f"{url}/v2/health/live", timeout=10).status_code == 200
        assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 503
        assert requests.get(f"{url}/v2/models/warming/ready", timeout=10).status_code == 503
        early = requests.post(
            f"{url}/predict", data=photos["chelsea.jpg"], headers={"content-type": "image/jpeg"}, timeout=30
        )
        assert early.status_code == 503
        release.set()
        wait_ready(url)
        assert requests.get(f"{url}/v2/models/warming/ready", timeout=10).status_code == 200


def test_a_failed_warm_up_is_logged_and_keeps_the_model_unready(pvt_dir, caplog):
    model = loaded("broken", pvt_dir)

    def fail(pixels):
        raise RuntimeError("out of memory at batch 16")

    model._forward = fail  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="pvtkit.serve"), serving(model) as url:
        deadline = time.monotonic() + 30
        while model.warm_up_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        r = requests.get(f"{url}/v2/health/ready", timeout=10)
        assert r.status_code == 503 and "warm-up failed: broken (out of memory at batch 16)" in r.json()["error"]
    assert any("warm-up of broken failed" in m for m in caplog.messages)


def test_batcher_bounds_its_queue_and_drops_what_timed_out():
    release = threading.Event()
    seen = []

    def run(batch):
        release.wait(30)
        seen.append(batch[:, 0, 0, 0].tolist())
        return [float(b[0, 0, 0]) for b in batch]

    async def scenario():
        batcher = DynamicBatcher(run, max_batch_size=4, max_delay_s=0.0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.full((1, 1, 1), 0.0, np.float32)))
        while not batcher._in_flight:
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(np.full((1, 1, 1), v, np.float32))) for v in (1.0, 2.0)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await batcher.submit(np.zeros((1, 1, 1), np.float32))
        with pytest.raises(asyncio.TimeoutError):  # a request's deadline: its image leaves the queue unrun
            await asyncio.wait_for(queued[0], 0.05)
        assert batcher.depth == 1
        other = asyncio.ensure_future(batcher.submit(np.full((1, 2, 1), 5.0, np.float32)))  # another shape
        release.set()
        results = await asyncio.gather(first, queued[1], other)
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [0.0, 2.0, 5.0]
    assert seen == [[0.0], [2.0], [5.0]]  # the timed-out 1.0 never ran; shapes never mixed


# ------------------------------------------------------------------------------------------------ the page


@pytest.mark.browser
def test_the_page_in_headless_chromium(server, photos, tmp_path, reference):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    (tmp_path / "chelsea.jpg").write_bytes(photos["chelsea.jpg"])
    expected = [p["label"] for p in reference([pvtkit.load_image(photos["chelsea.jpg"])])[0]]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.wait_for_selector("#model option", state="attached")
            assert page.locator("#model option").all_inner_texts() == [
                "tiny-pvt (image-classification)",
                "tiny-seg (image-segmentation)",
            ]
            page.set_input_files("#file", str(tmp_path / "chelsea.jpg"))
            page.wait_for_selector("#results:not([hidden]) td.label")
            assert page.locator("td.label").all_inner_texts() == expected
            page.select_option("#model", "tiny-seg")  # the same image again, segmented
            page.wait_for_selector("#overlay:not([hidden])")
            assert page.locator("td.label").all_inner_texts()[0] in SEG_LABELS.values()
            assert page.evaluate("document.getElementById('overlay').naturalWidth") == 451  # chelsea is 451 wide
            page.set_input_files("#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a jpeg"})
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "cannot decode" in page.locator("#error").inner_text()
        finally:
            browser.close()


@pytest.mark.browser
def test_the_page_shows_a_depth_model_s_coloured_depth(depth_dir, photos, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    (tmp_path / "chelsea.jpg").write_bytes(photos["chelsea.jpg"])
    depth = pvtkit.pipeline("depth", model=str(depth_dir))(pvtkit.load_image(photos["chelsea.jpg"]))["predicted_depth"]
    with serving(loaded("tiny-glpn", depth_dir)) as url, sync_playwright() as p:
        wait_ready(url)
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            assert page.locator("#model option").all_inner_texts() == ["tiny-glpn (depth-estimation)"]
            page.set_input_files("#file", str(tmp_path / "chelsea.jpg"))
            page.wait_for_selector("#overlay:not([hidden])")
            labels = page.locator("td.label").all_inner_texts()
            assert labels == ["min depth", "median depth", "mean depth", "max depth"]
            assert float(page.locator("td.score").all_inner_texts()[0]) == pytest.approx(float(depth.min()), abs=2e-3)
            assert page.evaluate("document.getElementById('overlay').naturalWidth") == 451
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------------ the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_serve_under_load_then_sigterm_loses_nothing(pvt_dir, photos, reference, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvtkit",
            "serve",
            "--model",
            f"tiny={pvt_dir}",
            "--port",
            str(port),
            "--threads",
            "1",
            "--max-batch-size",
            "8",
            "--grace-s",
            "60",
        ],
        stderr=log,
        stdout=subprocess.DEVNULL,
        env=ENV,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120)
        names = list(photos)
        expected = {n: [p["label"] for p in reference([pvtkit.load_image(photos[n])])[0]] for n in names}
        answers: dict[str, tuple[int, str, dict]] = {}  # request id -> (status, what was sent, body)
        lock = threading.Lock()
        terminating = threading.Event()

        def client(c: int, count: int) -> None:
            with requests.Session() as session:
                for i in range(count):
                    rid = uuid.uuid4().hex
                    kind = "bad" if (c + i) % 10 == 0 else names[(c + i) % len(names)]
                    data = b"not an image" if kind == "bad" else photos[kind]
                    try:
                        r = session.post(
                            f"{url}/predict",
                            data=data,
                            timeout=120,
                            headers={"content-type": "image/jpeg", "x-request-id": rid},
                        )
                    except requests.ConnectionError:
                        if not terminating.is_set():
                            raise
                        return  # the server has stopped accepting: this request was never accepted
                    with lock:
                        answers[rid] = (r.status_code, kind, r.json())

        # Phase 1: 32 clients x 25 requests, a tenth of them bad; the server's memory must stay flat.
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda c: client(c, 5), range(32)))
        warm_rss = rss_mib(process.pid)
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda c: client(c, 20), range(32)))
        assert len(answers) == 32 * 25
        assert rss_mib(process.pid) - warm_rss < 64, (warm_rss, rss_mib(process.pid))
        for status, kind, body in answers.values():
            if kind == "bad":
                assert status == 400 and "cannot decode" in body["error"]
            else:
                assert status == 200 and [p["label"] for p in body["predictions"]] == expected[kind]
        # Phase 2: SIGTERM in the middle of the same load; the clients go on until the server refuses them.
        before = len(answers)
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(client, c, 10_000) for c in range(32)]
            deadline = time.monotonic() + 60
            while len(answers) < before + 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            terminating.set()
            process.send_signal(signal.SIGTERM)
            for f in futures:
                f.result()
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    stopped = [e for e in lines if e["message"] == "stopped"]
    assert stopped and stopped[0]["accepted"] == stopped[0]["answered"], stopped
    assert len(answers) > before + 200
    served = [e for e in lines if e["message"] == "request" and e["path"] == "/predict"]
    assert {e["request_id"] for e in served} == set(answers)  # every accepted request reached its client
    for status, kind, body in answers.values():
        assert status == (400 if kind == "bad" else 200), (status, body)


def test_serve_usage_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--timeout-s", "0"]) == 2
    assert "--timeout-s must be positive" in capsys.readouterr().err
