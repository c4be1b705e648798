"""The CPU fast paths of the default eager forward give the numbers of the plain path.

The parity tests compare the default path with transformers; these compare each fast path with the plain path it
replaces: the MLP run a few images at a time, the fused depth-wise conv + GELU, the SR conv as a matmul, and bf16
autocast emulated on fp32 units for CPUs without bf16 kernels. Paths are picked with `cpu_kernels.flags` and seen
with `cpu_kernels.record`, the switch and the counter users have too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune

import pvtkit
from pvtkit import cpu_kernels

from helpers import rel_err

TINY = dict(depths=(2, 1, 1, 1), hidden_sizes=(16, 32, 48, 64), num_attention_heads=(1, 2, 3, 4), num_labels=7)


@pytest.mark.parametrize("linear", [False, True])
def test_chunked_and_fused_mlp_equal_the_whole_batch_unfused_path(linear):
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY, linear_attention=linear)).eval()
    x = torch.randn(5, 3, 97, 131)
    with torch.enable_grad():  # autograd on: whole batch, no fusion
        plain = model(x).logits.detach()
    assert cpu_kernels.choose(x).pieces is False
    with torch.no_grad(), cpu_kernels.flags(small_bytes=1), cpu_kernels.record() as ran:  # one image per MLP pass
        chunked = model(x).logits
    assert rel_err(chunked, plain) <= 1e-6
    assert ran["pieces"] == 5  # every block's MLP (2 + 1 + 1 + 1 blocks) ran in pieces
    if cpu_kernels._CONV_POINTWISE is not None:  # the fused kernel really runs in eager no-grad inference
        with torch.no_grad(), cpu_kernels.record() as ran:
            model(x[:1])
        assert ran["conv_gelu"] == 5


def _gradients(model, x, y, **flags):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with cpu_kernels.flags(**flags), cpu_kernels.record() as ran:
        loss = model(x, labels=y).loss
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, x.grad, ran


@pytest.mark.parametrize("linear,act", [(False, "gelu"), (True, "gelu"), (False, "gelu_new"), (False, "silu")])
def test_recomputed_training_mlp_gives_the_plain_gradients(linear, act):
    """fp32 CPU training: the MLP runs in pieces and recomputes its hidden activations in its backward (exact GELU
    fused with the conv, tanh GELU with aten's backward, any other activation through autograd; linear SRA's ReLU
    first). Loss, every parameter's gradient and the input's gradient equal the plain path's up to summation order.
    """
    config = pvtkit.PvtV2Config(**TINY, linear_attention=linear, hidden_act=act, drop_path_rate=0.0)
    model = pvtkit.PvtV2ForImageClassification(config).train()
    x, y = torch.randn(5, 3, 97, 131), torch.randint(0, 7, (5,))
    assert cpu_kernels.choose(x).recompute and "recomputed" in cpu_kernels.choose(x).why
    plain_loss, plain, plain_x, ran = _gradients(model, x, y, enabled=False)
    assert not ran
    _, _, _, ran = _gradients(model, x, y)
    assert ran["mlp_recompute"] == 0  # these hidden activations are small (< recompute_bytes): stored as usual
    # one piece; one image per piece; pieces of 2, 2, 1 with the first Linear's output stored, not recomputed
    two_images = 2 * 25 * 33 * 16 * 8 * 4  # stage 1: a 25 x 33 map, 128 hidden channels, fp32
    for flags in (
        {"recompute_bytes": 0},
        {"recompute_bytes": 0, "small_bytes": 1},
        {"recompute_bytes": 0, "small_bytes": two_images, "keep_width": 0},
    ):
        loss, grads, grad_x, ran = _gradients(model, x, y, **flags)
        assert ran["mlp_recompute"] == 5  # every block (2 + 1 + 1 + 1)
        assert rel_err(loss, plain_loss) <= 1e-6 and rel_err(grad_x, plain_x) <= 1e-5
        scale = max(g.abs().max().item() for g in plain.values())
        params = dict(model.named_parameters())
        for name, g in grads.items():
            assert rel_err(g, plain[name], floor=1e-6 * scale) <= 1e-5, name
            if "mlp" in name:  # the parameters' own layout, which DDP's gradient buckets expect
                assert g.stride() == params[name].stride(), name


def test_recomputed_mlp_skips_frozen_weights_and_steps_aside_for_hooked_layers():
    """Frozen weights get no gradient (and no work); a layer with a hook (pruning, weight norm, per-sample
    gradients, ZeRO-3 gathering) or a wrapped layer is called as a module: that MLP takes the plain layers."""
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).train()
    x, y = torch.randn(3, 3, 64, 64), torch.randint(0, 7, (3,))
    for name, p in model.named_parameters():  # what an adapter leaves trainable: one projection, the head
        p.requires_grad_("dense2" in name or "classifier" in name)
    plain_loss, plain, _, _ = _gradients(model, x, y, enabled=False)
    loss, grads, _, ran = _gradients(model, x, y, recompute_bytes=0)
    assert ran["mlp_recompute"] == 5 and rel_err(loss, plain_loss) <= 1e-6
    assert set(grads) == set(plain) and all("dense2" in n or "classifier" in n for n in grads)
    for name, g in grads.items():
        assert rel_err(g, plain[name]) <= 1e-5, name
    model.requires_grad_(True)
    first_mlp = model.pvt_v2.encoder.layers[0].blocks[0].mlp
    calls = []
    first_mlp.dense1.register_forward_hook(lambda *args: calls.append(1))
    prune.l1_unstructured(first_mlp.dense2, "weight", amount=0.5)
    for _ in range(2):  # pruning's pre-hook rebuilds the weight on every call
        _, _, _, ran = _gradients(model, x, y, recompute_bytes=0)
        assert ran["mlp_recompute"] == 4  # the other four blocks
    assert len(calls) == 2


def test_recomputed_mlp_steps_aside_for_dropout_and_function_transforms():
    config = pvtkit.PvtV2Config(**TINY, hidden_dropout_prob=0.1)
    model = pvtkit.PvtV2ForImageClassification(config).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 7, (2,))
    with cpu_kernels.flags(recompute_bytes=0), cpu_kernels.record() as ran:
        model(x, labels=y).loss.backward()
    assert ran["mlp_recompute"] == 0  # dropout inside the MLP: the plain layers
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).train()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p):
        return torch.func.functional_call(model, p, (x,), {"labels": y}).loss

    with cpu_kernels.flags(recompute_bytes=0), cpu_kernels.record() as ran:
        transformed = torch.func.grad(loss)(params)
    assert ran["mlp_recompute"] == 0
    model(x, labels=y).loss.backward()
    for name, p in model.named_parameters():
        assert rel_err(transformed[name], p.grad, floor=1e-8) <= 1e-5, name


def test_the_switch_gives_the_plain_maths_and_says_why():
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).eval()
    x = torch.randn(3, 3, 64, 80)
    with torch.no_grad():
        assert cpu_kernels.choose(x).fused and "fp32 CPU inference" in cpu_kernels.choose(x).why
        fast = model(x).logits
        with cpu_kernels.flags(enabled=False), cpu_kernels.record() as ran:
            assert not cpu_kernels.choose(x).fused and "switched off" in cpu_kernels.choose(x).why
            reference = model(x).logits
        assert not ran and cpu_kernels.settings().enabled  # nothing fast ran; the switch is back on afterwards
    assert rel_err(fast, reference) <= 1e-6


def test_emulated_bf16_autocast_stays_within_bf16_rounding_of_native_autocast():
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        reference = model(x).logits
        with cpu_kernels.flags(native_bf16=True), torch.autocast("cpu", dtype=torch.bfloat16):  # plain autocast
            native = model(x).logits
        with cpu_kernels.flags(native_bf16=False), torch.autocast("cpu", dtype=torch.bfloat16):  # emulated
            with cpu_kernels.record() as ran:
                emulated = model(x).logits
    assert ran["bf16_emulation"] > 0
    assert emulated.dtype == native.dtype == torch.bfloat16
    # both are bf16 computations of the fp32 result: each within bf16 rounding of it, and of each other
    assert rel_err(native.float(), reference) < 3e-2 and rel_err(emulated.float(), reference) < 3e-2
    assert rel_err(emulated.float(), native.float()) < 3e-2


@pytest.mark.parametrize("size", [(64, 64), (61, 83)])  # 61 x 83: maps that do not fill the last SR window
def test_spatial_reduction_as_matmul_equals_the_conv(size):
    model = pvtkit.PvtV2ForImageClassification(pvtkit.PvtV2Config(**TINY)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        with cpu_kernels.record() as ran:
            small = model(
                x
            ).logits  # small inputs: the matmul form runs in every SR block (2 + 1 + 1; stage 4 has none)
        assert ran["sr_matmul"] == 4
        with cpu_kernels.flags(small_bytes=0), cpu_kernels.record() as ran:  # everything "large": the oneDNN conv
            large = model(x).logits
    assert ran["sr_matmul"] == 0
    assert rel_err(small, large) <= 1e-6


def test_dense_heads_fast_paths_equal_the_plain_order():
    """GLPN's conv + BatchNorm + ReLU / sigmoid as single oneDNN calls (the norm folded into the weights), and
    SegFormer's decode head with each stage's slice of the fuse conv folded into its projection, against the plain
    path (switch off) and the head in transformers' order (concatenate, then fuse)."""
    encoder = dict(depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 48, 64), num_attention_heads=(1, 2, 3, 4))
    glpn = pvtkit.GLPNForDepthEstimation(pvtkit.GLPNConfig(**encoder, decoder_hidden_size=16)).eval()
    for bn in glpn.modules():  # trained-looking statistics, so folding them is not a no-op
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        with cpu_kernels.record() as ran:
            fast = glpn(x).predicted_depth
        with cpu_kernels.flags(enabled=False):
            plain = glpn(x).predicted_depth
    if cpu_kernels._CONV_POINTWISE is not None:
        assert ran["conv_relu"] == 7 and ran["conv_sigmoid"] == 4  # 3 fusions x 2 + the head's; 3 fusions + head
    assert rel_err(fast, plain) <= 1e-5
    seg = pvtkit.SegformerForSemanticSegmentation(pvtkit.SegformerConfig(**encoder, num_labels=5)).eval()
    head = seg.decode_head
    with torch.no_grad():
        maps = seg.segformer(x, output_hidden_states=True).hidden_states
        folded = head(maps)
        concatenated = head.classifier(torch.relu(head.batch_norm(head._concatenated(maps))))
    assert folded.is_contiguous() and rel_err(folded, concatenated) <= 1e-5
