"""Serving speed: `pvtkit serve` under 1, 4, 16 and 64 concurrent clients, batching on and off, against offline
classification (`Pipeline.run`, what `pvtkit classify` runs) on the same images, in the same run.

The model is PVTv2-B0 (random weights: speed does not depend on them) at 224x224; the images are scikit-image's
photos as JPEG files of several sizes, sent raw to `POST /predict` (decoding and preprocessing are part of the
server's work, as they are of `pvtkit classify`'s). The server runs in its own process (`pvtkit serve`); the
clients are threads of this process on the same machine, over loopback, so on a small machine they take some of
the CPU the server would have; that share is part of what is measured.

    python benchmarks/bench_serve.py [--requests 256] [--clients 1,4,16,64] [--batch 16] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import skimage.data
import torch

import pvtkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import machine  # noqa: E402


def make_images(count: int) -> list[bytes]:
    photos = [
        skimage.data.chelsea(),
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        np.stack([skimage.data.camera()] * 3, -1),
    ]
    out = []
    for i in range(count):
        image = PIL.Image.fromarray(photos[i % len(photos)])
        scale = (0.5, 0.75, 1.0)[i % 3]
        image = image.resize((max(32, int(image.width * scale)), max(32, int(image.height * scale))))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def offline(model_dir: str, images: list[bytes], batch: int, folder: Path) -> float:
    """Images per second of `Pipeline.run` over the files (decoding in worker processes, as `pvtkit classify`)."""
    paths = []
    for i, data in enumerate(images):
        paths.append(folder / f"{i:05d}.jpg")
        paths[-1].write_bytes(data)
    from pvtkit.distributed import default_workers

    pipe = pvtkit.pipeline("image-classification", model=model_dir, batch_size=batch, num_workers=default_workers())
    list(pipe.run(paths[: batch * 2]))  # warm-up
    started = time.perf_counter()
    results = list(pipe.run(paths))
    elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    return len(paths) / elapsed


def forward_ms_per_image(model_dir: str, batch: int, repeats: int = 5) -> float:
    """The model alone (no decoding, no HTTP): milliseconds per image at `batch`, median of `repeats`."""
    model = pvtkit.PvtV2ForImageClassification.from_pretrained(model_dir).eval()
    pixels = torch.randn(batch, 3, 224, 224)
    times = []
    with torch.inference_mode():
        model(pixel_values=pixels)
        for _ in range(repeats):
            started = time.perf_counter()
            model(pixel_values=pixels)
            times.append((time.perf_counter() - started) * 1000 / batch)
    return float(np.median(times))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, batch: int, delay_ms: float, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvtkit",
            "serve",
            "--model",
            f"b0={model_dir}",
            "--port",
            str(port),
            "--max-batch-size",
            str(batch),
            "--max-delay-ms",
            str(delay_ms),
            "--log-level",
            "warning",
            "--max-queue",
            "1024",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready")


def batch_stats(port: int) -> tuple[float, float]:
    """(images, forward passes) so far, from the server's own `pvtkit_batch_size` histogram."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("pvtkit_batch_size_sum", "pvtkit_batch_size_count"))
    }
    return values.get("pvtkit_batch_size_sum", 0.0), values.get("pvtkit_batch_size_count", 0.0)


def load(port: int, images: list[bytes], clients: int, total: int) -> tuple[float, list[float]]:
    """`total` requests spread over `clients` keep-alive connections: (images/s, latencies in seconds)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client(_: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine = []
        for i in counter:
            data = images[i % len(images)]
            started = time.perf_counter()
            conn.request("POST", "/predict", body=data, headers={"content-type": "image/jpeg"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {body[:200]!r}")
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return total / (time.perf_counter() - started), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256, help="requests per measurement")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--batch", type=int, default=16, help="--max-batch-size with batching on, and offline batch")
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--only-on", action="store_true", help="skip the no-batching server")
    parser.add_argument("--server-args", default="", help="more `pvtkit serve` flags, e.g. '--threads 1'")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    info = machine()
    load_before = os.getloadavg()
    images = make_images(64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "b0")
        torch.manual_seed(0)
        pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config.from_variant("b0")).save_pretrained(model_dir)
        pvtkit.PvtImageProcessor().save_pretrained(model_dir)
        folder = Path(tmp) / "images"
        folder.mkdir()
        offline_rate = offline(model_dir, images * max(1, args.requests // len(images)), args.batch, folder)
        print(f"offline Pipeline.run (pvtkit classify), batch {args.batch}: {offline_rate:.1f} img/s", flush=True)
        alone = {b: forward_ms_per_image(model_dir, b) for b in (1, 8, args.batch)}
        print("the model alone, ms per image by batch:", json.dumps(alone), flush=True)
        modes = [("on", args.batch), ("off", 1)] if not args.only_on else [("on", args.batch)]
        for mode, batch in modes:
            process, port = start_server(model_dir, batch, args.delay_ms, args.server_args.split())
            try:
                load(port, images, 4, 32)  # warm-up
                for n in clients:
                    images_before, passes_before = batch_stats(port)
                    rate, lat = load(port, images, n, max(args.requests, 2 * n))
                    images_after, passes_after = batch_stats(port)
                    mean_batch = (images_after - images_before) / max(passes_after - passes_before, 1)
                    p50, p95, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 95, 99))
                    rows.append(
                        {
                            "batching": mode,
                            "clients": n,
                            "img_s": rate,
                            "p50_ms": p50,
                            "p95_ms": p95,
                            "p99_ms": p99,
                            "share_of_offline": rate / offline_rate,
                            "mean_batch": mean_batch,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                process.terminate()
                process.wait(60)
    load_after = os.getloadavg()
    by = {(r["batching"], r["clients"]): r for r in rows}
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after. PVTv2-B0 224x224 fp32, raw JPEG uploads to "
        f"POST /predict{(' (serve ' + args.server_args + ')') if args.server_args else ''}; offline `pvtkit classify` (Pipeline.run, batch {args.batch}): {offline_rate:.1f} img/s; the model alone: "
        + ", ".join(f"{ms:.1f} ms/img at batch {b}" for b, ms in alone.items())
        + ".",
        "",
        "| batching | clients | img/s | p50 ms | p95 ms | p99 ms | of offline | on / off | mean batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        off = by.get(("off", r["clients"]))
        speedup = r["img_s"] / off["img_s"] if r["batching"] == "on" and off else 1.0
        lines.append(
            f"| {r['batching']} (max {args.batch if r['batching'] == 'on' else 1}) | {r['clients']} | "
            f"{r['img_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{100 * r['share_of_offline']:.0f}% | {speedup:.2f}x | {r['mean_batch']:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
