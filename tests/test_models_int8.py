"""The int8 forward of spike-input layers (models/int8.py) against the dense float layer: values,
gradients, odd shapes, the dispatch rule, bad input, and a whole model's training step; the ops
``qsnn::int8_linear``/``qsnn::int8_conv2d`` under opcheck, their errors, and the layers under torch.compile."""

from __future__ import annotations

import types

import pytest
import torch
from functorch.compile import make_boxed_compiler

from qsnn_kernels import reference
import qsnn_kernels.models as qm
from qsnn_kernels.models import int8 as int8_mod
from qsnn_kernels.models import layers as layers_mod
from qsnn_kernels.models.layers import QuantConv2d, QuantLinear, uses_int8


def _spikes(shape, s_bits, in_scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << s_bits, shape, generator=g).float() * in_scale


def _run(layer, x, int8):
    """Output and gradients (input, weight, bias) of ``layer`` on ``x`` with ``layer.int8 = int8``."""
    layer.int8 = int8
    layer.zero_grad(set_to_none=True)
    xr = x.detach().clone().requires_grad_()
    y = layer(xr)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    bias = None if layer.bias is None else layer.bias.grad.clone()
    return y.detach(), xr.grad, layer.weight.grad.clone(), bias


def _assert_same(a, b):
    for u, v in zip(a, b):
        if u is None:
            assert v is None
        else:
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_bits, s_bits, in_scale, shape, k", [
    (1, 1, 1.0, (1, 2), 1), (2, 2, 0.5, (3, 31), 7), (4, 4, 0.3, (2, 5, 33), 9), (8, 1, 1.0, (1, 2, 3, 273), 16),
    (8, 4, 0.75, (64, 64), 64)])
@pytest.mark.parametrize("int8_dot", [True, False], ids=["int8-units", "no-int8-units"])
def test_linear_matches_dense(w_bits, s_bits, in_scale, shape, k, int8_dot, monkeypatch):
    """Both CPU forwards: torch._int_mm (int8 units) and the exact float sums (without them)."""
    monkeypatch.setattr(int8_mod, "cpu_has_int8_dot", lambda: int8_dot)
    torch.manual_seed(1)
    lin = QuantLinear(shape[-1], k, w_bits=w_bits, s_bits=s_bits, in_scale=in_scale)
    x = _spikes(shape, s_bits, in_scale)
    lin.int8 = True
    assert uses_int8(lin, x)
    _assert_same(_run(lin, x, True), _run(lin, x, False))


def test_linear_non_contiguous_and_no_bias():
    lin = QuantLinear(33, 5, bias=False, w_bits=4, s_bits=2)
    x = _spikes((4, 33, 6), 2, 1.0).transpose(1, 2)
    _assert_same(_run(lin, x, True), _run(lin, x, False))


@pytest.mark.parametrize("w_bits, s_bits, in_scale, cin, cout, k, stride, pad, dil, groups, shape", [
    (1, 1, 1.0, 2, 3, 1, 1, 0, 1, 1, (1, 7, 5)),
    (2, 2, 0.5, 31, 6, 3, 2, 1, 1, 1, (2, 9, 7)),
    (4, 8, 0.25, 33, 7, 3, 1, 2, 2, 1, (3, 8, 8)),
    (8, 4, 1.0, 6, 6, 3, 1, 1, 1, 3, (2, 5, 6)),
    (4, 1, 1.0, 5, 5, 3, 1, 1, 1, 5, (2, 4, 4)),
    (4, 2, 0.5, 9, 70, 3, 1, 1, 1, 1, (2, 6, 5)),     # the sparse weight gradient: several blocks of 8
    (4, 1, 1.0, 8, 12, 1, 2, 0, 1, 1, (2, 7, 6)),     # 1x1 stride 2: the float convolution of levels
    (2, 3, 1.0, 3, 5, (2, 3), 1, (1, 2), 1, 1, (1, 5, 4)),  # its plain loop
])
@pytest.mark.parametrize("int8_dot", [True, False], ids=["int8-units", "no-int8-units"])
def test_conv_matches_dense(w_bits, s_bits, in_scale, cin, cout, k, stride, pad, dil, groups, shape, int8_dot,
                            monkeypatch):
    """Both forwards of the CPU op (oneDNN's int8 convolution; without int8 dot-product units the
    float convolution of the integer levels), and both weight gradients (over the nonzero levels
    where qsnn_kernels.spike_conv applies, the dense backward elsewhere)."""
    monkeypatch.setattr(int8_mod, "cpu_has_int8_dot", lambda: int8_dot)
    torch.manual_seed(2)
    conv = QuantConv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, w_bits=w_bits, s_bits=s_bits,
                       in_scale=in_scale)
    conv.dilation = (dil, dil)
    x = _spikes((shape[0], cin, shape[1], shape[2]), s_bits, in_scale)
    _assert_same(_run(conv, x, True), _run(conv, x, False))
    conv.bias = None
    xt = _spikes((2, shape[0], shape[1], shape[2], cin), s_bits, in_scale).permute(0, 1, 4, 2, 3)  # [T, B, C, H, W]
    _assert_same(_run(conv, xt, True), _run(conv, xt, False))


