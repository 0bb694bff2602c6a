"""qsnn_kernels.quantize (csrc/quantize_cpu.cpp and the CUDA kernels): weights against
reference.quantize_weight / dequantize_weight (bit-identical for W >= 2; identical codes and a
scale at most one float32 rounding apart for W = 1) in every float dtype, and spike_levels
against its torch formula; explicit backends (no fallback), typed C++ errors, odd shapes, layouts,
bad input."""

from __future__ import annotations

import pytest
import torch

from qsnn_kernels import BackendUnavailable, _extension, quantize, reference
from qsnn_kernels.quantize import dequantized_weight, quantize_weight, spike_levels

SHAPES = [(1, 1), (1, 31), (3, 33), (2, 273), (5, 4, 3, 3), (64, 7, 1, 1), (17, 1)]


def _weight(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=g)
    if shape[0] > 2:
        w[1] = 0.0                                           # an all-zero channel
        w[2].view(-1)[0] = 2.5 * w[2].abs().max()            # a channel with one outlier
    return w


def _expected(w, w_bits):
    q, scale = reference.quantize_weight(w, w_bits)
    return q, scale, q.to(torch.float32) * scale.reshape((-1,) + (1,) * (w.dim() - 1))


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, w_bits):
    w = _weight(shape, seed=len(shape) * 100 + shape[-1])
    q_ref, scale_ref, deq_ref = _expected(w, w_bits)
    q, scale = quantize_weight(w, w_bits)
    deq = dequantized_weight(w, w_bits)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and deq.dtype == torch.float32
    assert torch.equal(q, q_ref)
    if w_bits == 1:  # mean|w|: summed in double in both, in different orders
        torch.testing.assert_close(scale, scale_ref, rtol=5e-7, atol=0)
        torch.testing.assert_close(deq, deq_ref, rtol=5e-7, atol=0)
    else:
        assert torch.equal(scale, scale_ref) and torch.equal(deq, deq_ref)


def test_rounding_ties_and_clamp_edges():
    """Values exactly on x.5 code boundaries round half to even, as torch.round does."""
    w = torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -7.0, 6.5]])  # scale 1 at W = 4
    for fn in (quantize_weight, lambda *a: reference.quantize_weight(*a)):
        q, scale = fn(w, 4)
        assert scale.item() == 1.0
        assert q.tolist() == [[7, 0, 2, 2, 0, -2, -2, 4, -7, 6]]


def test_non_contiguous():
    w = _weight((8, 40), 3).t()                             # [40, 8], non-contiguous
    for w_bits in (1, 4):
        assert torch.equal(quantize_weight(w, w_bits)[0], reference.quantize_weight(w, w_bits)[0])


