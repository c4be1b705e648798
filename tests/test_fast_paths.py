"""The CPU fast paths of the default eager forward give the numbers of the plain path.

The parity tests compare the default path with transformers; these compare each fast path with the plain path it
replaces: the MLP run a few images at a time, the fused depth-wise conv + GELU, and bf16 autocast emulated on fp32
units for CPUs without bf16 kernels.
"""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

import pvtkit
from pvtkit import layers
from pvtkit.models import pvt_v2

TINY = dict(depths=(2, 1, 1, 1), hidden_sizes=(16, 32, 48, 64), num_attention_heads=(1, 2, 3, 4), num_labels=7)


@pytest.mark.parametrize("linear", [False, True])
def test_chunked_and_fused_mlp_equal_the_whole_batch_unfused_path(monkeypatch, linear):
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY, linear_attention=linear)).eval()
    x = torch.randn(5, 3, 97, 131)
    with torch.enable_grad():  # autograd on: whole batch, no fusion
        plain = model(x).logits.detach()
    monkeypatch.setattr(pvt_v2, "SMALL_BYTES", 1)  # one image per MLP pass
    with torch.no_grad():
        chunked = model(x).logits
    assert rel_err(chunked, plain) <= 1e-6
    calls = []
    if pvt_v2._CONV_GELU is not None:  # the fused kernel really runs in eager no-grad inference
        monkeypatch.setattr(pvt_v2, "_CONV_GELU", lambda *a: calls.append(1) or torch.ops.mkldnn._convolution_pointwise(*a))
        with torch.no_grad():
            model(x[:1])
        assert calls


def test_emulated_bf16_autocast_stays_within_bf16_rounding_of_native_autocast(monkeypatch):
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        reference = model(x).logits
        monkeypatch.setattr(layers, "_cpu_has_native_bf16", lambda: True)  # plain autocast kernels
        with torch.autocast("cpu", dtype=torch.bfloat16):
            native = model(x).logits
        monkeypatch.setattr(layers, "_cpu_has_native_bf16", lambda: False)  # emulated on fp32 units
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emulated = model(x).logits
    assert emulated.dtype == native.dtype == torch.bfloat16
    # both are bf16 computations of the fp32 result: each within bf16 rounding of it, and of each other
    assert rel_err(native.float(), reference) < 3e-2 and rel_err(emulated.float(), reference) < 3e-2
    assert rel_err(emulated.float(), native.float()) < 3e-2


@pytest.mark.parametrize("size", [(64, 64), (61, 83)])  # 61 x 83: maps that do not fill the last SR window
def test_spatial_reduction_as_matmul_equals_the_conv(monkeypatch, size):
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).eval()
    x = torch.randn(2, 3, *size)
    calls = []
    matmul = pvt_v2.SpatialReductionAttention._reduce_by_matmul
    monkeypatch.setattr(
        pvt_v2.SpatialReductionAttention, "_reduce_by_matmul", lambda *a: calls.append(1) or matmul(*a)
    )
    with torch.no_grad():
        small = model(x).logits  # small inputs: the matmul form runs in every SR block (2 + 1 + 1; stage 4 has none)
        assert len(calls) == 4
        monkeypatch.setattr(pvt_v2, "SMALL_BYTES", 0)  # everything "large": the oneDNN conv
        large = model(x).logits
    assert len(calls) == 4
    assert rel_err(small, large) <= 1e-6


def _thp_setting(argv0: str, torch_first: bool) -> str:
    import subprocess
    import sys

    code = (
        ("import torch\n" if torch_first else "")
        + f"import os, sys\nsys.argv[0] = {argv0!r}\nimport pvtkit\n"
        + "print(os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset'))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_the_command_line_turns_on_huge_pages_and_the_library_leaves_the_process_alone():
    assert _thp_setting("/usr/local/bin/pvtkit", torch_first=False) == "1"
    assert _thp_setting("/usr/local/bin/pvtkit", torch_first=True) == "unset"  # too late: torch read it already
    assert _thp_setting("/home/me/script.py", torch_first=False) == "unset"