def test_dispatch_rule(monkeypatch):
    monkeypatch.setattr(layers_mod, "cpu_has_int8_dot", lambda: True)
    conv = QuantConv2d(4, 4, 3, padding=1, w_bits=4, s_bits=1)
    small, large = torch.zeros(1, 4, 8, 8), torch.zeros(8, 4, 8, 8)           # 64 and 512 output positions
    assert not uses_int8(conv, small, conv._positions(small))
    assert uses_int8(conv, large, conv._positions(large))
    conv.int8 = True
    assert uses_int8(conv, small, conv._positions(small))
    conv.int8 = False
    assert not uses_int8(conv, large, conv._positions(large))
    lin = QuantLinear(4, 4, w_bits=4, s_bits=8)                              # 8-bit levels do not fit int8
    assert not uses_int8(lin, torch.zeros(2, 4))
    for layer in (QuantLinear(4, 4, w_bits=16, s_bits=1), QuantLinear(4, 4, w_bits=4, s_bits=None)):
        assert not uses_int8(layer, torch.zeros(2, 4))
    lin = QuantLinear(4, 4, w_bits=4, s_bits=1)
    assert uses_int8(lin, torch.zeros(2, 4))
    # shapes where torch 2.14's int8 kernels fail (K = 1: wrong sums; padding >= kernel extent: crash)
    assert not uses_int8(QuantLinear(1, 4, w_bits=4, s_bits=1, int8=True), torch.zeros(3, 1))
    for k, pad, dil in ((1, 1, 1), (3, 3, 1), (3, 5, 2)):
        conv = QuantConv2d(4, 4, k, padding=pad, w_bits=4, s_bits=1, int8=True)
        conv.dilation = (dil, dil)
        assert not uses_int8(conv, torch.zeros(8, 4, 8, 8), 512)
        x = _spikes((2, 4, 5, 5), 1, 1.0)
        _assert_same(_run(conv, x, True), _run(conv, x, False))
    assert not uses_int8(lin, torch.zeros(2, 4, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_int8(lin, torch.zeros(2, 4))
    # a CPU without int8 dot-product units: the automatic rule takes every linear (the float GEMM,
    # 1-byte levels saved) and every convolution whose sums float32 holds exactly, any geometry
    monkeypatch.setattr(layers_mod, "cpu_has_int8_dot", lambda: False)
    assert uses_int8(lin, torch.zeros(2, 4))
    lin.int8 = False
    assert not uses_int8(lin, torch.zeros(2, 4))
    x = torch.zeros(1, 4, 8, 8)
    for kernel, stride, pad, dil, groups in ((3, 1, 1, 1, 1), (1, 1, 0, 1, 1), (3, 2, 1, 1, 1), (3, 1, 2, 2, 1),
                                             (3, 1, 1, 1, 2)):
        conv = QuantConv2d(4, 4, kernel, stride=stride, padding=pad, groups=groups, w_bits=4, s_bits=1)
        conv.dilation = (dil, dil)
        assert uses_int8(conv, x, conv._positions(x)), (kernel, stride, pad, dil, groups)
    for s_bits, taken in ((7, True), (8, False)):  # K * 255 * 128 >= 2^24 at 8 bits: float32 would round the sums
        conv, x = QuantConv2d(64, 4, 3, padding=1, w_bits=8, s_bits=s_bits), torch.zeros(1, 64, 8, 8)
        assert uses_int8(conv, x, conv._positions(x)) is taken
    for k, taken in ((8738, True), (8739, False)):  # K * 15 * 128 < 2^24 up to K = 8738
        assert uses_int8(QuantLinear(k, 2, w_bits=8, s_bits=4), torch.zeros(1, k)) is taken


@pytest.mark.parametrize("int8_dot", [True, False], ids=["int8-units", "no-int8-units"])
def test_conv_backward_with_a_frozen_weight_or_input(int8_dot, monkeypatch):
    """Only the gradients asked for: a frozen weight (input gradient only) and an input without
    gradient (weight gradient only, on the sparse kernel where it applies), equal to the dense layer's."""
    monkeypatch.setattr(int8_mod, "cpu_has_int8_dot", lambda: int8_dot)
    torch.manual_seed(3)
    conv = QuantConv2d(5, 11, 3, padding=1, bias=False, w_bits=4, s_bits=2, in_scale=0.5)
    x = _spikes((2, 5, 6, 7), 2, 0.5)
    g = torch.linspace(-1, 1, 2 * 11 * 6 * 7).reshape(2, 11, 6, 7)
    conv.weight.requires_grad_(False)
    grads = []
    for int8 in (True, False):
        conv.int8 = int8
        xr = x.clone().requires_grad_()
        conv(xr).backward(g)
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
    conv.weight.requires_grad_(True)
    grads = []
    for int8 in (True, False):
        conv.int8 = int8
        conv.weight.grad = None
        conv(x).backward(g)
        grads.append(conv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, match", [(0.5, "not 1-bit spikes"), (2.0, "not 1-bit spikes"),
                                        (-1.0, "not 1-bit spikes")])
def test_non_spike_input_is_an_error(bad, match):
    for layer, x in ((QuantLinear(3, 2, w_bits=4, s_bits=1, int8=True), torch.zeros(2, 3)),
                     (QuantConv2d(3, 2, 1, w_bits=4, s_bits=1, int8=True), torch.zeros(1, 3, 2, 2))):
        x = x.clone()
        x.view(-1)[1] = bad
        with pytest.raises(ValueError, match=match):
            layer(x)


@pytest.mark.parametrize("name, size", [("qsnn_sew_resnet18_cifar", 16), ("qsnn_spikformer_4_384", 32)])
def test_model_training_step_matches_dense(name, size):
    """A model's forward and gradients with every eligible layer on int8 (on a CPU without int8
    units: the exact float sums, the sparse convolutions, the 1-byte levels kept for backward)
    equal the all-dense ones (a spike flip from float rounding would show here; none happens on
    this seed)."""
    torch.manual_seed(3)
    model = qm.create_model(name, w_bits=4, s_bits=2, t_steps=2, num_classes=5)
    x = torch.randn(2, 3, size, size)
    results = []
    for int8 in (False, True):
        for m in model.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                m.int8 = int8
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    assert sum(isinstance(m, (QuantConv2d, QuantLinear)) and m.s_bits is not None for m in model.modules()) >= 10
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for g_int8, g_dense in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_int8, g_dense, rtol=1e-4, atol=1e-5)


