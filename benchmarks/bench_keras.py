"""ViT and PVTv2 in Keras 3 (JAX and TensorFlow back ends) against pvtkit's PyTorch models: inference, same
weights, same run.

Each framework runs in its own process (Keras fixes its back end at import), on one checkpoint written once by
PyTorch (random weights: speed does not depend on them). The Keras models run compiled, the Keras way
(`predict_on_batch`: `jax.jit` / `tf.function`); PyTorch runs pvtkit's eager forward under `inference_mode`. The
frameworks take turns for `--rounds` rounds; each process warms up (compiles), then times `--iters` batches; the
table gives the median of the rounds' medians and the spread (min-max) across rounds, and the load average around
the run (ratios from a run above ~1.5 are not worth quoting).

    python benchmarks/bench_keras.py [--variant base_patch16_224 | b0 | b2 ...] [--batch 16] [--rounds 2] [--iters 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

FRAMEWORKS = ("torch", "jax", "tensorflow")


def worker(framework: str, checkpoint: str, batch: int, iters: int) -> dict:
    """Time `iters` batches of one framework in this process."""
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    started = time.perf_counter()
    if framework == "torch":
        import torch

        import pvtkit

        model = pvtkit.AutoModelForImageClassification.from_pretrained(checkpoint).eval()
        pixels = torch.from_numpy(x)

        def step() -> None:
            with torch.inference_mode():
                model(pixels)

        threads = torch.get_num_threads()
    else:
        os.environ["KERAS_BACKEND"] = framework
        import pvtkit.keras as pk

        model = pk.model_class(checkpoint).from_pretrained(checkpoint)

        def step() -> None:
            model.predict_on_batch(x)

        threads = os.cpu_count()
    loaded = time.perf_counter()
    step()  # compiles (Keras) / warms the allocator (PyTorch)
    first = time.perf_counter() - loaded
    step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {
        "framework": framework,
        "load_s": loaded - started,
        "first_call_s": first,
        "median_s": statistics.median(times),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="base_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.checkpoint, args.batch, args.iters)))
        return

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_models import machine

    versions = {}
    for name, dists in (("keras", ["keras"]), ("jax", ["jax"]), ("tensorflow", ["tensorflow-cpu", "tensorflow"])):
        for dist in dists:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                versions[name] = "not installed"
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        from pvtkit.models.family import config_for_variant, get

        config = config_for_variant(args.variant)
        get(config.model_type).classes["image-classification"](config).save_pretrained(tmp)
        load_before = os.getloadavg()[0]
        runs: dict[str, list[dict]] = {f: [] for f in FRAMEWORKS}
        for _ in range(args.rounds):
            for framework in FRAMEWORKS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        framework,
                        "--checkpoint",
                        tmp,
                        "--batch",
                        str(args.batch),
                        "--iters",
                        str(args.iters),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[framework].append(json.loads(out.stdout.strip().splitlines()[-1]))
        load_after = os.getloadavg()[0]
    info = machine()
    print(
        f"# {config.title} {args.variant}, batch {args.batch}, fp32 inference; {info['cpu']}, {info['cores']} cores; "
        f"torch {info['torch']}, keras {versions['keras']}, jax {versions['jax']}, tensorflow {versions['tensorflow']}; "
        f"load average {load_before:.2f} before, {load_after:.2f} after"
    )
    base = statistics.median(r["median_s"] for r in runs["torch"])
    print("| framework | img/s | ms/batch (median, spread over rounds) | vs PyTorch pvtkit | first call (compile) s |")
    print("|---|---|---|---|---|")
    for framework, rs in runs.items():
        med = statistics.median(r["median_s"] for r in rs)
        lo, hi = min(r["median_s"] for r in rs), max(r["median_s"] for r in rs)
        name = (
            "PyTorch pvtkit (eager)"
            if framework == "torch"
            else f"Keras/{'JAX' if framework == 'jax' else 'TF'} (compiled)"
        )
        print(
            f"| {name} | {args.batch / med:.1f} | {med * 1000:.0f} ({lo * 1000:.0f}-{hi * 1000:.0f}) | "
            f"{base / med:.2f}x | {statistics.median(r['first_call_s'] for r in rs):.1f} |"
        )


if __name__ == "__main__":
    main()
