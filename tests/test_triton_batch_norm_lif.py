"""The Triton kernels of the fused batch norm + LIF ops against the reference, on CPU tensors under
TRITON_INTERPRET=1 (tests/conftest.py sets it on machines without a GPU, before triton is imported).

* Forward (float32): spikes bit for bit with :func:`qsnn_kernels.reference.batch_norm_lif` given
  the statistics the op used; the levels are the spikes' levels; the statistics equal the
  reference's up to float32 rounding. Through the public function, the kernels registered as the
  ops' CPU kernels (``triton_kernels_on_cpu(TRITON_KERNELS)``): contiguous, channels-last
  ``[T, B, C, H, W]``, ``[T, B, C]``, ``[T, B, C, L]`` and a frame broadcast over T.
* Backward: the backward kernels against autograd of the reference in float32, given the
  reference's own statistics (so both follow one trajectory), with and without batch statistics;
  through the public function and its autograd, against the C++ kernels on inputs whose
  statistics are exact (so both backends use the same ones).
* Bad input raises before any kernel launches; every kernel variant compiles for sm_90a without
  register spills (Triton's bundled ptxas, no GPU).
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

import qsnn_kernels as qk
from qsnn_kernels import reference
from qsnn_kernels.choices import DEFAULT_ALPHA
from qsnn_kernels.testing import mismatches, run_without_interpreter
from qsnn_kernels.triton_on_cpu import triton_kernels_on_cpu

bnl = importlib.import_module("qsnn_kernels.batch_norm_lif")  # the module (the package's name is the function)

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET=1 is not set (tests/conftest.py sets it on CPU-only machines)",
                allow_module_level=True)

kernels = pytest.importorskip("qsnn_kernels.triton.batch_norm_lif")

# the interpreter evaluates sigmoid terms far from a level in numpy, where exp overflows to inf (term 0)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered")

# float32 kernel vs float32 autograd of the reference on one trajectory: both round, in different
# orders (the batch-statistics correction cancels, so relative to the largest gradient)
GRAD_REL_TOL = 2e-5

LAYOUTS = ["nchw", "nhwc", "tbc", "tbcl", "broadcast"]
FORWARD_CASES = [(layout, t_steps, s_bits) for layout in LAYOUTS for t_steps in (1, 2, 4) for s_bits in (1, 4, 8)]
FORWARD_CASES += [("wide_c", 4, 4), ("wide_c", 1, 1), ("wide_i", 2, 8), ("wide_i", 4, 1)]


def _x(layout: str, t_steps: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """x [T, B, C, ...] float32 of ``layout``: contiguous NCHW, channels-last, [T, B, C], [T, B, C, L]
    (odd inner), one NCHW frame broadcast over T (stride 0), and two whose tiles (128 neurons under
    the interpreter) split a step along the contiguous dim: C = 150 channels-last, 13 x 13 NCHW."""
    g = torch.Generator().manual_seed(seed)
    if layout == "nchw":
        x = torch.randn(t_steps, 2, 3, 4, 5, generator=g)
    elif layout == "nhwc":
        x = torch.randn(t_steps * 2, 5, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        x = x.unflatten(0, (t_steps, 2))
    elif layout == "tbc":
        x = torch.randn(t_steps, 8, 13, generator=g)
    elif layout == "tbcl":
        x = torch.randn(t_steps, 2, 5, 11, generator=g)
    elif layout == "wide_c":
        x = torch.randn(t_steps, 2, 150, generator=g)
    elif layout == "wide_i":
        x = torch.randn(t_steps, 1, 2, 13, 13, generator=g)
    else:
        return (torch.randn(1, 2, 3, 4, 5, generator=g) * scale + 0.3 * scale).expand(t_steps, -1, -1, -1, -1)
    return x * scale + 0.3 * scale


def _params(c: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.rand(c, generator=g) + 0.5
    w[0] = -w[0]  # a negative scale
    return w, torch.randn(c, generator=g) * 0.3


def _neuron(s_bits: int, hard: bool, **kw):
    # v_th small enough that the normalized input reaches every level
    return dict(s_bits=s_bits, v_th=2.0 / (1 << s_bits) if s_bits > 1 else 0.75, decay=0.8,
                v_reset=-0.125 if hard else 0.0, reset="hard" if hard else "soft", **kw)


def _reference_args(n):
    return (n["s_bits"], n["v_th"], n["decay"], n["v_reset"], n["reset"], n.get("surrogate", "atan"),
            n.get("alpha"), n.get("detach_reset", False))


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("layout,t_steps,s_bits", FORWARD_CASES)
def test_forward_bit_exact(layout, t_steps, s_bits):
    x = _x(layout, t_steps, seed=t_steps * 10 + s_bits)
    c = x.shape[2]
    w, b = _params(c, seed=s_bits)
    for hard in (True, False):
        neuron = _neuron(s_bits, hard)
        with triton_kernels_on_cpu(bnl.TRITON_KERNELS):
            spikes, levels = qk.batch_norm_lif(x, w, b, return_levels=True, **neuron)
            x2, inner, _, _ = bnl._channel_layout(x)
            mean, var = torch.ops.qsnn.batch_norm_statistics(x2, c, inner)
        assert (x2.stride(0) == 0) == (layout == "broadcast" and t_steps > 1)  # read in place, not materialized
        assert spikes.shape == x.shape and spikes.dtype == x.dtype and levels.dtype == torch.uint8
        if layout != "broadcast":
            assert spikes.stride() == x.stride()  # the layout is kept
        ref_mean, ref_var = reference.batch_norm_statistics(x)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, ref_var, rtol=1e-5, atol=1e-6)
        ref = reference.batch_norm_lif(x.contiguous(), w, b, mean, var, 1e-5, *_reference_args(neuron))
        assert mismatches(spikes, ref) == 0
        assert torch.equal(levels.float() * neuron["v_th"], spikes)
        if s_bits > 1 and t_steps > 1:  # the inputs reach the upper levels, so the test can fail
            assert levels.max() > (1 << s_bits) // 4 and (levels == 0).any()


@pytest.mark.parametrize("layout", ["nchw", "tbc"])
def test_forward_running_statistics_and_nan(layout):
    """Eval mode (the running statistics, constants) and a NaN current: NaN spikes at that neuron
    only, level 0 there, as the reference."""
    x = _x(layout, 3, seed=5).clone()
    x.view(3, -1)[1, 7] = float("nan")
    c = x.shape[2]
    w, b = _params(c, seed=5)
    rm, rv = torch.randn(c) * 0.1, torch.rand(c) + 0.5
    neuron = _neuron(2, True)
    with triton_kernels_on_cpu(bnl.TRITON_KERNELS):
        spikes, levels = qk.batch_norm_lif(x, w, b, rm, rv, training=False, return_levels=True, **neuron)
    ref = reference.batch_norm_lif(x, w, b, rm, rv, 1e-5, *_reference_args(neuron))
    assert mismatches(spikes, ref) == 0 and spikes.isnan().sum() == 2  # steps 1 and 2 of that neuron
    assert levels.view(3, -1)[1:, 7].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float16])
def test_forward_half_rounds_the_affine_map_in_x_dtype(dtype):
    """float16 (a GPU dtype): y = x * scale + shift rounded to x's dtype after each op, as torch's
    ops in that dtype; the neuron in float32 on that y; spikes in x's dtype. (bfloat16 alike on a
    GPU, where the kernels round to nearest (the compile test checks cvt.rn); Triton's
    interpreter truncates float32 to bfloat16, so it cannot check bfloat16 bit for bit.)"""
    x = _x("nchw", 3, seed=9).to(dtype)
    w, b = (t.to(dtype) for t in _params(3, seed=9))
    mean, var = (t.to(dtype) for t in reference.batch_norm_statistics(x.float()))
    neuron = _neuron(4, True)
    lif = (neuron["s_bits"], neuron["v_th"], neuron["decay"], neuron["v_reset"], True, "atan", 2.0, False)
    spikes, levels = kernels.batch_norm_lif_forward_triton(x.reshape(3, -1), w, b, mean, var, 1e-5, 20, True, *lif,
                                                           True)
    scale, shift = reference.batch_norm_scale_shift(w, b, mean, var, 1e-5)
    y = x * scale.view(1, 1, -1, 1, 1) + shift.view(1, 1, -1, 1, 1)
    ref = reference.multilevel_lif(y.float(), *_reference_args(neuron)[:5])[0].to(dtype)
    assert spikes.dtype == dtype and mismatches(spikes.view(x.shape), ref) == 0
    assert torch.equal(levels.float() * neuron["v_th"], spikes.float()) and levels.max() > 1
    # the statistics of half x are float32 (as a batch norm under autocast keeps them)
    mean2, var2 = kernels.batch_norm_statistics_triton(x.reshape(3, -1), 3, 20)
    ref_mean, ref_var = reference.batch_norm_statistics(x.float())
    assert mean2.dtype == var2.dtype == torch.float32
    torch.testing.assert_close(mean2, ref_mean)
    torch.testing.assert_close(var2, ref_var)


@pytest.mark.parametrize("batch_stats", [True, False])
def test_half_x_with_float32_parameters_is_the_float32_reference(batch_stats):
    """float16 x (a GPU dtype, e.g. a convolution's output under autocast) with float32 weight,
    bias and statistics, as the functional API passes them: the float32 reference on ``x.float()``,
    spikes rounded to x's dtype bit for bit; gradients those of its autograd, grad_x in x's dtype
    and the parameters' gradients in float32."""
    x = _x("nchw", 3, seed=10).to(torch.float16)
    w, b = _params(3, seed=10)
    mean, var = kernels.batch_norm_statistics_triton(x.reshape(3, -1), 3, 20)
    neuron = _neuron(2, False)
    lif = (neuron["s_bits"], neuron["v_th"], neuron["decay"], neuron["v_reset"], False, "atan", 2.0, False)
    spikes, _ = kernels.batch_norm_lif_forward_triton(x.reshape(3, -1), w, b, mean, var, 1e-5, 20, batch_stats, *lif,
                                                      False)
    xr = x.float().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = reference.batch_norm_lif(xr, wr, br, None if batch_stats else mean, None if batch_stats else var, 1e-5,
                                   *_reference_args(neuron))
    if batch_stats:  # the reference's own batch statistics; the op's equal them to rounding
        torch.testing.assert_close(mean, reference.batch_norm_statistics(x.float())[0])
    assert spikes.dtype == torch.float16 and (spikes.float() > 0).any()
    if not batch_stats:
        assert mismatches(spikes.view(x.shape), ref.detach().to(torch.float16)) == 0
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    want = torch.autograd.grad((ref * grad).sum(), (xr, wr, br))
    got = kernels.batch_norm_lif_backward_triton(grad.reshape(3, -1), x.reshape(3, -1), w, b, mean, var, 1e-5, 20,
                                                 batch_stats, *lif)
    assert got[0].dtype == torch.float16 and got[1].dtype == got[2].dtype == torch.float32
    for a, e in zip(got, want):
        assert _rel_err(a.float().view(e.shape), e) < (2e-3 if a.dtype == torch.float16 else 1e-4)


def test_statistics_shifted_sums():
    """|mean| >> std: the per-channel shift keeps the one-pass variance accurate in float32."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 6, 5, generator=g) * 0.01 + torch.tensor([1000.0, -300.0, 0.0, 5.0, 1e-3, 7.0])[:, None]
    mean, var = kernels.batch_norm_statistics_triton(x.reshape(4, -1), 6, 5)
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(0, 1, 3), correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-3, atol=0)


# --------------------------------------------------------------------------- backward


BACKWARD_CASES = [
    # layout, T, s_bits, hard, surrogate, detach_reset
    ("nchw", 4, 1, True, "atan", False),
    ("nhwc", 2, 4, False, "sigmoid", False),
    ("tbc", 4, 8, True, "rect", False),
    ("tbcl", 1, 1, False, "rect", True),
    ("broadcast", 4, 4, True, "sigmoid", True),
    ("tbc", 2, 8, False, "atan", False),
    ("wide_c", 2, 2, True, "atan", False),
    ("wide_i", 2, 1, False, "rect", False),
]


@pytest.mark.parametrize("layout,t_steps,s_bits,hard,surrogate,detach", BACKWARD_CASES)
@pytest.mark.parametrize("batch_stats", [True, False])
def test_backward_matches_reference_autograd(layout, t_steps, s_bits, hard, surrogate, detach, batch_stats):
    x = _x(layout, t_steps, seed=t_steps + s_bits)
    c = x.shape[2]
    w, b = _params(c, seed=7)
    neuron = _neuron(s_bits, hard, surrogate=surrogate, detach_reset=detach)
    alpha = float(DEFAULT_ALPHA[surrogate])
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    if batch_stats:
        ref = reference.batch_norm_lif(xr, wr, br, None, None, 1e-5, *_reference_args(neuron))
        mean, var = reference.batch_norm_statistics(x)  # the values the reference normalized with
    else:
        mean, var = torch.randn(c) * 0.1, torch.rand(c) + 0.5
        ref = reference.batch_norm_lif(xr, wr, br, mean, var, 1e-5, *_reference_args(neuron))
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (xr, wr, br), grad)
    x2, inner, _, _ = bnl._channel_layout(x)
    assert (x2.stride(0) == 0) == (layout == "broadcast" and t_steps > 1)  # the kernels read the frame in place
    g2 = grad.reshape(t_steps, -1) if layout != "nhwc" else grad.permute(0, 1, 3, 4, 2).reshape(t_steps, -1)
    lif = (s_bits, neuron["v_th"], neuron["decay"], neuron["v_reset"], hard, surrogate, alpha, detach)
    grad_x, grad_w, grad_b = kernels.batch_norm_lif_backward_triton(g2, x2, w, b, mean, var, 1e-5, inner,
                                                                    batch_stats, *lif)
    assert grad_x.shape == (t_steps, x2.shape[1]) and grad_w.shape == grad_b.shape == (c,)
    grad_x = grad_x.view(t_steps, 2, 3, 3, 5).permute(0, 1, 4, 2, 3) if layout == "nhwc" else grad_x.view(x.shape)
    for name, a, e in zip(("x", "weight", "bias"), (grad_x, grad_w, grad_b), want):
        assert _rel_err(a, e) < GRAD_REL_TOL, name
    assert want[0].abs().max() > 0  # the trajectory spikes and has surrogate slope: the test can fail


@pytest.mark.parametrize("layout", ["nhwc", "broadcast"])
@pytest.mark.parametrize("training", [True, False])
def test_autograd_through_the_ops_matches_cpp(layout, training):
    """The public function with the Triton kernels as the ops' kernels (forward, statistics and the
    registered backward) against the C++ kernels: on inputs of quarter steps over 64 samples per
    channel the statistics are exact, so both backends normalize alike."""
    g = torch.Generator().manual_seed(11)
    if layout == "nhwc":  # [2, 4, 3, 2, 4] channels-last: 2 * 4 * 8 = 64 per channel
        x = (torch.randint(-8, 9, (8, 3, 2, 4), generator=g) / 4.0).contiguous(memory_format=torch.channels_last)
        x = x.unflatten(0, (2, 4)).requires_grad_(True)
    else:
        frame = torch.randint(-8, 9, (1, 4, 3, 4, 4), generator=g) / 4.0
        x = frame.expand(4, -1, -1, -1, -1).requires_grad_(True)  # 4 * 4 * 16 = 256 per channel
    c = x.shape[2]
    w, b = (t.requires_grad_(True) for t in _params(c, seed=11))
    neuron = _neuron(2, True, surrogate="atan")
    rm0, rv0 = torch.randn(c) * 0.1, torch.rand(c) + 0.5
    outs = []
    for triton in (True, False):
        rm, rv = rm0.clone(), rv0.clone()
        if triton:
            with triton_kernels_on_cpu(bnl.TRITON_KERNELS):
                spikes = qk.batch_norm_lif(x, w, b, rm, rv, training=training, **neuron)
                grads = torch.autograd.grad(spikes, (x, w, b), torch.ones_like(spikes) * 0.5)
        else:
            spikes = qk.batch_norm_lif(x, w, b, rm, rv, training=training, **neuron)
            grads = torch.autograd.grad(spikes, (x, w, b), torch.ones_like(spikes) * 0.5)
        outs.append((spikes.detach(), grads, rm, rv))
    (s_t, g_t, rm_t, rv_t), (s_c, g_c, rm_c, rv_c) = outs
    assert mismatches(s_t, s_c) == 0 and s_t.any()
    assert torch.equal(rm_t, rm_c) and torch.equal(rv_t, rv_c)
    for name, a, e in zip(("x", "weight", "bias"), g_t, g_c):
        assert _rel_err(a, e) < GRAD_REL_TOL, name


@pytest.mark.parametrize("batch_stats", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_opcheck_with_the_triton_kernels(batch_stats):
    """The ops' schema, fakes and registered autograd with the Triton kernels as their kernels."""
    x = _x("tbcl", 2, seed=4).reshape(2, -1)
    w, b = _params(5, seed=4)
    args = (x, w, b, torch.randn(5) * 0.1, torch.rand(5) + 0.5, 1e-5, 11, batch_stats, 2, 0.5, 0.5, 0.0, True, "atan",
            2.0, False)
    with triton_kernels_on_cpu(bnl.TRITON_KERNELS):
        torch.library.opcheck(torch.ops.qsnn.batch_norm_lif_forward.default, (*args, True))
        torch.library.opcheck(torch.ops.qsnn.batch_norm_lif_forward.default,
                              (x.clone().requires_grad_(), w.clone().requires_grad_(), *args[2:], False))
        torch.library.opcheck(torch.ops.qsnn.batch_norm_lif_backward.default, (torch.randn_like(x), *args))
        torch.library.opcheck(torch.ops.qsnn.batch_norm_statistics.default, (x, 5, 11))