def test_spikformer_attention_converts_the_stream_once(monkeypatch):
    """Q, K and V read one conversion of the residual stream to levels (models.layers.levels_for),
    not one each: per attention forward, one checked pass for the stream and one for the
    projection's input; with int8 off, none."""
    from qsnn_kernels.models.spikformer import SpikingSelfAttention

    calls = []
    original = int8_mod.spike_levels
    monkeypatch.setattr(int8_mod, "spike_levels", lambda x, *a, **k: calls.append(x.shape) or original(x, *a, **k))
    torch.manual_seed(5)
    attn = SpikingSelfAttention(48, 3, w_bits=4, s_bits=1, in_s_bits=2)
    x = torch.randint(0, 4, (2, 2, 7, 48)).float()
    y = attn(x)
    assert calls == [x.shape, x.shape]
    layers_mod.set_int8(attn, False)
    calls.clear()
    torch.testing.assert_close(attn(x), y, rtol=1e-5, atol=1e-5)
    assert calls == []


def test_saves_one_byte_per_input_element():
    """The activations kept for backward are the uint8 levels, not the float input."""
    conv = QuantConv2d(8, 8, 3, padding=1, w_bits=4, s_bits=1, int8=True)
    x = _spikes((2, 8, 7, 7), 1, 1.0).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv(x)
    inputs = [t for t in saved if t.numel() == x.numel()]
    assert inputs and all(t.dtype == torch.uint8 for t in inputs)


