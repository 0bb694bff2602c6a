"""multilevel_lif / multilevel_lif_int / MultiLevelLIF against qsnn_kernels.reference.

Forward spikes and membrane potentials must equal the reference bit for bit (the kernels do the
same float operations in the same order); gradients agree to summation-order rounding (float64:
1e-12 relative; float32: against the float32 reference, 1e-5); integer mode is bit-exact.
"""

import importlib.util
import math
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qsnn_kernels import _extension, lif, reference
from qsnn_kernels.lif import MultiLevelLIF, multilevel_lif, multilevel_lif_int
from qsnn_kernels.triton_on_cpu import interpreting, triton_kernels_on_cpu
from qsnn_kernels.testing import mismatches

_extension.extension()  # registers the CPU kernels; the suite needs the built extension

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None or not interpreting(),
                                  reason="needs triton and TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")
CPU_BACKENDS = ["auto", "reference", pytest.param("triton", marks=needs_triton)]

GRAD_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def currents(shape, s_bits, dtype=torch.float32, seed=0, v_th=0.75):
    """Random input currents that reach every level (and go negative)."""
    g = torch.Generator().manual_seed(seed)
    levels = (1 << s_bits) - 1
    return ((torch.rand(shape, generator=g, dtype=torch.float64) * 1.3 - 0.3) * (levels + 1) * v_th).to(dtype)