# --------------------------------------------------------------------------- errors


def _forward_args(x, c=3, inner=4, dtype=torch.float32):
    p = torch.ones(c, dtype=dtype)
    return (x, p, p, p * 0, p, 1e-5, inner, True, 1, 1.0, 0.5, 0.0, True, "atan", 2.0, False)


@pytest.mark.parametrize("call,error,match", [
    (lambda: kernels.batch_norm_lif_forward_triton(*_forward_args(torch.randn(2, 24).double(), dtype=torch.float64),
                                                   False), TypeError, "float32"),
    (lambda: kernels.batch_norm_lif_forward_triton(*_forward_args(torch.randn(2, 20)), False), ValueError,
     "multiple of C"),
    (lambda: kernels.batch_norm_lif_forward_triton(*_forward_args(torch.randn(24)), False), ValueError, r"\[T, N\]"),
    (lambda: kernels.batch_norm_lif_forward_triton(*_forward_args(torch.randn(0, 24)), False), ValueError, "T >= 1"),
    (lambda: kernels.batch_norm_lif_forward_triton(*_forward_args(torch.randn(2, 24))[:1], torch.ones(3).double(),
                                                   *_forward_args(torch.randn(2, 24))[2:], False),
     ValueError, "x's dtype"),
    (lambda: kernels.batch_norm_lif_backward_triton(torch.randn(2, 12), *_forward_args(torch.randn(2, 24))),
     ValueError, "grad_spikes"),
    (lambda: kernels.batch_norm_lif_backward_triton(torch.randn(2, 24), *_forward_args(torch.randn(2, 24))[:13],
                                                    "relu", 2.0, False), ValueError, "surrogate"),
    (lambda: kernels.batch_norm_lif_backward_triton(torch.randn(2, 24), *_forward_args(torch.randn(2, 24))[:14],
                                                    0.0, False), ValueError, "alpha"),
    (lambda: kernels.batch_norm_statistics_triton(torch.randn(2, 24), 5, 1), ValueError, "multiple of C"),
    (lambda: kernels.batch_norm_lif_forward_triton(*_forward_args(torch.randn(2, 24))[:8], 3,
                                                   *_forward_args(torch.randn(2, 24))[9:], False),
     ValueError, "s_bits"),
])
def test_bad_input_raises_before_any_launch(monkeypatch, call, error, match):
    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(kernels._Tiling, "launch", no_launch)
    with pytest.raises(error, match=match):
        call()