# --------------------------------------------------------------------------- the ops: opcheck, errors, torch.compile


def _weight(shape, seed=4):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("w_bits, s_bits, in_scale, x_shape, n", [
    (4, 1, 1.0, (1, 33), 5), (2, 4, 0.5, (2, 3, 31), 7), (8, 2, 0.25, (1, 1, 273), 1)])
def test_opcheck_int8_linear(w_bits, s_bits, in_scale, x_shape, n):
    """Schema, fake (shapes, dtypes, strides), autograd registration and AOT dispatch, M = 1, K not
    a multiple of 32 and a non-contiguous input included."""
    x = _spikes(x_shape, s_bits, in_scale).requires_grad_()
    w = _weight((n, x_shape[-1])).requires_grad_()
    torch.library.opcheck(torch.ops.qsnn.int8_linear.default, (x, w, w_bits, s_bits, in_scale))
    xt = _spikes((*x_shape[:-2], x_shape[-1], x_shape[-2]), s_bits, in_scale).transpose(-1, -2).requires_grad_()
    torch.library.opcheck(torch.ops.qsnn.int8_linear.default, (xt, w, w_bits, s_bits, in_scale))
    bias = _weight((n,), seed=5).requires_grad_()
    torch.library.opcheck(torch.ops.qsnn.int8_linear.default, (x, w, w_bits, s_bits, in_scale, None, bias))


@pytest.mark.parametrize("int8_dot", [True, False], ids=["int8-units", "no-int8-units"])
def test_linear_bias_in_the_epilogue(int8_dot, monkeypatch):
    """The bias, added in the op's epilogue: the value and the three gradients of the dense layer."""
    monkeypatch.setattr(int8_mod, "cpu_has_int8_dot", lambda: int8_dot)
    x = _spikes((2, 3, 37), 2, 0.5).requires_grad_()
    w, b = _weight((6, 37)).requires_grad_(), _weight((6,), seed=5).requires_grad_()
    y = torch.ops.qsnn.int8_linear(x, w, 4, 2, 0.5, None, b)[0]
    ref = torch.nn.functional.linear(x, reference.fake_quantize_weight(w, 4), b)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    got, want = torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="bias must be"):
        torch.ops.qsnn.int8_linear(x, w, 4, 2, 0.5, None, b[:5])


@pytest.mark.parametrize("w_bits, s_bits, in_scale, x_shape, w_shape, stride, pad, dil, groups", [
    (4, 1, 1.0, (1, 3, 5, 7), (4, 3, 3, 3), [1, 1], [1, 1], [1, 1], 1),
    (2, 8, 0.5, (2, 33, 6, 5), (5, 33, 1, 1), [2, 1], [0, 0], [1, 1], 1),
    (8, 4, 0.25, (1, 6, 7, 7), (6, 2, 3, 3), [1, 1], [2, 2], [2, 2], 3)])
def test_opcheck_int8_conv2d(w_bits, s_bits, in_scale, x_shape, w_shape, stride, pad, dil, groups):
    x = _spikes(x_shape, s_bits, in_scale).requires_grad_()
    w = _weight(w_shape).requires_grad_()
    for x in (x, x.detach().to(memory_format=torch.channels_last).requires_grad_()):
        torch.library.opcheck(torch.ops.qsnn.int8_conv2d.default,
                              (x, w, w_bits, s_bits, in_scale, stride, pad, dil, groups))


