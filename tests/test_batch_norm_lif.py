"""qsnn_kernels.batch_norm_lif (ops qsnn::batch_norm_lif_forward/backward, batch_norm_statistics)
against reference.batch_norm_lif: forward bit for bit given the same statistics, gradients
against autograd of the reference, running statistics as torch's batch norm keeps them."""

from __future__ import annotations

import importlib

import pytest
import torch

import qsnn_kernels as qk
from qsnn_kernels import reference
from qsnn_kernels.testing import mismatches

bnl = importlib.import_module("qsnn_kernels.batch_norm_lif")  # the module (the package's name is the function)

NEURON = dict(s_bits=1, v_th=1.0, decay=0.5, v_reset=0.0, reset="hard", surrogate="atan", alpha=None,
              detach_reset=True)


def _inputs(shape, dtype=torch.float64, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=dtype, generator=g) * 2 + 0.5
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    c = shape[2]
    w = torch.rand(c, dtype=dtype, generator=g) + 0.5
    w[0] = -w[0]  # a negative scale
    b = torch.randn(c, dtype=dtype, generator=g) * 0.3
    return x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)


def _reference_args(neuron):
    return (neuron["s_bits"], neuron["v_th"], neuron["decay"], neuron["v_reset"], neuron["reset"],
            neuron["surrogate"], neuron["alpha"], neuron["detach_reset"])


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


CASES = [
    # shape, neuron overrides, channels_last
    ((4, 3, 5, 7, 6), {}, False),
    ((1, 1, 3, 4, 4), {}, False),                                    # T = 1, B = 1
    ((3, 2, 33), dict(s_bits=2, reset="soft", surrogate="rect", detach_reset=False), False),  # [T, B, C]: inner 1
    ((2, 9, 97), dict(s_bits=2), False),        # inner 1 over several 256-neuron chunks, each starting mid-channels
    ((2, 3, 5, 11), dict(s_bits=4, surrogate="sigmoid"), False),      # [T, B, C, L]
    ((3, 2, 7, 5, 5), dict(s_bits=8, v_th=0.7, decay=0.9), True),     # channels-last, v_th not a power of 2
    ((2, 2, 4, 3, 3), dict(detach_reset=False, v_reset=-0.25), False),
]


@pytest.mark.parametrize("shape,overrides,channels_last", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference(shape, overrides, channels_last, training):
    neuron = {**NEURON, **overrides}
    x, w, b = _inputs(shape, channels_last=channels_last)
    c = shape[2]
    running_mean, running_var = torch.randn(c, dtype=x.dtype) * 0.1, torch.rand(c, dtype=x.dtype) + 0.5
    rm, rv = running_mean.clone(), running_var.clone()
    spikes = qk.batch_norm_lif(x, w, b, rm, rv, training=training, **neuron)
    assert spikes.shape == x.shape and spikes.dtype == x.dtype
    assert spikes.stride() == x.stride()  # the layout is kept
    if training:
        # forward: bit for bit with the reference given the statistics the op used
        x2, inner, _, _ = bnl._channel_layout(x.detach())
        mean, var = torch.ops.qsnn.batch_norm_statistics(x2, c, inner)
        ref_mean, ref_var = reference.batch_norm_statistics(x.detach())
        torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, ref_var, rtol=1e-12, atol=1e-12)
        fixed = reference.batch_norm_lif(x.detach(), w.detach(), b.detach(), mean, var, 1e-5, *_reference_args(neuron))
        assert mismatches(spikes.detach(), fixed) == 0
        ref = reference.batch_norm_lif(x, w, b, None, None, 1e-5, *_reference_args(neuron))
    else:
        ref = reference.batch_norm_lif(x, w, b, running_mean, running_var, 1e-5, *_reference_args(neuron))
        assert mismatches(spikes.detach(), ref.detach()) == 0
    grad = torch.randn_like(spikes)
    got = torch.autograd.grad(spikes, (x, w, b), grad)
    want = torch.autograd.grad(ref, (x, w, b), grad)
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        assert _rel_err(a, e) < 1e-9, name