def run_both(x, v_init=None, **kw):
    ours = multilevel_lif(x, v_init=v_init, **kw)
    ref = multilevel_lif(x, v_init=v_init, backend="reference", **kw)
    return ours, ref


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("steps", [1, 2, 4, 16])
@pytest.mark.parametrize("s_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("v_th", [0.75, 0.5])  # the kernels multiply by 1/v_th when it is a power of two
def test_forward_matches_reference(steps, s_bits, reset, v_th):
    x = currents((steps, 3, 91), s_bits, v_th=v_th)  # 273 neurons: odd, not a multiple of any vector width
    v_init = currents((3, 91), s_bits, seed=1, v_th=v_th)
    kw = dict(s_bits=s_bits, v_th=v_th, decay=0.8, v_reset=0.1, reset=reset, return_levels=True)
    (s, v, lv), (sr, vr, lvr) = run_both(x, v_init, **kw)
    assert s.shape == x.shape and s.dtype == x.dtype and v.shape == x.shape[1:] and lv.dtype == torch.uint8
    assert mismatches(s, sr) == 0
    assert mismatches(v, vr) == 0  # the same float operations: exact, not just close
    assert mismatches(lv, lvr) == 0
    assert int(lv.max()) == (1 << s_bits) - 1 or steps == 1  # the data reach the top level


@pytest.mark.parametrize("decay", [1.0, 0.3])
def test_forward_float64_and_if_neuron(decay):
    x = currents((4, 33), 2, dtype=torch.float64)
    (s, v), (sr, vr) = run_both(x, s_bits=2, decay=decay)
    assert s.dtype == v.dtype == torch.float64
    assert mismatches(s, sr) == 0 and mismatches(v, vr) == 0


def test_non_contiguous_input():
    base = currents((9, 4, 2, 31), 4)
    x = base[::2].transpose(1, 3)  # [5, 31, 2, 4], strided
    v_init = currents((4, 2, 31), 4, seed=3).transpose(0, 2)
    assert not x.is_contiguous() and not v_init.is_contiguous()
    (s, v), (sr, vr) = run_both(x, v_init, s_bits=4, reset="soft")
    assert mismatches(s, sr) == 0 and mismatches(v, vr) == 0
    assert mismatches(s, multilevel_lif(x.contiguous(), v_init=v_init.contiguous(), s_bits=4, reset="soft")[0]) == 0


def test_channels_last_runs_in_place_and_keeps_layout():
    """A time-major channels-last [T, B, C, H, W] (dense in another dim order) gives the same spikes,
    membrane and gradients as its contiguous copy, and the outputs keep its strides."""
    x = currents((3 * 2, 5, 4, 6), 2).contiguous(memory_format=torch.channels_last).unflatten(0, (3, 2))
    v_init = currents((2, 5, 4, 6), 2, seed=5)
    results = []
    for xi in (x, x.contiguous()):
        xi = xi.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        s, v = multilevel_lif(xi, s_bits=2, v_init=v_init)
        s.backward(torch.linspace(-1, 1, s.numel()).reshape(s.shape))
        results.append((s, v, xi.grad))
    (s, v, g), (sc, vc, gc) = results
    assert s.stride() == x.stride() and g.stride() == x.stride()
    assert mismatches(s, sc) == 0 and mismatches(v, vc) == 0 and torch.equal(g, gc)


def test_one_dimensional_and_empty_neurons():
    x = currents((16,), 1)
    (s, v), (sr, vr) = run_both(x)
    assert v.shape == () and mismatches(s, sr) == 0 and mismatches(v, vr) == 0
    s, v = multilevel_lif(torch.zeros(3, 0, 5))
    assert s.shape == (3, 0, 5) and v.shape == (0, 5)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_nan_and_inf_follow_reference(reset):
    """NaN input: NaN spikes and membrane from that step on, neighbours unaffected; +inf under a
    hard reset gives v = inf * 0 = NaN (the reference's arithmetic)."""
    x = currents((6, 40), 4)
    x[2, 3] = float("nan")
    x[1, 7] = float("inf")
    x[4, 9] = float("-inf")
    x.requires_grad_(True)
    (s, v, lv), (sr, vr, lvr) = run_both(x, s_bits=4, reset=reset, return_levels=True)
    assert s[2:, 3].isnan().all() and v[3].isnan() and not s[:2, 3].isnan().any()
    assert not s[:, 0].isnan().any() and not s[:, 10:].isnan().any()
    assert mismatches(s, sr) == 0 and mismatches(v, vr) == 0 and mismatches(lv, lvr) == 0
    assert int(lv[2, 3]) == 0  # documented: level 0 where the spike value is NaN
    for surrogate in ("rect", "atan", "sigmoid"):
        (s, v), (sr, vr) = run_both(x, s_bits=4, reset=reset, surrogate=surrogate)
        g = torch.ones_like(s)
        (gx,) = torch.autograd.grad((s * g).sum(), x)
        (gxr,) = torch.autograd.grad((sr * g).sum(), x)
        assert torch.equal(gx.isnan(), gxr.isnan()), surrogate
        ok = ~gxr.isnan() & gxr.isfinite()
        torch.testing.assert_close(gx[ok], gxr[ok], **GRAD_TOL[torch.float32])


@pytest.mark.skipif(os.environ.get("QSNN_HOST_POOL_MB") == "0", reason="host pool disabled")
def test_large_outputs_reuse_warm_buffers():
    x = currents((2, 2**18), 1)  # 2 MiB outputs: pooled
    s = multilevel_lif(x)[0]
    ptr, want = s.data_ptr(), s.clone()
    del s
    again = multilevel_lif(x)[0]
    assert again.data_ptr() == ptr and torch.equal(again, want)
    assert torch.equal(again * 2, want * 2)  # an ordinary tensor otherwise


# --------------------------------------------------------------------------- backward


def grads(x, v_init, backend, **kw):
    s, v = multilevel_lif(x, v_init=v_init, backend=backend, **kw)
    g = torch.Generator().manual_seed(7)
    gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype)
    gv = torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype)
    return torch.autograd.grad((s * gs).sum() + (v * gv).sum(), (x, v_init))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("surrogate", ["rect", "atan", "sigmoid"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("s_bits", [1, 4])
def test_gradients_match_reference(dtype, surrogate, reset, detach_reset, s_bits):
    steps = 4 if s_bits == 1 else 2
    x = currents((steps, 5, 33), s_bits, dtype=dtype).requires_grad_()
    v_init = currents((5, 33), s_bits, dtype=dtype, seed=2).requires_grad_()
    kw = dict(s_bits=s_bits, v_th=0.75, decay=0.6, v_reset=-0.2, reset=reset, surrogate=surrogate,
              detach_reset=detach_reset)
    ours = grads(x, v_init, "auto", **kw)
    ref = grads(x, v_init, "reference", **kw)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype])
    assert ours[0].abs().sum() > 0


@pytest.mark.parametrize("steps", [1, 16])
@pytest.mark.parametrize("surrogate, alpha", [("atan", 3.0), ("rect", 1.0), ("rect", 0.3), ("rect", 0.05)])
def test_gradients_long_and_short_sequences(steps, surrogate, alpha):
    """s_bits = 8: the rect kernel visits only the levels near h/v_th (1, 5 or 21 of 255)."""
    x = currents((steps, 2, 31), 8, dtype=torch.float64).requires_grad_()
    v_init = torch.zeros(2, 31, dtype=torch.float64, requires_grad=True)
    kw = dict(s_bits=8, v_th=0.75, decay=0.9, surrogate=surrogate, alpha=alpha)
    for a, b in zip(grads(x, v_init, "auto", **kw), grads(x, v_init, "reference", **kw)):
        torch.testing.assert_close(a, b, **GRAD_TOL[torch.float64])