def test_ops_return_the_saved_levels():
    x = _spikes((3, 9), 2, 0.5)
    y, levels = torch.ops.qsnn.int8_linear(x, _weight((4, 9)), 4, 2, 0.5)
    assert levels.dtype == torch.int8 and torch.equal(levels.float() * 0.5, x) and y.shape == (3, 4)
    x = _spikes((1, 2, 5, 5), 3, 1.0)
    y, levels = torch.ops.qsnn.int8_conv2d(x, _weight((3, 2, 3, 3)), 4, 3, 1.0, [1, 1], [1, 1], [1, 1], 1)
    assert levels.dtype == torch.uint8 and torch.equal(levels.float(), x) and y.shape == (1, 3, 5, 5)


@pytest.mark.parametrize("op, args, error", [
    ("linear", ((2, 4), (3, 4), 4, 5, 1.0), ValueError),                        # levels too wide for int8
    ("linear", ((2, 1), (3, 1), 4, 1, 1.0), ValueError),                        # K = 1
    ("linear", ((2, 4), (3, 5), 4, 1, 1.0), ValueError),                        # K mismatch
    ("linear", ((2, 4), (3, 4), 16, 1, 1.0), ValueError),                       # unquantized weight
    ("linear", ((2, 4), (3, 4), 4, 1, 0.0), ValueError),                        # in_scale
    ("conv2d", ((1, 4, 5, 5), (2, 4, 3, 3), 4, 9, 1.0), ValueError),            # levels too wide for uint8
    ("conv2d", ((1, 4, 5, 5), (2, 3, 3, 3), 4, 1, 1.0), ValueError),            # channels mismatch
    ("conv2d", ((1, 4, 2, 2), (2, 4, 3, 3), 4, 1, 1.0, [1, 1], [0, 0]), ValueError),  # kernel does not fit
    ("conv2d", ((1, 4, 5, 5), (2, 4, 3, 3), 4, 1, 1.0, [1, 1], [3, 3]), ValueError),  # padding >= extent
])
def test_op_errors_before_any_kernel(op, args, error):
    x_shape, w_shape, w_bits, s_bits, in_scale, *geometry = args
    x, w = torch.zeros(x_shape), torch.zeros(w_shape)
    if op == "linear":
        call = lambda x, w: torch.ops.qsnn.int8_linear(x, w, w_bits, s_bits, in_scale)  # noqa: E731
    else:
        stride, pad = geometry or ([1, 1], [1, 1])
        call = lambda x, w: torch.ops.qsnn.int8_conv2d(x, w, w_bits, s_bits, in_scale, stride, pad,  # noqa: E731
                                                       [1, 1], 1)
    with pytest.raises(error):
        call(x, w)
    with pytest.raises(error), torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        call(mode.from_tensor(x), mode.from_tensor(w))


def test_op_dtype_errors():
    x, w = torch.zeros(2, 4), torch.zeros(3, 4)
    for bad in ((x.double(), w), (x, w.half())):
        with pytest.raises(TypeError, match="float32"):
            torch.ops.qsnn.int8_linear(*bad, 4, 1, 1.0)
    with pytest.raises(TypeError, match="float32"):
        torch.ops.qsnn.int8_conv2d(torch.zeros(1, 4, 5, 5, dtype=torch.bfloat16), torch.zeros(2, 4, 3, 3), 4, 1,
                                   1.0, [1, 1], [1, 1], [1, 1], 1)