def _scale_times_codes(w, w_bits):
    """The dequantized weight written out from the reference's codes and scales."""
    q, scale = reference.quantize_weight(w, w_bits)
    return (q.to(torch.float32) * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
def test_every_float_dtype_is_the_reference_exactly(dtype, w_bits):
    """The dequantized weight a float64 (or half) training step computes, on the CPU kernel
    (backend="auto") and the reference: both equal scale * q from the reference's codes, in w's
    dtype, exactly (W = 1: the CPU kernel's scale may be one float32 rounding off). The CUDA
    kernel (Triton): tests/test_triton_quantize.py."""
    w = _weight((5, 4, 3, 3), 7).to(dtype)
    expected = _scale_times_codes(w, w_bits)
    ref = dequantized_weight(w, w_bits, backend="reference")
    auto = dequantized_weight(w, w_bits)
    for out in (ref, auto):
        assert out.dtype == dtype and out.shape == w.shape
    assert torch.equal(ref, expected)
    assert torch.equal(reference.fake_quantize_weight(w, w_bits), expected) or w_bits == 1
    q, scale = quantize_weight(w, w_bits)
    assert torch.equal(q, reference.quantize_weight(w, w_bits)[0])
    if w_bits == 1:
        torch.testing.assert_close(auto.double(), expected.double(), rtol=5e-7 if dtype == torch.float64 else 0,
                                   atol=0)
    else:
        assert torch.equal(auto, expected) and torch.equal(scale, reference.quantize_weight(w, w_bits)[1])


def test_no_silent_fallback(monkeypatch):
    """backend="auto" is the op by device: without the compiled CPU kernels it raises
    BackendUnavailable instead of running torch code; a device with no kernel raises too;
    backend="reference" runs anywhere."""
    w = _weight((3, 8), 1)

    def missing(device_type):
        raise BackendUnavailable(f"no compiled kernels for {device_type}")

    monkeypatch.setattr(_extension, "require", missing)
    for call in (lambda: quantize_weight(w, 4), lambda: dequantized_weight(w, 4),
                 lambda: spike_levels(torch.zeros(4), 1.0, 1), lambda: dequantized_weight(w.double(), 4)):
        with pytest.raises(BackendUnavailable):
            call()
    assert torch.equal(dequantized_weight(w, 4, backend="reference"), _scale_times_codes(w, 4))
    monkeypatch.undo()
    with pytest.raises(BackendUnavailable, match="meta"):
        dequantized_weight(torch.empty(3, 8, device="meta"), 4)


def test_cpu_kernel_errors_are_typed():
    """The C++ checks raise ValueError for a bad value and TypeError for a bad dtype (no message matching needed)."""
    w = torch.randn(3, 8)
    for op in (torch.ops.qsnn.quantize_weight, torch.ops.qsnn.dequantized_weight):
        with pytest.raises(ValueError):
            op(w, 3)
        with pytest.raises(TypeError):
            op(w.to(torch.int32), 4)
        with pytest.raises(ValueError):
            op(torch.zeros(0, 8), 4)
    with pytest.raises(TypeError):
        torch.ops.qsnn.spike_levels(torch.zeros(3, dtype=torch.int32), 1.0, 2, False)
    with pytest.raises(ValueError):
        torch.ops.qsnn.spike_levels(torch.zeros(3), 1.0, 8, True)
    with pytest.raises(ValueError):
        torch.ops.qsnn.spike_levels(torch.zeros(3), 0.0, 2, False)


def test_channels_last_weight_keeps_its_layout():
    """A channels-last conv weight (each output channel one block of memory) is read in place and
    the outputs take its strides; the values are the reference's."""
    w = _weight((6, 5, 3, 3), 4).contiguous(memory_format=torch.channels_last)
    q, _ = quantize_weight(w, 4)
    deq = dequantized_weight(w, 4)
    assert q.stride() == w.stride() and deq.stride() == w.stride()
    q_ref, _, deq_ref = _expected(w.contiguous(), 4)
    assert torch.equal(q, q_ref) and torch.equal(deq, deq_ref)


def test_no_gradient_and_detached():
    w = torch.randn(4, 9, requires_grad=True)
    assert not dequantized_weight(w, 2).requires_grad
    assert not quantize_weight(w, 2)[1].requires_grad


@pytest.mark.parametrize("w, w_bits, err, match", [
    (torch.zeros(3, 4, dtype=torch.int32), 4, TypeError, "float tensor"),
    ([1.0, 2.0], 4, TypeError, "float tensor"),
    (torch.zeros(0, 4), 4, ValueError, "non-empty"),
    (torch.zeros(4, 0), 4, ValueError, "non-empty"),
    (torch.zeros(()), 4, ValueError, "non-empty"),
    (torch.zeros(3, 4), 3, ValueError, "w_bits"),
    (torch.zeros(3, 4), 16, ValueError, "w_bits"),
])
def test_bad_input(w, w_bits, err, match):
    for fn in (quantize_weight, dequantized_weight):
        with pytest.raises(err, match=match):
            fn(w, w_bits)
    with pytest.raises(ValueError, match="backend"):
        quantize_weight(torch.zeros(3, 4), 4, backend="fast")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    w = torch.randn(6, 35, dtype=dtype)
    torch.library.opcheck(torch.ops.qsnn.quantize_weight.default, (w, 4))
    torch.library.opcheck(torch.ops.qsnn.dequantized_weight.default, (w, 1))


# --------------------------------------------------------------------------- spike_levels


@pytest.mark.parametrize("bits, scale, dtype", [(1, 1.0, torch.uint8), (2, 0.5, torch.int8), (4, 0.3, torch.uint8),
                                                (7, 0.75, torch.int8), (8, 1.0, torch.uint8)])
@pytest.mark.parametrize("n", [1, 7, 9, 65536 + 13])
def test_spike_levels_match_the_torch_path(bits, scale, dtype, n):
    g = torch.Generator().manual_seed(n + bits)
    levels = torch.randint(0, 1 << bits, (n,), generator=g)
    x = levels.float() * scale
    out = spike_levels(x, scale, bits, dtype)
    assert out.dtype == dtype and torch.equal(out, levels.to(dtype))
    assert torch.equal(out, spike_levels(x, scale, bits, dtype, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 0.25, 0.3])
def test_spike_levels_cpu_kernel_is_the_torch_formula(dtype, scale):
    """The CPU kernel and the torch formula (the CUDA kernel and backend="reference") give the same
    levels and the same count of invalid elements, valid and invalid values mixed, in every dtype."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randint(0, 8, (70001,), generator=g).to(torch.float64) * scale).to(dtype)
    x[::7] = x[::7] + 0.1                                                     # not levels
    x[::11] = -x[::11] - scale                                                # negative levels
    x[5], x[6], x[13] = float("nan"), float("inf"), 9 * scale                 # out of range at s_bits = 3
    levels, bad = torch.ops.qsnn.spike_levels(x, scale, 3, False)
    ref_levels, ref_bad = quantize._spike_levels_torch(x, scale, 3, False)
    assert int(bad) == int(ref_bad) > 70001 // 11 and torch.equal(levels, ref_levels)
    if scale != 0.3:                                                          # levels * scale exact in every dtype
        good = (x[1:4].to(torch.float64) / scale).round()
        assert torch.equal(spike_levels(x[1:4], scale, 3), good.to(torch.uint8))


def test_spike_levels_bits_keyword_is_deprecated():
    x = torch.tensor([0.0, 1.0, 3.0])
    with pytest.warns(FutureWarning, match="s_bits"):
        old = spike_levels(x, 1.0, bits=2)
    assert torch.equal(old, spike_levels(x, 1.0, s_bits=2))
    with pytest.raises(TypeError, match="s_bits"):
        spike_levels(x, 1.0, 2, bits=2)


def test_spike_levels_layouts():
    x = torch.randint(0, 4, (6, 5, 4, 3)).float().contiguous(memory_format=torch.channels_last)
    out = spike_levels(x, 1.0, 2)
    assert out.stride() == x.stride() and torch.equal(out, x.to(torch.uint8))
    y = x.transpose(0, 3)[::2]                                                # not dense: copied
    assert torch.equal(spike_levels(y, 1.0, 2), y.to(torch.uint8))


@pytest.mark.parametrize("bad", [0.5, -1.0, 4.0, float("nan"), float("inf"), 0.3 * 3 + 1e-3])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_spike_levels_reject_non_spikes(bad, backend):
    for n in (5, 70000):                                                      # vector body and scalar tail
        x = torch.zeros(n)
        x[n - 2] = bad
        with pytest.raises(ValueError, match="not 2-bit spikes"):
            spike_levels(x, 1.0 if bad != 0.3 * 3 + 1e-3 else 0.3, 2, backend=backend)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(x=torch.zeros(3, dtype=torch.int32)), TypeError, "float tensor"),
    (dict(dtype=torch.int16), TypeError, "dtype"),
    (dict(bits=0), ValueError, "bits"), (dict(bits=9), ValueError, "bits"),
    (dict(bits=8, dtype=torch.int8), ValueError, "bits"),
    (dict(scale=0.0), ValueError, "scale"), (dict(backend="fast"), ValueError, "backend")])
def test_spike_levels_bad_arguments(kwargs, err, match):
    args = dict(x=torch.zeros(3), scale=1.0, bits=2, dtype=torch.uint8) | kwargs
    backend = args.pop("backend", "auto")
    with pytest.raises(err, match=match):
        spike_levels(args["x"], args["scale"], args["bits"], args["dtype"], backend=backend)


def test_spike_levels_opcheck():
    torch.library.opcheck(torch.ops.qsnn.spike_levels.default, (torch.tensor([0.0, 0.5, 1.5]), 0.5, 2, False))
