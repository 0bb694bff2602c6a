"""qsnn::spike_conv2d and qsnn::spike_conv2d_weight_grad (csrc/spike_conv_cpu.cpp): the forward
against the exact integer convolution (both its paths: sparse levels, and dense ones above the
kernel's kMaxForwardDensity), the weight gradient against autograd of the float convolution on the spikes
``levels * in_scale``; odd shapes, every loop (1x1 and 3x3 AVX2, the plain one), paddings, wide
levels, all-zero input; each on the path QSNN_CPU_SIMD picks by default and on the plain loops
(``generic``); opcheck; bad input."""

from __future__ import annotations

import pytest
import torch

from qsnn_kernels import spike_conv
from qsnn_kernels.spike_conv import spike_conv2d, spike_conv2d_weight_grad


@pytest.fixture(params=["auto", "generic"])
def simd(request, monkeypatch):
    """The SIMD path (QSNN_CPU_SIMD, read at every call): this CPU's, and the plain loops."""
    monkeypatch.setenv("QSNN_CPU_SIMD", request.param)
    return request.param


def _levels(shape, top, density, seed):
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(1, top + 1, shape, generator=g, dtype=torch.uint8)
    return levels * (torch.rand(shape, generator=g) < density)


def _reference(grad, levels, in_scale, kernel_size, padding):
    """Autograd of conv2d on the spikes, in float64."""
    x = levels.double() * in_scale
    w = torch.zeros(grad.shape[1], levels.shape[1], *kernel_size, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(x, w, padding=padding).backward(grad.double())
    return w.grad


@pytest.mark.parametrize("n, c, h, w, co, kernel, padding, top, density, in_scale", [
    (2, 5, 7, 9, 11, (3, 3), (1, 1), 1, 0.3, 1.0),      # Cout not a multiple of 8
    (1, 3, 5, 4, 70, (3, 3), (0, 0), 3, 0.5, 0.5),      # several blocks of 8, no padding, batch 1
    (3, 17, 6, 6, 8, (1, 1), (0, 0), 2, 0.4, 1.0),      # 1x1 kernel
    (2, 4, 8, 8, 130, (3, 3), (2, 2), 1, 0.2, 0.25),    # padding 2
    (2, 3, 6, 7, 9, (2, 3), (1, 2), 255, 0.6, 1.0),     # another kernel (plain loop), 8-bit levels
    (1, 2, 1, 1, 3, (1, 1), (0, 0), 1, 1.0, 1.0),       # one position
    (40, 2, 3, 3, 4, (3, 3), (1, 1), 1, 0.3, 1.0),      # many images (several chunks)
    (2, 33, 4, 4, 520, (3, 3), (1, 1), 7, 0.3, 1.0),    # wide Cout: one image per chunk
])
def test_matches_autograd_of_the_dense_convolution(n, c, h, w, co, kernel, padding, top, density, in_scale, simd):
    levels = _levels((n, c, h, w), top, density, seed=n + c)
    oh, ow = h + 2 * padding[0] - kernel[0] + 1, w + 2 * padding[1] - kernel[1] + 1
    grad = torch.randn(n, co, oh, ow, generator=torch.Generator().manual_seed(co))
    got = spike_conv2d_weight_grad(grad, levels, in_scale, kernel, padding)
    assert got.shape == (co, c, *kernel) and got.dtype == torch.float32 and got.is_contiguous()
    want = _reference(grad, levels, in_scale, kernel, padding)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("n, c, h, w, co, kernel, padding, top, in_scale", [
    (2, 5, 7, 9, 11, (3, 3), (1, 1), 1, 1.0),
    (1, 3, 5, 4, 70, (3, 3), (0, 0), 3, 0.5),
    (3, 17, 6, 6, 8, (1, 1), (0, 0), 2, 1.0),
    (2, 4, 8, 8, 130, (3, 3), (2, 2), 1, 0.25),
    (2, 3, 6, 7, 9, (2, 3), (1, 2), 255, 1.0),
    (40, 2, 3, 3, 4, (3, 3), (1, 1), 1, 1.0),
    (2, 33, 4, 4, 520, (3, 3), (1, 1), 7, 1.0),
])
@pytest.mark.parametrize("density", [0.1, 0.6], ids=["sparse", "dense"])
def test_forward_is_the_exact_integer_convolution(n, c, h, w, co, kernel, padding, top, in_scale, density, simd):
    levels = _levels((n, c, h, w), top, density, seed=n + co)
    g = torch.Generator().manual_seed(c)
    codes = torch.randint(-128, 128, (co, c, *kernel), generator=g, dtype=torch.int8)
    scale = torch.rand(co, generator=g) + 0.01
    got = spike_conv2d(levels, codes, scale, in_scale, padding)
    exact = torch.nn.functional.conv2d(levels.double(), codes.double(), padding=padding)  # integers: exact
    assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == exact.shape
    want = (exact.float() * (scale * in_scale)[:, None, None])  # the sum exact, then one rounding
    assert torch.equal(got, want)


def test_forward_opcheck_and_errors():
    levels = _levels((2, 3, 5, 6), 3, 0.1, seed=2)
    codes = torch.randint(-8, 8, (4, 3, 3, 3), dtype=torch.int8)
    torch.library.opcheck(torch.ops.qsnn.spike_conv2d.default, (levels, codes, torch.rand(4), 0.5, [1, 1]))
    for bad, error, match in (((levels.float(), codes, torch.rand(4)), TypeError, "uint8"),
                              ((levels, codes.float(), torch.rand(4)), TypeError, "int8"),
                              ((levels, codes, torch.rand(4).double()), TypeError, "float32"),
                              ((levels, codes, torch.rand(5)), ValueError, "do not fit"),
                              ((levels, codes[:, :2], torch.rand(4)), ValueError, "do not fit")):
        with pytest.raises(error, match=match):
            spike_conv2d(*bad, 1.0, [1, 1])
    with pytest.raises(ValueError, match="padding"):
        spike_conv2d(levels, codes, torch.rand(4), 1.0, [3, 1])


def test_strided_and_channels_last_inputs_zero_levels_and_empty_batches():
    levels = _levels((2, 6, 5, 5), 1, 0.4, seed=3)
    grad = torch.randn(2, 10, 5, 5)
    want = spike_conv2d_weight_grad(grad, levels, 1.0, (3, 3), (1, 1))
    got = spike_conv2d_weight_grad(grad.to(memory_format=torch.channels_last),
                                   levels.to(memory_format=torch.channels_last), 1.0, (3, 3), (1, 1))
    torch.testing.assert_close(got, want)
    wide = torch.zeros(2, 6, 5, 10, dtype=torch.uint8)
    wide[..., ::2] = levels
    torch.testing.assert_close(spike_conv2d_weight_grad(grad, wide[..., ::2], 1.0, (3, 3), (1, 1)), want)
    zero = spike_conv2d_weight_grad(grad, torch.zeros_like(levels), 1.0, (3, 3), (1, 1))
    assert torch.equal(zero, torch.zeros(10, 6, 3, 3))
    empty = torch.zeros(0, 6, 5, 5, dtype=torch.uint8)
    assert torch.equal(spike_conv2d_weight_grad(torch.zeros(0, 10, 5, 5), empty, 1.0, (3, 3), (1, 1)),
                       torch.zeros(10, 6, 3, 3))
    codes = torch.ones(10, 6, 3, 3, dtype=torch.int8)
    assert spike_conv2d(empty, codes, torch.ones(10), 1.0, (1, 1)).shape == (0, 10, 5, 5)


def test_opcheck():
    levels = _levels((2, 3, 5, 6), 3, 0.5, seed=1)
    torch.library.opcheck(torch.ops.qsnn.spike_conv2d_weight_grad.default,
                          (torch.randn(2, 4, 5, 6), levels, 0.5, [3, 3], [1, 1]))


@pytest.mark.parametrize("grad, levels, kernel, padding, error, match", [
    ((1, 2, 3, 3), (1, 2, 3, 3, "float"), (1, 1), (0, 0), TypeError, "uint8"),
    ((1, 2, 3, 3), (2, 3, 3), (1, 1), (0, 0), ValueError, r"\[N, C, H, W\]"),
    ((1, 2, 3, 3, "double"), (1, 2, 3, 3), (1, 1), (0, 0), TypeError, "float32"),
    ((1, 2, 3, 3), (1, 2, 3, 3), (3, 3), (3, 3), ValueError, "padding"),
    ((1, 2, 4, 3), (1, 2, 3, 3), (3, 3), (1, 1), ValueError, "does not match"),
    ((2, 2, 3, 3), (1, 2, 3, 3), (3, 3), (1, 1), ValueError, "does not match"),
    ((1, 2, 1, 1), (1, 2, 2, 2), (3, 3), (0, 0), ValueError, "does not fit"),
])
def test_bad_input_is_a_clear_error(grad, levels, kernel, padding, error, match):
    def make(spec, default):
        dtype = {"float": torch.float32, "double": torch.float64}.get(spec[-1], default)
        return torch.zeros([s for s in spec if isinstance(s, int)], dtype=dtype)

    with pytest.raises(error, match=match):
        spike_conv2d_weight_grad(make(grad, torch.float32), make(levels, torch.uint8), 1.0, kernel, padding)


def test_applies_only_where_the_kernel_computes_it():
    cpu = torch.device("cpu")
    assert spike_conv.applies(cpu, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert not spike_conv.applies(cpu, (3, 3), (2, 2), (1, 1), (1, 1), 1)
    assert not spike_conv.applies(cpu, (3, 3), (1, 1), (1, 1), (2, 2), 1)
    assert not spike_conv.applies(cpu, (3, 3), (1, 1), (1, 1), (1, 1), 2)
    assert not spike_conv.applies(cpu, (3, 3), (1, 1), (3, 1), (1, 1), 1)
    assert not spike_conv.applies(torch.device("meta"), (3, 3), (1, 1), (1, 1), (1, 1), 1)