@pytest.mark.parametrize("w_bits, s_bits, in_scale, shape, n", [
    (4, 1, 1.0, (3, 7, 37), 45), (8, 2, 0.5, (1, 70), 1), (1, 4, 0.25, (33, 31), 9), (2, 1, 1.0, (5, 2), 3),
])
def test_cuda_linear_kernel_equals_the_cpu_op(w_bits, s_bits, in_scale, shape, n):
    """The CUDA kernel of qsnn::int8_linear (the Triton int8 GEMM with the fused epilogue, after
    the Triton weight quantization), run on CPU tensors under the interpreter, gives the CPU op's
    output (torch._int_mm, same epilogue) bit for bit, and the same levels."""
    pytest.importorskip("qsnn_kernels.triton.int8_matmul")
    from qsnn_kernels import quantize
    from qsnn_kernels.models import int8 as int8_mod
    from qsnn_kernels.testing import mismatches
    from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

    x = _spikes(shape, s_bits, in_scale, seed=n)
    w = torch.randn(n, shape[-1], generator=torch.Generator().manual_seed(1))
    bias = torch.randn(n, generator=torch.Generator().manual_seed(2))
    with triton_kernels_on_cpu(quantize.TRITON_KERNELS):
        y, levels = int8_mod._int8_linear_cuda(x, w, w_bits, s_bits, in_scale)
        y_bias, _ = int8_mod._int8_linear_cuda(x, w, w_bits, s_bits, in_scale, None, bias)
    ref_y, ref_levels = torch.ops.qsnn.int8_linear(x, w, w_bits, s_bits, in_scale)
    assert mismatches(y, ref_y) == 0 and mismatches(levels, ref_levels) == 0
    assert mismatches(y_bias, torch.ops.qsnn.int8_linear(x, w, w_bits, s_bits, in_scale, None, bias)[0]) == 0
    dense = x @ qm.layers.quantized_weight(w, w_bits).t()
    torch.testing.assert_close(y, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_bits, s_bits, in_scale, x_shape, w_shape, stride, pad, dil", [
    (4, 1, 1.0, (2, 5, 7, 6), (9, 5, 3, 3), [1, 1], [1, 1], [1, 1]),
    (8, 4, 0.5, (1, 3, 8, 8), (4, 3, 3, 3), [2, 2], [1, 0], [1, 1]),
    (2, 2, 0.25, (1, 4, 9, 9), (2, 4, 3, 3), [1, 2], [2, 2], [2, 2]),
])
def test_cuda_conv_kernel_equals_the_cpu_op(w_bits, s_bits, in_scale, x_shape, w_shape, stride, pad, dil):
    """The CUDA kernel of qsnn::int8_conv2d (Triton implicit GEMM after the Triton weight
    quantization) on CPU tensors under the interpreter against the CPU op (oneDNN): the same
    levels, and the same values up to the rounding of oneDNN's own epilogue."""
    pytest.importorskip("qsnn_kernels.triton.int8_matmul")
    from qsnn_kernels import quantize
    from qsnn_kernels.models import int8 as int8_mod
    from qsnn_kernels.testing import mismatches
    from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

    x = _spikes(x_shape, s_bits, in_scale, seed=3)
    w = torch.randn(w_shape, generator=torch.Generator().manual_seed(2))
    with triton_kernels_on_cpu(quantize.TRITON_KERNELS):
        y, levels = int8_mod._int8_conv2d_cuda(x, w, w_bits, s_bits, in_scale, stride, pad, dil, 1)
    ref_y, ref_levels = torch.ops.qsnn.int8_conv2d(x, w, w_bits, s_bits, in_scale, stride, pad, dil, 1)
    assert mismatches(levels, ref_levels) == 0 and y.is_contiguous()
    torch.testing.assert_close(y, ref_y, rtol=1e-6, atol=1e-6)


def test_cuda_rules_of_the_int8_ops():
    """On CUDA tensors (fake: no GPU needed) the linear takes float32/bfloat16/float16 input and
    levels up to 7 bits, its output in x's dtype; the convolution too, with groups = 1."""
    from qsnn_kernels.models import int8 as int8_mod

    with torch._subclasses.fake_tensor.FakeTensorMode():
        w = torch.empty(8, 32, device="cuda")
        for dtype in int8_mod.CUDA_DTYPES:
            x = torch.empty(4, 32, device="cuda", dtype=dtype)
            assert int8_mod.int8_supported(x, w, 4, 7)
            y, levels = torch.ops.qsnn.int8_linear(x, w, 4, 7, 1.0)
            assert y.dtype == dtype and y.shape == (4, 8) and levels.dtype == torch.int8
        assert not int8_mod.int8_supported(x, w, 4, 8)
        assert not int8_mod.int8_supported(x.double(), w, 4, 1)
        xc = torch.empty(1, 4, 5, 5, device="cuda", dtype=torch.bfloat16)
        y, levels = torch.ops.qsnn.int8_conv2d(xc, torch.empty(2, 4, 3, 3, device="cuda"), 4, 7, 1.0, [1, 1], [1, 1],
                                               [1, 1], 1)
        assert y.dtype == torch.bfloat16 and y.shape == (1, 2, 5, 5) and levels.dtype == torch.uint8
        with pytest.raises(ValueError, match="groups = 1"):
            torch.ops.qsnn.int8_conv2d(xc, torch.empty(2, 2, 3, 3, device="cuda"), 4, 1, 1.0, [1, 1], [1, 1],
                                       [1, 1], 2)
        # the automatic rule keeps CUDA layers dense; int8=True takes the kernel
        layer = types.SimpleNamespace(int8=None, weight=w, w_bits=4, s_bits=1)
        assert not uses_int8(layer, x)
        layer.int8 = True
        assert uses_int8(layer, x)