def test_float64_refused_by_the_triton_kernels():
    """float64 is the C++ kernels' alone (as for the LIF kernels): a TypeError from the Triton ones."""
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    w = torch.ones(3, dtype=torch.float64)
    with triton_kernels_on_cpu(bnl.TRITON_KERNELS), pytest.raises(TypeError, match="float32"):
        qk.batch_norm_lif(x, w, w)


# --------------------------------------------------------------------------- on a GPU (gpu-marked)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (not the interpreter)")
# Triton vs the composite (torch ops + the LIF ops) on the GPU: their backward rounds in x's dtype
GPU_GRAD_REL_TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
GPU_STAT_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
                torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "broadcast"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_the_composite(layout, dtype):
    """Larger shapes on the GPU: the Triton kernels against the composite on the same device (the
    same torch ops for scale and shift, the Triton LIF step): spikes and levels bit for bit, given
    the same statistics; statistics against torch.var_mean; gradients to the composite's rounding."""
    g = torch.Generator().manual_seed(21)
    t_steps, shape = 4, (8, 64, 14, 14)
    if layout == "broadcast":
        x = (torch.randn(1, *shape, generator=g) + 0.3).cuda().to(dtype).expand(t_steps, *shape)
    else:
        x = (torch.randn(t_steps, *shape, generator=g) + 0.3).cuda().to(dtype)
        if layout == "nhwc":
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (t_steps, shape[0]))
    c = shape[1]
    w, b = (t.cuda().to(bnl.statistics_dtype(dtype)) for t in _params(c, seed=21))  # float32 for half x
    x2, inner, _, _ = bnl._channel_layout(x)
    assert (x2.stride(0) == 0) == (layout == "broadcast")
    mean, var = torch.ops.qsnn.batch_norm_statistics(x2, c, inner)
    ref_var, ref_mean = torch.var_mean(x.float(), dim=(0, 1, 3, 4), correction=0)
    torch.testing.assert_close(mean.float(), ref_mean, **GPU_STAT_TOL[dtype])
    torch.testing.assert_close(var.float(), ref_var, **GPU_STAT_TOL[dtype])
    for s_bits, hard, surrogate in ((1, True, "atan"), (4, False, "sigmoid"), (8, True, "rect")):
        neuron = _neuron(s_bits, hard)
        args = (w, b, mean, var, 1e-5, inner, True, s_bits, neuron["v_th"], neuron["decay"], neuron["v_reset"], hard,
                surrogate, float(DEFAULT_ALPHA[surrogate]), False)
        spikes, levels = torch.ops.qsnn.batch_norm_lif_forward(x2, *args, True)
        want, want_levels = bnl._forward_composite(x2, *args, True)
        assert mismatches(spikes, want) == 0 and torch.equal(levels, want_levels) and levels.max() > 0
        grad = torch.randn(x2.shape, generator=g).cuda().to(dtype)
        got = torch.ops.qsnn.batch_norm_lif_backward(grad, x2, *args)
        want = bnl._backward_composite(grad, x2, *args)
        for name, a, e in zip(("x", "weight", "bias"), got, want):
            assert a.dtype == (dtype if name == "x" else w.dtype), (name, a.dtype)
            assert _rel_err(a.float(), e.float()) < GPU_GRAD_REL_TOL[dtype], (name, s_bits)


# --------------------------------------------------------------------------- compiled for the GPU


_COMPILE_SCRIPT = r"""
from qsnn_kernels.triton import batch_norm_lif as K
rows = K.compile_report(90)
for r in rows:
    print(r["variant"], "warps", r["num_warps"], "regs", r["registers"], "spills", r["spill_stores"],
          r["spill_loads"], "shared", r["shared"], "fma", r["fma"])
bad = [r["variant"] for r in rows if r["spill_stores"] or r["spill_loads"]]
assert not bad, ("register spills", bad)
# the forward and the backward's recomputation of h round as the reference: no FMA contraction
fused = [r["variant"] for r in rows if r["fma"] and r["variant"].startswith(("fwd", "bwd"))]
assert not fused, ("FMA in", fused)
# float16/bfloat16 narrowing rounds to nearest, as torch does (the interpreter truncates to bfloat16)
assert all(r["narrowing"] == ["rn"] for r in rows if " fp16 " in r["variant"] or " bf16 " in r["variant"]), rows
print("compiled", len(rows))
"""


def test_kernels_compile_for_sm90_without_spills():
    """Every kernel variant lowers to sm_90a PTX and cubin (the interpreter skips that path)."""
    done = run_without_interpreter(_COMPILE_SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
