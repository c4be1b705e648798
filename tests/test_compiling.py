"""`pvtkit.optimize` and `--compile`: the compiled forward gives the eager numbers, runs where it pays, follows
weight changes, and falls back to eager with a warning where no compiler works (a missing C++ compiler, one that
fails), in the library and through the command line.

The compiler failures are real: a fresh interpreter with `CXX` naming no compiler, or a script that answers
`--version` and fails every compilation.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import PIL.Image
import pytest
import skimage.data
import torch

import pvtkit
from pvtkit import cpu_kernels
from pvtkit.compiling import CompiledForward

from helpers import rel_err

TINY = dict(depths=(1, 1, 1, 1), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4), num_labels=5)


def tiny_model() -> pvtkit.PvtV2ForImageClassification:
    torch.manual_seed(0)
    return pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).eval()


@pytest.mark.slow
def test_compiled_batch_one_equals_eager_larger_batches_stay_eager_and_weights_are_followed():
    model = tiny_model()
    keys = list(model.state_dict())
    one, three = torch.randn(1, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        eager_one, eager_three = model(one).logits, model(three).logits
    assert pvtkit.optimize(model) is model
    compiled = model.forward
    with torch.inference_mode():
        out = model(one).logits
        assert list(compiled.compile_seconds) == ["infer (1, 3, 64, 64) torch.float32"]
        assert compiled.fallback is None
        assert rel_err(out, eager_one) <= 1e-5
        with cpu_kernels.record() as ran:  # batch 3 > the limit: the eager fast paths, nothing compiled
            assert rel_err(model(three).logits, eager_three) <= 1e-6
        assert ran["conv_gelu"] > 0 and ran["pieces"] == 0 and len(compiled.compile_seconds) == 1
        # A bad input raises what the eager forward raises, and does not switch compiling off.
        with pytest.raises(ValueError, match=r"must have shape \(batch, 3, height, width\)"):
            model(torch.randn(1, 2, 64, 64))
        assert compiled.fallback is None
        # Weights written in place (what load_state_dict and optimizers do): the frozen graph is compiled again.
        model.classifier.bias.add_(1.0)
        assert rel_err(model(one).logits, eager_one + 1.0) <= 1e-5
    assert list(model.state_dict()) == keys
    # The forward's signature (transformers' Trainer reads it); copies run eagerly, and save and load as usual.
    assert list(inspect.signature(model.forward).parameters)[:2] == ["pixel_values", "labels"]
    twin = copy.deepcopy(model)
    assert not isinstance(twin.forward, CompiledForward) and twin.forward.__self__ is twin
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.inference_mode():
        assert torch.equal(loaded(three).logits, twin(three).logits)
    pvtkit.optimize(model, enabled=False)
    assert "forward" not in model.__dict__


def test_a_pipeline_compiles_only_where_something_would(caplog):
    """On the CPU a PVTv2 pipeline at batch size 8 would compile only a last batch of one (tens of seconds for one
    image): it says so and stays eager; at batch size 1 the model is optimized."""
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="pvtkit"):
        pvtkit.pipeline("image-classification", model=model, device="cpu", batch_size=8, compile=True)
    assert "forward" not in model.__dict__
    assert any("batches of at most 1 image" in r.getMessage() for r in caplog.records)
    pvtkit.pipeline("image-classification", model=model, device="cpu", batch_size=1, compile=True)
    assert isinstance(model.__dict__.get("forward"), CompiledForward)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


FALLBACK = """
    import warnings, torch, pvtkit
    torch.manual_seed(0)
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**{tiny})).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        eager = model(x).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pvtkit.optimize(model)
        with torch.inference_mode():
            first, second = model(x).logits, model(x).logits
    messages = [str(w.message) for w in caught if "pvtkit.optimize" in str(w.message)]
    fallback = getattr(model.forward, "fallback", "not installed")
    print(repr((messages, fallback, torch.equal(first, eager), torch.equal(second, eager))))
"""


def fake_compiler(tmp_path: Path) -> Path:
    """A "C++ compiler" that answers `--version` and fails every compilation."""
    script = tmp_path / "broken-g++"
    script.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo "g++ (fake) 1.0"; exit 0; fi\n'
        'echo "fake compiler: refusing $*" >&2\nexit 1\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.slow
@pytest.mark.parametrize("compiler", ["missing", "broken"])
def test_without_a_working_compiler_a_warning_and_the_eager_numbers(compiler, tmp_path):
    cxx = str(tmp_path / "no-such-g++") if compiler == "missing" else str(fake_compiler(tmp_path))
    done = run_python(FALLBACK.format(tiny=TINY), {"CXX": cxx, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    messages, fallback, first_equal, second_equal = eval(done.stdout.strip().splitlines()[-1])
    assert len(messages) == 1 and "running eagerly" in messages[0]
    assert first_equal and second_equal
    if compiler == "missing":  # found before compiling: the model is left as it was
        assert "C++ compiler" in messages[0] and fallback == "not installed"
    else:  # found by the first call, which then ran eagerly; no second warning
        assert "compiling PvtV2ForImageClassification failed" in messages[0] and fallback.startswith("compiling")


@pytest.mark.slow
def test_classify_compile_flag_falls_back_and_still_classifies(tmp_path):
    model = tiny_model()
    model.config.id2label = {i: f"class{i}" for i in range(5)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(tmp_path / "model")
    PIL.Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    base = [
        sys.executable,
        "-m",
        "pvtkit",
        "classify",
        str(tmp_path / "cat.png"),
        "--model",
        str(tmp_path / "model"),
        "--format",
        "json",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--batch-size",
        "1",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CXX": str(fake_compiler(tmp_path)),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
    }
    plain = subprocess.run(base, capture_output=True, text=True, env=env, timeout=600)
    compiled = subprocess.run(base + ["--compile"], capture_output=True, text=True, env=env, timeout=600)
    assert plain.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    assert "pvtkit.optimize: compiling PvtV2ForImageClassification failed" in compiled.stderr
    assert "running eagerly" in compiled.stderr
    records = [json.loads(line) for line in (plain.stdout, compiled.stdout)]
    assert records[0] == records[1] and records[0]["predictions"]