def _int8_ops_in_graph(module, x):
    """Compile ``module`` with fullgraph=True (a graph break raises) and return (output, the qsnn
    int8 ops in the captured graph)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.common.aot_autograd(fw_compiler=make_boxed_compiler(lambda g, _: g))(
            gm, example_inputs)

    torch._dynamo.reset()
    y = torch.compile(module, fullgraph=True, backend=backend)(x)
    ops = {n.target for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    return y, {str(op).removesuffix(".default") for op in ops if "int8" in str(op)}


@pytest.mark.parametrize("int8", [None, True])
def test_compiled_layers_take_the_int8_path_in_one_graph(monkeypatch, int8):
    """Under torch.compile the layers pick the int8 ops as in eager mode (automatic rule included),
    without a graph break, with the eager values and gradients."""
    monkeypatch.setattr(layers_mod, "cpu_has_int8_dot", torch.compiler.assume_constant_result(lambda: True))
    torch.manual_seed(5)
    cases = ((QuantConv2d(5, 6, 3, padding=1, w_bits=4, s_bits=2, in_scale=0.5, int8=int8),
              _spikes((2, 4, 5, 8, 8), 2, 0.5)),                               # [T, B, C, H, W], 512 positions
             (QuantLinear(33, 7, w_bits=2, s_bits=1, int8=int8), _spikes((2, 1, 33), 1, 1.0)))
    for layer, x in cases:
        eager = _run(layer, x, int8)
        layer.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        y, ops = _int8_ops_in_graph(layer, xr)
        assert ops == {f"qsnn.int8_{'conv2d' if isinstance(layer, QuantConv2d) else 'linear'}"}
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        _assert_same((y.detach(), xr.grad, layer.weight.grad, layer.bias.grad), eager)


def test_compiled_layer_rejects_non_spike_input():
    conv = QuantConv2d(3, 2, 3, padding=1, w_bits=4, s_bits=1, int8=True)
    x = _spikes((1, 3, 4, 4), 1, 1.0)
    torch._dynamo.reset()
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    compiled(x)
    x[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="not 1-bit spikes"):
        compiled(x)


def test_linear_saves_one_byte_per_input_element():
    lin = QuantLinear(33, 4, w_bits=4, s_bits=2, int8=True)
    x = _spikes((3, 33), 2, 1.0).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lin(x)
    inputs = [t for t in saved if t.numel() == x.numel()]
    assert inputs and all(t.dtype == torch.int8 for t in inputs)


def test_block_hands_the_neuron_levels_to_the_next_int8_conv():
    """In a SEW block the fused batch norm + neuron writes the uint8 levels in its pass, and the
    next conv's int8 path reads them (no second pass over the spikes): every int8 conv fed by a
    block's first neuron receives levels, with the values and gradients of the dense model."""
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(3)
    model = qm.create_model("qsnn_sew_resnet18_cifar", w_bits=4, s_bits=2, t_steps=2, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    handed = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.qsnn.int8_conv2d.default:
                handed.append(len(args) > 9 and args[9] is not None)
            return func(*args, **(kwargs or {}))

    results = []
    for int8 in (False, True):
        layers_mod.set_int8(model, int8)
        model.zero_grad(set_to_none=True)
        with Spy():
            y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert sum(handed) == len(blocks) and len(handed) > len(blocks)  # conv2 of each block; the rest convert
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for g_int8, g_dense in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_int8, g_dense, rtol=1e-4, atol=1e-5)