def test_gradient_of_final_membrane_only():
    x = currents((4, 37), 1, dtype=torch.float64).requires_grad_()
    (gx,) = torch.autograd.grad(multilevel_lif(x)[1].sum(), x)
    (gxr,) = torch.autograd.grad(multilevel_lif(x, backend="reference")[1].sum(), x)
    torch.testing.assert_close(gx, gxr, **GRAD_TOL[torch.float64])


# g'(z) of each surrogate at its default alpha (rect 1, atan 2, sigmoid 4), written out here rather
# than read from qsnn_kernels.choices.DEFAULT_ALPHA, so that changing a default fails a test
DEFAULT_SURROGATE_DERIVATIVES = {
    "rect": lambda z: (z.abs() < 0.5).to(z.dtype),
    "atan": lambda z: 1 / (1 + (math.pi * z) ** 2),
    "sigmoid": lambda z: 4 * torch.sigmoid(4 * z) * (1 - torch.sigmoid(4 * z)),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("surrogate", sorted(DEFAULT_SURROGATE_DERIVATIVES))
def test_default_alpha_gradients_have_known_values(backend, surrogate):
    """One step, binary spikes, only the spikes used, alpha=None: d spikes / d x = g'(x / v_th - 1)
    at the surrogate's default alpha, on every backend (the C++ and Triton kernels resolve no
    default themselves: the API passes it)."""
    v_th = 0.5
    x = torch.linspace(-0.25, 1.25, 25).reshape(1, 25).requires_grad_()
    spikes, _ = multilevel_lif(x, s_bits=1, v_th=v_th, surrogate=surrogate, backend=backend)
    (gx,) = torch.autograd.grad(spikes.sum(), x)
    want = DEFAULT_SURROGATE_DERIVATIVES[surrogate](x.detach().double() / v_th - 1)
    torch.testing.assert_close(gx.double(), want, rtol=1e-6, atol=1e-6)
    assert want.max() > 0.9  # the probe sits on the spike threshold, where g' peaks


# --------------------------------------------------------------------------- integer mode


@pytest.mark.parametrize("steps", [1, 2, 4, 16])
@pytest.mark.parametrize("s_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_int_bit_exact(steps, s_bits, reset):
    g = torch.Generator().manual_seed(steps * 10 + s_bits)
    theta = 37
    x = torch.randint(-40 * theta, 60 * theta * (1 << s_bits) // 8 + 1, (steps, 3, 91), generator=g).to(torch.int32)
    v_init = torch.randint(-500, 500, (3, 91), generator=g).to(torch.int32)
    for leak_shift, v_reset in ((0, 0), (1, -5), (3, 11), (31, 0)):
        kw = dict(s_bits=s_bits, theta=theta, leak_shift=leak_shift, v_reset=v_reset, reset=reset, v_init=v_init)
        lv, v = multilevel_lif_int(x, **kw)
        lvr, vr = multilevel_lif_int(x, backend="reference", **kw)
        assert lv.dtype == torch.uint8 and v.dtype == torch.int32 and lv.shape == x.shape
        assert mismatches(lv, lvr) == 0 and mismatches(v, vr) == 0


def test_int_negative_membrane_floors():
    """Soft reset keeps negative membranes; the shift of a negative v is arithmetic (floor)."""
    x = torch.tensor([[-7, 5, 9], [1, -3, 0], [10, 4, 2]], dtype=torch.int32)
    for reset in ("hard", "soft"):
        kw = dict(s_bits=2, theta=4, leak_shift=1, reset=reset)
        got, want = multilevel_lif_int(x, **kw), multilevel_lif_int(x, backend="reference", **kw)
        assert mismatches(got[0], want[0]) == 0 and mismatches(got[1], want[1]) == 0
    # step 2, neuron 0: v = -7, -7 >> 1 = -4 (not -3), h = -3; step 3: -3 >> 1 = -2, h = 8 -> level 2
    assert multilevel_lif_int(x, s_bits=2, theta=4, leak_shift=1)[0][:, 0].tolist() == [0, 0, 2]


def test_int_non_contiguous_and_overflow():
    x = torch.randint(-100, 100, (4, 7, 33), dtype=torch.int32).transpose(1, 2)
    got, want = multilevel_lif_int(x, s_bits=4, theta=9), multilevel_lif_int(x, s_bits=4, theta=9, backend="reference")
    assert mismatches(got[0], want[0]) == 0 and mismatches(got[1], want[1]) == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_int_overflow_is_an_overflow_error_before_any_kernel(backend):
    """The API checks the int32 range of h before any kernel runs, on every backend: an OverflowError
    (the C++ kernel's own check is a ValueError, the Triton kernel has none); a bound that fails
    without an overflow, and h = INT32_MIN exactly, still run."""
    big = torch.full((3, 5), 2**30 + 7, dtype=torch.int32)
    with pytest.raises(OverflowError, match="step 1"):
        multilevel_lif_int(big, s_bits=1, theta=2**31 - 1, backend=backend)
    with pytest.raises(OverflowError, match="step 0"):  # v_init enters the bound
        multilevel_lif_int(big[:1], s_bits=1, theta=2**31 - 1, v_init=big[0], backend=backend)
    near = torch.full((3, 5), 2**30, dtype=torch.int32)  # the cheap bound fails, h fits: runs
    cases = [(near[:2], dict(theta=3)), (torch.full((1, 4), -(2**31), dtype=torch.int32), dict(theta=7))]
    for x, kw in cases:
        got = multilevel_lif_int(x, s_bits=1, backend=backend, **kw)
        want = multilevel_lif_int(x, s_bits=1, backend="reference", **kw)
        assert mismatches(got[0], want[0]) == 0 and mismatches(got[1], want[1]) == 0


def test_reference_refuses_an_unknown_surrogate():
    with pytest.raises(ValueError, match="surrogate must be one of"):
        reference.multilevel_lif(torch.zeros(2, 3), surrogate="erf")


def test_cpu_kernel_errors_are_typed():
    """Direct op calls: the C++ kernels raise ValueError for bad values (an unknown surrogate name
    included, never a default) and TypeError for bad dtypes; h leaving int32 is a ValueError."""
    h = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="surrogate must be one of rect, atan, sigmoid, got tanh"):
        torch.ops.qsnn.lif_backward(h, None, h, 1, 1.0, 0.5, 0.0, True, "tanh", 1.0, False)
    with pytest.raises(ValueError, match="s_bits"):
        torch.ops.qsnn.lif_forward(h, None, 3, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
    with pytest.raises(ValueError, match="alpha"):
        torch.ops.qsnn.lif_backward(h, None, h, 1, 1.0, 0.5, 0.0, True, "atan", 0.0, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.qsnn.lif_forward(h.int(), None, 1, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
    with pytest.raises(TypeError, match="int32"):
        torch.ops.qsnn.lif_int(h, None, 1, 3, 0, 0, True)
    with pytest.raises(ValueError, match="theta"):
        torch.ops.qsnn.lif_int(h.int(), None, 1, 0, 0, 0, True)
    with pytest.raises(ValueError, match="leaves int32 at step 1"):
        torch.ops.qsnn.lif_int(torch.full((3, 5), 2**30 + 7, dtype=torch.int32), None, 1, 2**31 - 1, 0, 0, True)


# --------------------------------------------------------------------------- bad input

BAD_FLOAT = [
    (dict(s_bits=3), ValueError, "s_bits"),
    (dict(s_bits=True), ValueError, "s_bits"),
    (dict(v_th=0.0), ValueError, "v_th"),
    (dict(v_th=float("nan")), ValueError, "v_th"),
    (dict(decay=0.0), ValueError, "decay"),
    (dict(decay=1.5), ValueError, "decay"),
    (dict(reset="partial"), ValueError, "reset"),
    (dict(surrogate="erf"), ValueError, "surrogate"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(v_init=torch.zeros(5)), ValueError, "v_init"),
    (dict(v_init=torch.zeros(4, dtype=torch.int32)), TypeError, "v_init"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_FLOAT)
def test_bad_float_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        multilevel_lif(torch.zeros(3, 4), **kwargs)


@pytest.mark.parametrize("x, error, match", [
    (torch.zeros(0, 4), ValueError, "T >= 1"),
    (torch.zeros(3, 4, dtype=torch.int32), TypeError, "multilevel_lif_int"),
    (torch.zeros(3, 4, dtype=torch.float16), TypeError, "float16"),
    (torch.zeros(3, 4, dtype=torch.bfloat16), TypeError, "bfloat16"),
    ([[0.0]], TypeError, "tensor"),
])
def test_bad_float_input(x, error, match):
    with pytest.raises(error, match=match):
        multilevel_lif(x)


BAD_INT = [
    (dict(s_bits=5), ValueError, "s_bits"),
    (dict(theta=0), ValueError, "theta"),
    (dict(theta=2**31), ValueError, "theta"),
    (dict(theta=1.5), ValueError, "theta"),
    (dict(leak_shift=-1), ValueError, "leak_shift"),
    (dict(leak_shift=32), ValueError, "leak_shift"),
    (dict(v_reset=2**31), ValueError, "v_reset"),
    (dict(reset="none"), ValueError, "reset"),
    (dict(v_init=torch.zeros(3, dtype=torch.int32)), ValueError, "v_init"),
    (dict(v_init=torch.zeros(4)), TypeError, "v_init"),
    (dict(backend="fast"), ValueError, "backend"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_INT)
def test_bad_int_arguments(kwargs, error, match):
    kw = dict(s_bits=2, theta=3) | kwargs
    with pytest.raises(error, match=match):
        multilevel_lif_int(torch.zeros(3, 4, dtype=torch.int32), **kw)


@pytest.mark.parametrize("x, error", [
    (torch.zeros(3, 4), TypeError),
    (torch.zeros(3, 4, dtype=torch.int64), TypeError),
    (torch.zeros(0, 4, dtype=torch.int32), ValueError),
])
def test_bad_int_input(x, error):
    with pytest.raises(error):
        multilevel_lif_int(x, s_bits=1, theta=1)


def test_triton_backend_without_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(_extension.BackendUnavailable):
        multilevel_lif(torch.zeros(2, 3), backend="triton")
    with pytest.raises(TypeError, match="float64"):
        multilevel_lif(torch.zeros(2, 3, dtype=torch.float64), backend="triton")


# --------------------------------------------------------------------------- torch.func and double backward


def _loss(backend, s_bits, reset, surrogate, weights):
    def loss(x, v_init):
        spikes, v_last = multilevel_lif(x, s_bits=s_bits, v_th=0.75, decay=0.8, v_reset=0.1, reset=reset,
                                        surrogate=surrogate, v_init=v_init, backend=backend)
        return (spikes * weights).sum() + (v_last * weights[0]).sum()
    return loss


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's per-sample loop over the ops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("s_bits, reset, surrogate", [(1, "hard", "atan"), (2, "soft", "sigmoid"), (4, "hard", "rect")])
def test_func_grad_equals_reference_autograd(dtype, s_bits, reset, surrogate):
    """torch.func.grad (and vmap of it, jacrev) over multilevel_lif = autograd of the reference."""
    x = currents((5, 2, 7), s_bits, dtype=dtype)
    v_init = currents((2, 7), s_bits, dtype=_state(dtype), seed=1)
    weights = torch.randn(5, 2, 7, generator=torch.Generator().manual_seed(3), dtype=dtype)
    gx, gv = torch.func.grad(_loss("auto", s_bits, reset, surrogate, weights), argnums=(0, 1))(x, v_init)
    xr, vr = x.clone().requires_grad_(), v_init.clone().requires_grad_()
    gxr, gvr = torch.autograd.grad(_loss("reference", s_bits, reset, surrogate, weights)(xr, vr), (xr, vr))
    torch.testing.assert_close(gx, gxr, **GRAD_TOL[dtype])
    torch.testing.assert_close(gv, gvr.to(gv.dtype), **GRAD_TOL[dtype])
    # and the other transforms built on it: per-sample gradients, Jacobians
    batch = torch.stack([x, x * 0.5, x + 0.25])
    per_sample_grad = torch.func.vmap(torch.func.grad(_loss("auto", s_bits, reset, surrogate, weights)), in_dims=(0, None))
    per_sample = per_sample_grad(batch, None)
    for xb, g in zip(batch, per_sample):
        xb = xb.clone().requires_grad_()
        (gr,) = torch.autograd.grad(_loss("reference", s_bits, reset, surrogate, weights)(xb, None), xb)
        torch.testing.assert_close(g, gr, **GRAD_TOL[dtype])
    spikes = lambda backend: lambda x: multilevel_lif(x, s_bits=s_bits, reset=reset, surrogate=surrogate,
                                                      backend=backend)[0]
    torch.testing.assert_close(torch.func.jacrev(spikes("auto"))(x[:, :1, :3]),
                               torch.func.jacrev(spikes("reference"))(x[:, :1, :3]), **GRAD_TOL[dtype])


def _state(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def test_double_backward_raises_instead_of_a_gradient_without_graph():
    """A backward under create_graph=True raises a clear error rather than return a gradient with no
    graph (differentiating it again would silently lose the second-order term)."""
    x = currents((4, 6), 2, dtype=torch.float64).requires_grad_()
    weights = torch.randn(4, 6, dtype=torch.float64)
    (g_plain,) = torch.autograd.grad((multilevel_lif(x, s_bits=2)[0] * weights).sum(), x)
    assert not g_plain.requires_grad
    with pytest.raises(RuntimeError, match="multilevel_lif: double backward is not supported"):
        torch.autograd.grad((multilevel_lif(x, s_bits=2)[0] * weights).sum(), x, create_graph=True)
    # the raw op's registered autograd, and v_init's gradient, the same
    v = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    _, v_last, _ = torch.ops.qsnn.lif_forward(x, v, 2, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        v_last.sum().backward(create_graph=True)
    # nested torch.func transforms (a single torch.func.grad works: test_func_grad_equals_reference_autograd)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.func.grad(lambda y: torch.func.grad(lambda z: multilevel_lif(z, s_bits=2)[0].sum())(y).sum())(x.detach())
    # the reference is differentiable twice, as the message says
    (gr,) = torch.autograd.grad(multilevel_lif(x, s_bits=2, backend="reference")[0].sum(), x, create_graph=True)
    gr.sum().backward()


# --------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_v_init", [False, True])
def test_opcheck_forward_backward(dtype, with_v_init):
    x = currents((3, 37), 2, dtype=dtype).requires_grad_()
    v_init = currents((37,), 2, dtype=dtype, seed=4).requires_grad_() if with_v_init else None
    torch.library.opcheck(torch.ops.qsnn.lif_forward.default,
                          (x, v_init, 2, 0.75, 0.5, 0.0, with_v_init, "atan", 2.0, False))
    h = currents((3, 37), 2, dtype=dtype)
    gs, gv = torch.randn(3, 37, dtype=dtype), torch.randn(37, dtype=dtype)
    torch.library.opcheck(torch.ops.qsnn.lif_backward.default,
                          (gs, gv if with_v_init else None, h, 2, 0.75, 0.5, 0.0, not with_v_init, "sigmoid", 4.0,
                           with_v_init))


def test_opcheck_inference_forward_skips_h():
    x = currents((3, 37), 1)
    spikes, v_last, h = torch.ops.qsnn.lif_forward(x, None, 1, 0.75, 0.5, 0.0, True, "atan", 2.0, False, False)
    assert h.shape == (0, 37)
    torch.library.opcheck(torch.ops.qsnn.lif_forward.default,
                          (x, None, 1, 0.75, 0.5, 0.0, True, "atan", 2.0, False, False))
    with torch.no_grad():
        s, v = multilevel_lif(x.requires_grad_(), v_th=0.75)
    assert mismatches(s, spikes) == 0 and mismatches(v, v_last) == 0


def test_opcheck_optional_outputs_and_missing_grad_spikes():
    """v_last and grad_v_init only when asked ([0] otherwise), no grad_spikes tensor when the spikes
    received no gradient: schema, fake and kernel agree, and the other outputs do not change."""
    x = currents((3, 37), 2)
    full = torch.ops.qsnn.lif_forward(x, None, 2, 0.75, 0.5, 0.0, True, "atan", 2.0, False)
    out = torch.ops.qsnn.lif_forward(x, None, 2, 0.75, 0.5, 0.0, True, "atan", 2.0, False, True, False)
    assert out[1].shape == (0,) and mismatches(out[0], full[0]) == 0 and mismatches(out[2], full[2]) == 0
    torch.library.opcheck(torch.ops.qsnn.lif_forward.default,
                          (x, None, 2, 0.75, 0.5, 0.0, True, "atan", 2.0, False, True, False))
    h, gv = full[2], torch.randn(37)
    gx_zero_spikes, gvi = torch.ops.qsnn.lif_backward(torch.zeros_like(h), gv, h, 2, 0.75, 0.5, 0.0, True, "atan", 2.0,
                                                      False)
    gx, none_v = torch.ops.qsnn.lif_backward(None, gv, h, 2, 0.75, 0.5, 0.0, True, "atan", 2.0, False, False)
    assert none_v.shape == (0,) and mismatches(gx, gx_zero_spikes) == 0
    torch.library.opcheck(torch.ops.qsnn.lif_backward.default,
                          (None, gv, h, 2, 0.75, 0.5, 0.0, True, "atan", 2.0, False, False))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_frame_broadcast_over_time_runs_in_place(layout):
    """A direct-encoding input (one frame expanded over T, stride 0) gives the spikes and gradient of
    its materialized copy, and the op receives it without a copy."""
    frame = currents((2, 3, 4, 5), 2, seed=9)
    if layout == "channels_last":
        frame = frame.contiguous(memory_format=torch.channels_last)
    frame.requires_grad_()
    x = frame.unsqueeze(0).expand(4, *frame.shape)
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.qsnn.lif_forward.default:
                seen.append(args[0].stride(0))
            return func(*args, **(kwargs or {}))

    with Spy():
        spikes, v_last = multilevel_lif(x, s_bits=2)
    assert seen == [0]
    weights = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((spikes * weights).sum(), frame)
    dense = frame.detach().clone().requires_grad_()
    ref_spikes, ref_v = reference.multilevel_lif(dense.unsqueeze(0).repeat(4, 1, 1, 1, 1), 2)
    (ref_grad,) = torch.autograd.grad((ref_spikes * weights).sum(), dense)
    assert mismatches(spikes, ref_spikes) == 0 and mismatches(v_last, ref_v) == 0
    assert (spikes > 0).any() and (spikes == 0).any()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_opcheck_int():
    x = torch.randint(-20, 40, (4, 33), dtype=torch.int32)
    torch.library.opcheck(torch.ops.qsnn.lif_int.default, (x, None, 4, 5, 1, 0, True))
    torch.library.opcheck(torch.ops.qsnn.lif_int.default, (x, torch.ones(33, dtype=torch.int32), 2, 3, 0, -1, False))


# --------------------------------------------------------------------------- module and torch.compile


def test_module_is_stateless_by_default():
    lif = MultiLevelLIF(s_bits=2, v_th=0.5)
    x = currents((4, 3, 11), 2, v_th=0.5)
    first, second = lif(x), lif(x)
    assert torch.equal(first, second) and lif.v is None
    assert torch.equal(first, multilevel_lif(x, s_bits=2, v_th=0.5)[0])


def test_module_stateful_carries_and_resets():
    lif = MultiLevelLIF(s_bits=2, v_th=0.5, reset="soft", stateful=True)
    x = currents((8, 3, 11), 2, v_th=0.5)
    whole = multilevel_lif(x, s_bits=2, v_th=0.5, reset="soft")[0]
    pieces = torch.cat([lif(x[:3]), lif(x[3:])])
    assert mismatches(pieces, whole) == 0
    lif.reset()
    assert lif.v is None and torch.equal(lif(x[:3]), whole[:3])
    with pytest.raises(ValueError, match="v_init"):
        lif(x[:, :2])  # a different batch size with carried state
    with pytest.raises(ValueError, match="decay"):
        MultiLevelLIF(decay=2.0)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(13, 21), MultiLevelLIF(s_bits=4, v_th=0.5, decay=0.7),
                               torch.nn.Linear(21, 5))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    model = _model()
    x = torch.randn(4, 3, 13)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    torch._dynamo.reset()
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    got = model[0].weight.grad.clone()
    model.zero_grad()
    ref.sum().backward()
    torch.testing.assert_close(got, model[0].weight.grad)


# --------------------------------------------------------------------------- Triton backend


@needs_triton
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_triton_matches_reference(device, reset):
    x = currents((4, 37), 4).to(device).requires_grad_()
    kw = dict(s_bits=4, v_th=0.75, decay=0.6, reset=reset, surrogate="atan")
    s, v = multilevel_lif(x, backend="triton", **kw)
    sr, vr = multilevel_lif(x, backend="reference", **kw)
    assert mismatches(s, sr) == 0
    torch.testing.assert_close(v, vr)
    g = torch.randn_like(s)
    (gx,) = torch.autograd.grad((s * g).sum(), x)
    (gxr,) = torch.autograd.grad((sr * g).sum(), x)
    torch.testing.assert_close(gx, gxr, **GRAD_TOL[torch.float32])


@needs_triton
def test_triton_int_bit_exact(device):
    x = torch.randint(-50, 80, (4, 37), dtype=torch.int32).to(device)
    got = multilevel_lif_int(x, s_bits=2, theta=7, leak_shift=1, reset="soft", backend="triton")
    want = multilevel_lif_int(x, s_bits=2, theta=7, leak_shift=1, reset="soft", backend="reference")
    assert mismatches(got[0], want[0]) == 0 and mismatches(got[1], want[1]) == 0
    near = torch.full((3, 5), 2**30, dtype=torch.int32, device=device)  # bound fails, no overflow: runs
    assert multilevel_lif_int(near[:2], s_bits=1, theta=3, backend="triton")[0].sum() == 10
    with pytest.raises(OverflowError):
        multilevel_lif_int(near, s_bits=1, theta=2**31 - 1, leak_shift=0, reset="soft", backend="triton")


class _QsnnOps(TorchDispatchMode):
    """Records the qsnn ops dispatched within it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "qsnn":
            self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@needs_triton
def test_triton_on_cpu_runs_the_registered_ops_forward_and_backward(monkeypatch):
    """backend='triton' on CPU tensors dispatches qsnn::lif_forward, lif_backward and lif_int, whose
    CPU kernels are then the Triton launchers registered for CUDA, for the forward and for the
    backward that runs after it; outside those calls the CPU kernels are the C++ ones again."""
    import qsnn_kernels.triton.lif as launchers

    launched = []
    for name in ("lif_forward_triton", "lif_backward_triton", "lif_int_triton"):
        real = getattr(launchers, name)
        monkeypatch.setattr(launchers, name, lambda *a, _real=real, _name=name: (launched.append(_name), _real(*a))[1])
    x = currents((3, 37), 2).requires_grad_()
    xi = torch.randint(-20, 40, (3, 37), dtype=torch.int32)
    for backend, want in (("triton", ["lif_forward_triton", "lif_backward_triton", "lif_int_triton"]), ("auto", [])):
        launched.clear()
        with _QsnnOps() as log:
            spikes, _ = multilevel_lif(x, s_bits=2, backend=backend)
            (gx,) = torch.autograd.grad(spikes.sum(), x)
            multilevel_lif_int(xi, s_bits=2, theta=7, backend=backend)
        assert log.ops == ["lif_forward.default", "lif_backward.default", "lif_int.default"], backend
        assert launched == want, backend


@needs_triton
def test_opcheck_with_the_triton_kernels_on_cpu():
    """The schema, fake and autograd registration agree with the Triton launchers as well."""
    x = currents((3, 37), 2).requires_grad_()
    v_init = currents((37,), 2, seed=4).requires_grad_()
    h = currents((3, 37), 2)
    gs, gv = torch.randn(3, 37), torch.randn(37)
    xi = torch.randint(-20, 40, (4, 33), dtype=torch.int32)
    with triton_kernels_on_cpu(lif.TRITON_KERNELS):
        torch.library.opcheck(torch.ops.qsnn.lif_forward.default, (x, v_init, 2, 0.75, 0.5, 0.0, True, "atan", 2.0, False))
        torch.library.opcheck(torch.ops.qsnn.lif_forward.default,
                              (x.detach(), None, 2, 0.75, 0.5, 0.0, False, "atan", 2.0, False, False))
        for grad_v_last in (gv, None):
            torch.library.opcheck(torch.ops.qsnn.lif_backward.default,
                                  (gs, grad_v_last, h, 2, 0.75, 0.5, 0.0, True, "sigmoid", 4.0, False))
        torch.library.opcheck(torch.ops.qsnn.lif_int.default, (xi, None, 4, 5, 1, 0, True))


@needs_triton
def test_triton_on_cpu_under_torch_func_and_double_backward():
    """The one autograd path serves the Triton backend too: torch.func.grad equals the reference's
    autograd, and a double backward raises."""
    x = currents((5, 2, 7), 2)
    weights = torch.randn(5, 2, 7, generator=torch.Generator().manual_seed(3))
    gx = torch.func.grad(_loss("triton", 2, "hard", "atan", weights))(x, None)
    xr = x.clone().requires_grad_()
    (gxr,) = torch.autograd.grad(_loss("reference", 2, "hard", "atan", weights)(xr, None), xr)
    torch.testing.assert_close(gx, gxr, **GRAD_TOL[torch.float32])
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(_loss("triton", 2, "hard", "atan", weights)(xr, None), xr, create_graph=True)


@needs_triton
def test_triton_on_cpu_from_several_threads():
    """Each op call opens its own scope under one lock: threads running the Triton backend on CPU
    concurrently (forward and backward) neither deadlock nor see another's registration fail."""
    from concurrent.futures import ThreadPoolExecutor

    x = currents((3, 37), 2)
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(multilevel_lif(xr, s_bits=2, backend="reference")[0].sum(), xr)[0]

    def run(_):
        xi = x.clone().requires_grad_()
        return torch.autograd.grad(multilevel_lif(xi, s_bits=2, backend="triton")[0].sum(), xi)[0]

    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(run, range(8)):
            torch.testing.assert_close(got, want, **GRAD_TOL[torch.float32])


@needs_triton
def test_triton_on_cpu_under_torch_compile_runs_eagerly():
    """Triton's interpreter cannot be traced: under torch.compile the Triton-on-CPU call is a graph
    break that runs eagerly (same spikes and gradients), and fullgraph=True refuses it."""
    x = currents((3, 37), 2).requires_grad_()
    fn = lambda z: multilevel_lif(z, s_bits=2, backend="triton")[0] * 2  # noqa: E731
    torch._dynamo.reset()
    got = torch.compile(fn, backend="aot_eager")(x)
    want = multilevel_lif(x, s_bits=2, backend="reference")[0] * 2
    assert mismatches(got, want) == 0
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0],
                               **GRAD_TOL[torch.float32])
    torch._dynamo.reset()  # no cached frames of the first compile
    with pytest.raises(torch._dynamo.exc.Unsupported, match="disable"):
        torch.compile(fn, backend="aot_eager", fullgraph=True)(x)
