"""The int8 forward of spike-input layers (models/int8.py) against the dense float layer: values,
gradients, odd shapes, the dispatch rule, bad input, and a whole model's training step."""

from __future__ import annotations

import pytest
import torch

import qsnn_kernels.models as qm
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
def test_linear_matches_dense(w_bits, s_bits, in_scale, shape, k):
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
])
def test_conv_matches_dense(w_bits, s_bits, in_scale, cin, cout, k, stride, pad, dil, groups, shape):
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
    # a CPU without int8 dot-product units: the automatic rule keeps the float path, True forces int8
    monkeypatch.setattr(layers_mod, "cpu_has_int8_dot", lambda: False)
    assert not uses_int8(lin, torch.zeros(2, 4))
    lin.int8 = True
    assert uses_int8(lin, torch.zeros(2, 4))


@pytest.mark.parametrize("bad, match", [(0.5, "not 1-bit spikes"), (2.0, "not 1-bit spikes"),
                                        (-1.0, "not 1-bit spikes")])
def test_non_spike_input_is_an_error(bad, match):
    for layer, x in ((QuantLinear(3, 2, w_bits=4, s_bits=1, int8=True), torch.zeros(2, 3)),
                     (QuantConv2d(3, 2, 1, w_bits=4, s_bits=1, int8=True), torch.zeros(1, 3, 2, 2))):
        x = x.clone()
        x.view(-1)[1] = bad
        with pytest.raises(ValueError, match=match):
            layer(x)


def test_model_training_step_matches_dense():
    """A SEW-ResNet's forward and gradients with every eligible layer on int8 equal the all-dense
    ones (a spike flip from float rounding would show here; none happens on this seed)."""
    torch.manual_seed(3)
    model = qm.create_model("qsnn_sew_resnet18_cifar", w_bits=4, s_bits=2, t_steps=2, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    results = []
    for int8 in (False, True):
        for m in model.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                m.int8 = int8
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    assert sum(isinstance(m, QuantConv2d) and m.s_bits is not None for m in model.modules()) >= 10
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for g_int8, g_dense in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_int8, g_dense, rtol=1e-4, atol=1e-5)


def test_saves_one_byte_per_input_element():
    """The activations kept for backward are the uint8 levels, not the float input."""
    conv = QuantConv2d(8, 8, 3, padding=1, w_bits=4, s_bits=1, int8=True)
    x = _spikes((2, 8, 7, 7), 1, 1.0).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv(x)
    inputs = [t for t in saved if t.numel() == x.numel()]
    assert inputs and all(t.dtype == torch.uint8 for t in inputs)