def test_float32_gradients_within_rounding():
    x, w, b = _inputs((3, 4, 16, 8, 8), dtype=torch.float32)
    spikes = qk.batch_norm_lif(x, w, b, training=True, **NEURON)
    ref = reference.batch_norm_lif(x, w, b, None, None, 1e-5, *_reference_args(NEURON))
    assert mismatches(spikes.detach(), ref.detach()) == 0
    grad = torch.randn_like(spikes)
    for a, e in zip(torch.autograd.grad(spikes, (x, w, b), grad), torch.autograd.grad(ref, (x, w, b), grad)):
        assert _rel_err(a, e) < 1e-5


def test_running_statistics_follow_torch_batch_norm():
    x, w, b = _inputs((3, 4, 6, 5, 5))
    bn = torch.nn.BatchNorm2d(6, momentum=0.3, dtype=torch.float64)
    bn.running_mean.normal_()
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    bn(x.detach().flatten(0, 1))
    qk.batch_norm_lif(x, w, b, rm, rv, training=True, momentum=0.3, **NEURON)
    torch.testing.assert_close(rm, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, bn.running_var, rtol=1e-12, atol=1e-12)
    before = rm.clone()
    qk.batch_norm_lif(x, w, b, rm, rv, training=False, **NEURON)
    assert torch.equal(rm, before)  # eval leaves them alone


def test_levels_and_no_running_statistics():
    x, w, b = _inputs((2, 3, 4, 5), dtype=torch.float32)
    spikes, levels = qk.batch_norm_lif(x, w, b, s_bits=2, v_th=0.5, return_levels=True)
    assert levels.dtype == torch.uint8 and levels.shape == x.shape
    assert torch.equal(levels.float() * 0.5, spikes.detach())
    assert levels.max() <= 3


def test_nan_contract_with_running_statistics():
    """A NaN current: NaN spikes at that neuron only; gradients as the reference's autograd."""
    x, w, b = _inputs((3, 2, 4, 5))
    with torch.no_grad():
        x[1, 0, 2, 3] = float("nan")
    rm, rv = torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype)
    spikes = qk.batch_norm_lif(x, w, b, rm, rv, training=False, **NEURON)
    ref = reference.batch_norm_lif(x, w, b, rm, rv, 1e-5, *_reference_args(NEURON))
    assert torch.equal(spikes.isnan(), ref.isnan()) and spikes.isnan().sum() == 2
    gx, = torch.autograd.grad(spikes.sum(), x)
    rx, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(gx, rx, equal_nan=True)


