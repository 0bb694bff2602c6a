"""Non-finite and extreme weights: the contract of reference.quantize_weight
(a NaN/inf channel -> scale NaN, zero codes, NaN dequantized weights; a zero or underflowing
scale -> 1, codes 0; W = 1 sums mean|w| in float64) in every backend (C++ CPU, the torch path
used for float64 and on CUDA), NaN reaching every quantized layer's output, and PackedWeight
refusing to pack a weight that integer codes cannot hold."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from qsnn_kernels import PackedWeight, reference
from qsnn_kernels.models.layers import QuantConv2d, QuantLinear, quantized_weight
from qsnn_kernels.quantize import dequantized_weight, quantize_weight
from qsnn_kernels.testing import mismatches

F32 = torch.finfo(torch.float32)
NAN, INF = math.nan, math.inf
DENORMAL_MIN = 1.401298464324817e-45


def _special_rows(k: int) -> torch.Tensor:
    """One channel per special case, k long: the values first (as many as fit), zeros after."""
    rows = [
        [0.0],                                   # all zeros
        [DENORMAL_MIN, -DENORMAL_MIN],           # max / qmax underflows to 0 for W >= 2
        [1e-40, -3e-41, DENORMAL_MIN],           # a denormal scale
        [F32.tiny, -F32.tiny / 2],               # smallest normal
        [F32.max, -F32.max, 1.0],                # huge: the W = 1 sum would overflow float32
        [INF, 1.0],
        [-INF],
        [NAN, 1.0],
        [0.5, -1.0, 0.25],                       # an ordinary channel
    ]
    w = torch.zeros(len(rows) + 1, k)
    for i, vals in enumerate(rows):
        w[i, : min(k, len(vals))] = torch.tensor(vals[:k])
    w[-1] = torch.linspace(-1, 1, k)
    w[-1, -1] = NAN                              # NaN last: the SIMD tail for most k
    return w

@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("k", [1, 3, 9, 33])
def test_special_values_cpu_kernel_equals_reference(w_bits, k):
    w = _special_rows(k)
    q_ref, s_ref = reference.quantize_weight(w, w_bits)
    q, s = quantize_weight(w, w_bits)
    deq = dequantized_weight(w, w_bits)
    deq_ref = q_ref.to(torch.float32) * s_ref[:, None]
    assert mismatches(q, q_ref) == 0
    assert mismatches(s, s_ref) == 0
    assert mismatches(deq, deq_ref) == 0
    # the same through a non-contiguous view and a channels-last 4-d weight
    wt = w.t().contiguous().t()
    assert mismatches(quantize_weight(wt, w_bits)[0], q_ref) == 0
    w4 = w.reshape(w.shape[0], 1, 1, k).to(memory_format=torch.channels_last)
    assert mismatches(dequantized_weight(w4, w_bits).reshape(w.shape), deq_ref) == 0


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
def test_special_values_contract(w_bits):
    w = _special_rows(9)
    for backend in ("auto", "reference"):
        q, s = quantize_weight(w, w_bits, backend=backend)
        deq = dequantized_weight(w, w_bits, backend=backend)
        zero_code = 1 if w_bits == 1 else 0
        for row in range(w.shape[0]):
            if not bool(torch.isfinite(w[row]).all()):  # NaN propagates: never a finite stand-in
                assert math.isnan(s[row]) and bool((q[row] == zero_code).all()) and bool(deq[row].isnan().all())
            else:
                assert math.isfinite(s[row]) and s[row] >= 0 and bool(torch.isfinite(deq[row]).all())
        if w_bits == 1:
            assert s[0] == 0 and s[4] == pytest.approx(2 * F32.max / 9, rel=1e-6)  # float64 sum: no overflow
        else:
            qmax = (1 << (w_bits - 1)) - 1
            assert s[0] == 1 and bool((q[0] == 0).all())       # all zeros
            if qmax > 1:  # underflow of max / qmax: scale 1, codes 0 (the C++ kernel gave -128)
                assert s[1] == 1 and bool((q[1] == 0).all())
            assert q[4, 0] == qmax and q[4, 1] == -qmax and math.isfinite(s[4])


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
def test_random_specials_cpu_kernel_equals_reference(w_bits):
    g = torch.Generator().manual_seed(11 + w_bits)
    specials = torch.tensor([NAN, INF, -INF, 0.0, DENORMAL_MIN, -1e-40, F32.max, -F32.max, F32.tiny])
    total = 0
    for n, k in [(1, 1), (7, 31), (5, 33), (3, 273), (64, 72)]:
        w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) ** 8
        hit = torch.rand(n, k, generator=g) < 0.05
        w[hit] = specials[torch.randint(len(specials), (int(hit.sum()),), generator=g)]
        if n > 2:
            w[1] = w[1] * 1e-44                               # a denormal/underflowing channel
        q_ref, s_ref = reference.quantize_weight(w, w_bits)
        q, s = quantize_weight(w, w_bits)
        assert mismatches(q, q_ref) == 0
        if w_bits == 1:  # float64 sums in different orders: equal, or one float32 rounding apart
            ulp = torch.nextafter(s_ref, torch.full_like(s_ref, INF)) - s_ref
            assert int((((s - s_ref).abs() > ulp) & ~(s.isnan() & s_ref.isnan())).sum()) == 0
            assert torch.equal(s.isnan(), s_ref.isnan())
        else:
            assert mismatches(s, s_ref) == 0
        total += int((~torch.isfinite(s_ref)).sum())
    assert total > 0                                          # the draw did poison some channels


def test_float64_weight_follows_the_contract():
    w = torch.tensor([[1.0, 2.0], [NAN, 1.0], [1e300, 1.0], [0.0, 0.0]], dtype=torch.float64)
    q, s = quantize_weight(w, 4)                              # torch path (float64)
    assert s[0] == pytest.approx(2 / 7) and math.isnan(s[1]) and math.isnan(s[2]) and s[3] == 1
    deq = dequantized_weight(w, 4)
    assert deq.dtype == torch.float64 and bool(deq[1:3].isnan().all()) and bool(torch.isfinite(deq[[0, 3]]).all())


def test_fake_quantized_weight_propagates_nan_with_identity_gradient():
    w = torch.randn(3, 8, requires_grad=True)
    with torch.no_grad():
        w[1, 4] = NAN
    for w_bits in (1, 4):
        wq = quantized_weight(w, w_bits)
        assert bool(wq[1].isnan().all()) and bool(torch.isfinite(wq[[0, 2]]).all())
        (g,) = torch.autograd.grad(wq[[0, 2]].sum(), w)
        assert torch.equal(g[[0, 2]], torch.ones(2, 8)) and bool((g[1] == 0).all())


@pytest.mark.parametrize("path", [{}, {"int8": True}, {"bitserial": True}, {"int8": False, "bitserial": False}])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_quantized_layers_output_nan_for_a_nan_weight(kind, path):
    torch.manual_seed(0)
    if kind == "linear":
        layer = QuantLinear(16, 4, w_bits=4, s_bits=1, **path)
        x = torch.randint(0, 2, (2, 3, 16)).float()
    else:
        layer = QuantConv2d(3, 4, 3, padding=1, w_bits=4, s_bits=1, **path)
        x = torch.randint(0, 2, (2, 3, 3, 5, 5)).float()
    with torch.no_grad():
        layer.weight[2].view(-1)[0] = NAN
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        y = layer(x)
        channels = y.movedim(-1 if kind == "linear" else -3, 0).reshape(4, -1)
        assert bool(channels[2].isnan().all()), mode           # the poisoned output channel is NaN ...
        assert bool(torch.isfinite(channels[[0, 1, 3]]).all()), mode  # ... the others are untouched
        assert math.isnan(float(y.detach().sum()))                      # so a loss NaN guard fires


def test_packed_weight_refuses_non_finite_weights():
    w = torch.randn(4, 10)
    w[2, 7], w[3, 1] = NAN, -INF
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*index \(2, 7\)"):
        PackedWeight.from_float(w, 4)
    with pytest.raises(ValueError, match="beyond float32 range"):
        PackedWeight.from_float(torch.tensor([[1e300, 1.0]], dtype=torch.float64), 2)
    big = PackedWeight.from_float(torch.tensor([[F32.max, -F32.max, 0.0]]), 8)  # finite extremes pack
    assert big.int_codes().tolist() == [[127, -127, 0]] and math.isfinite(float(big.scale[0]))
    tiny = PackedWeight.from_float(torch.tensor([[DENORMAL_MIN, 0.0, -DENORMAL_MIN]]), 8)
    assert tiny.int_codes().tolist() == [[0, 0, 0]] and float(tiny.scale[0]) == 1.0


def test_packed_weight_empty_weight_is_a_clear_error():
    for shape in [(3, 0), (0, 3), (2, 0, 3, 3)]:
        with pytest.raises(ValueError, match=r"non-empty \[N, K, ...\]"):
            PackedWeight.from_float(torch.zeros(shape), 4)


# --------------------------------------------------------------------------- multi-level LIF


def _lif_backends():
    from qsnn_kernels.triton_on_cpu import interpreting

    has_triton = importlib.util.find_spec("triton") is not None and interpreting()
    triton = pytest.mark.skipif(not has_triton, reason="needs triton and TRITON_INTERPRET=1")
    return ["reference", "auto", pytest.param("triton", marks=triton)]


@pytest.mark.parametrize("backend", _lif_backends())
def test_lif_last_step_gradient_of_a_nan_input_is_zero_when_only_spikes_are_used(backend):
    """Hard reset, rect surrogate, NaN and +inf inputs at the last step, v_T unused: the last step's
    membrane path receives no gradient, so it contributes nothing (not 0 * NaN), and the rect
    surrogate is 0 at a non-finite h. The gradient is 0 there, finite everywhere, and equals the
    reference's, on every backend."""
    from qsnn_kernels.lif import multilevel_lif

    x = torch.linspace(-0.5, 2.0, 4 * 9).reshape(4, 9)
    x[-1, 2], x[-1, 5] = NAN, INF
    x.requires_grad_()
    weights = torch.linspace(1.0, 2.0, 4 * 9).reshape(4, 9)

    def grad_x(which):
        spikes, _ = multilevel_lif(x, s_bits=2, reset="hard", surrogate="rect", backend=which)
        assert bool(spikes[-1, 2].isnan())  # the forward does propagate the NaN
        return torch.autograd.grad((spikes * weights).sum(), x)[0]

    got = grad_x(backend)
    assert got[-1, 2] == 0 and got[-1, 5] == 0
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, grad_x("reference"), rtol=1e-6, atol=1e-6)