def test_composite_kernels_match_the_cpu_kernels():
    """The ops' kernels for other devices (torch ops + LIF ops), run on CPU tensors."""
    x, w, b = _inputs((3, 2, 5, 4, 3))
    x2 = x.detach().reshape(3, -1)
    args = (w.detach(), b.detach(), torch.randn(5, dtype=x.dtype) * 0.1, torch.rand(5, dtype=x.dtype) + 0.5, 1e-5,
            12)
    lif = (2, 1.0, 0.5, 0.0, True, "atan", 2.0, True)
    for batch_stats in (True, False):
        want = torch.ops.qsnn.batch_norm_lif_forward(x2, *args, batch_stats, *lif, True)
        got = bnl._forward_composite(x2, *args, batch_stats, *lif, True)
        assert all(mismatches(a, e) == 0 for a, e in zip(got, want))
        g = torch.randn_like(x2)
        want = torch.ops.qsnn.batch_norm_lif_backward(g, x2, *args, batch_stats, *lif)
        got = bnl._backward_composite(g, x2, *args, batch_stats, *lif)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    mean, var = torch.ops.qsnn.batch_norm_statistics(x2, 5, 12)
    cmean, cvar = bnl._statistics_composite(x2, 5, 12)
    torch.testing.assert_close(mean, cmean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, cvar, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_stats", [True, False])
def test_opcheck(batch_stats):
    x, w, b = (t.detach() for t in _inputs((2, 2, 3, 4), dtype=torch.float32))
    x2 = x.reshape(2, -1)
    args = (x2, w, b, torch.zeros(3), torch.ones(3), 1e-5, 4, batch_stats, 2, 1.0, 0.5, 0.0, True, "atan", 2.0, True)
    torch.library.opcheck(torch.ops.qsnn.batch_norm_lif_forward.default, (*args, True))
    torch.library.opcheck(torch.ops.qsnn.batch_norm_lif_forward.default,
                          (x2.clone().requires_grad_(), w.clone().requires_grad_(), *args[2:], False))
    torch.library.opcheck(torch.ops.qsnn.batch_norm_lif_backward.default, (torch.randn_like(x2), *args))
    torch.library.opcheck(torch.ops.qsnn.batch_norm_statistics.default, (x2, 3, 4))


def test_compiles_fullgraph():
    x, w, b = _inputs((2, 2, 3, 4, 4), dtype=torch.float32)

    def step(x, w, b):
        return qk.batch_norm_lif(x, w, b, training=True, **NEURON)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, b)
    want = step(x, w, b)
    assert mismatches(got.detach(), want.detach()) == 0
    g = torch.randn_like(got)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g)):
        torch.testing.assert_close(a, e)


def test_reference_backend():
    x, w, b = _inputs((2, 2, 3, 4))
    want = reference.batch_norm_lif(x, w, b, None, None, 1e-5, *_reference_args(NEURON))
    got = qk.batch_norm_lif(x, w, b, backend="reference", **NEURON)
    assert mismatches(got, want) == 0


@pytest.mark.parametrize("call,error,match", [
    (lambda x, w, b: qk.batch_norm_lif(x[0, 0], w, b), ValueError, r"\[T, B, C, \.\.\.\]"),
    (lambda x, w, b: qk.batch_norm_lif(x.to(torch.int32), w, b), TypeError, "float input"),
    (lambda x, w, b: qk.batch_norm_lif(x.half(), w.half(), b.half()), TypeError, "not supported on cpu"),
    (lambda x, w, b: qk.batch_norm_lif(x, w[:2], b), ValueError, r"weight must be \[C\]"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, "b"), TypeError, "bias must be a tensor"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, b, torch.zeros(3)), ValueError, "both running_mean"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, b, momentum=1.5), ValueError, "momentum"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, b, eps=-1.0), ValueError, "eps"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, b, s_bits=3), ValueError, "s_bits"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, b, surrogate="relu"), ValueError, "surrogate"),
    (lambda x, w, b: qk.batch_norm_lif(x, w, b, backend="triton"), ValueError, "backend"),
])
def test_bad_input(call, error, match):
    x, w, b = (t.detach() for t in _inputs((2, 2, 3, 4), dtype=torch.float32))
    with pytest.raises(error, match=match):
        call(x, w, b)


def test_raw_op_errors_are_typed():
    x = torch.randn(2, 12)
    c = torch.ones(3)
    with pytest.raises(ValueError, match="multiple of C"):
        torch.ops.qsnn.batch_norm_lif_forward(x, c, c, c, c, 1e-5, 5, True, 1, 1.0, 0.5, 0.0, True, "atan", 2.0,
                                              True, False)
    with pytest.raises(TypeError, match="dtype"):
        torch.ops.qsnn.batch_norm_lif_forward(x, c.double(), c, c, c, 1e-5, 4, True, 1, 1.0, 0.5, 0.0, True, "atan",
                                              2.0, True, False)
    with pytest.raises(ValueError, match="surrogate"):
        torch.ops.qsnn.batch_norm_lif_backward(x, x, c, c, c, c, 1e-5, 4, True, 1, 1.0, 0.5, 0.0, True, "relu", 2.0,
                                               True)
