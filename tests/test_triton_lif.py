"""The Triton multi-level LIF kernels against the reference (CPU tensors under TRITON_INTERPRET=1).

* Forward (float32): spikes, final membrane and the saved h bit-identical to
  :func:`qsnn_kernels.reference.multilevel_lif` (count the mismatches, expect zero), NaN/inf alike.
* Backward: against autograd of the reference in float64. The kernel computes in float32, so
  these tests feed dyadic inputs (multiples of 1/16, v_th and decay powers of two) on which the
  float32 forward is exact: the two runs then follow the same trajectory (checked: identical
  spikes) and differ only by float32 rounding of the surrogate terms (tolerance below).
  Non-dyadic parameters are checked against autograd of the reference in float32.
* Integer mode: bit-exact with :func:`qsnn_kernels.reference.multilevel_lif_int`, negative
  inputs and a negative threshold included.
"""

import pytest
import torch

from qsnn_kernels import reference
from qsnn_kernels.choices import DEFAULT_ALPHA
from qsnn_kernels.triton.lif import lif_backward_triton, lif_forward_triton, lif_int_triton
from qsnn_kernels.testing import mismatches, run_without_interpreter

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")

# float32 kernel vs float64 autograd on one (exact) trajectory: only the surrogate terms round
GRAD_TOL = {torch.float64: dict(rtol=1e-5, atol=1e-5)}
# float32 kernel vs float32 autograd: both round, in different orders
GRAD_TOL[torch.float32] = dict(rtol=5e-5, atol=5e-5)

SHAPES = [(1, 1), (2, 37), (4, 130), (16, 37), (1, 130), (16, 1)]


def _levels(s_bits):
    return (1 << s_bits) - 1


def _reset(hard):
    return "hard" if hard else "soft"

def _reference_h(x, v_init, s_bits, v_th, decay, v_reset, reset):
    """h_t = decay * v_{t-1} + x_t with v_{t-1} from the reference run on the first t steps."""
    hs = []
    for t in range(x.shape[0]):
        if t == 0:
            v = torch.zeros_like(x[0]) if v_init is None else v_init.to(x.dtype)
        else:
            _, v = reference.multilevel_lif(x[:t], s_bits, v_th, decay, v_reset, reset, v_init=v_init)
        hs.append(decay * v + x[t])
    return torch.stack(hs)


def _float_input(t_steps, n, s_bits, v_th, seed):
    g = torch.Generator().manual_seed(seed)
    span = (_levels(s_bits) + 1) * v_th  # reach every level, and below zero
    return (torch.randn(t_steps, n, generator=g) * 0.6 + 0.3) * span, torch.randn(n, generator=g) * span


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("t_steps", [1, 2, 4, 16])
@pytest.mark.parametrize("n", [1, 37, 130])
@pytest.mark.parametrize("s_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("hard", [True, False])
def test_forward_bit_exact(t_steps, n, s_bits, hard):
    v_th, decay, v_reset = 0.7, 0.8, -0.2
    x, v_init = _float_input(t_steps, n, s_bits, v_th, seed=t_steps * 1000 + n * 10 + s_bits)
    if n == 37:
        v_init = None
    spikes, v_last, h = lif_forward_triton(x, v_init, s_bits, v_th, decay, v_reset, hard)
    ref_spikes, ref_v = reference.multilevel_lif(x, s_bits, v_th, decay, v_reset, _reset(hard), v_init=v_init)
    ref_h = _reference_h(x, v_init, s_bits, v_th, decay, v_reset, _reset(hard))
    assert spikes.dtype == h.dtype == torch.float32 and v_last.dtype == torch.float32
    assert spikes.shape == h.shape == (t_steps, n) and v_last.shape == (n,)
    assert mismatches(spikes, ref_spikes) == 0
    assert mismatches(v_last, ref_v) == 0
    assert mismatches(h, ref_h) == 0
    if t_steps == 16:  # the inputs exercise the spiking range, so the test can fail
        levels = spikes / v_th
        assert levels.max() == _levels(s_bits) and (levels == 0).any()


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("decay", [1.0, 0.3])
def test_forward_nan_inf_and_if_neuron(hard, decay):
    x, v_init = _float_input(4, 37, 2, 1.0, seed=7)
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[0, 6] = -float("inf")
    v_init[8] = float("nan")
    spikes, v_last, h = lif_forward_triton(x, v_init, 2, 1.0, decay, 0.5, hard)
    ref_spikes, ref_v = reference.multilevel_lif(x, 2, 1.0, decay, 0.5, _reset(hard), v_init=v_init)
    assert mismatches(spikes, ref_spikes) == 0 and mismatches(v_last, ref_v) == 0
    assert spikes[1:, 3].isnan().all() and v_last[3].isnan() and spikes[:, 8].isnan().all()
    assert not spikes[:, :3].isnan().any()  # other neurons unaffected


@pytest.mark.parametrize("hard", [True, False])
def test_forward_non_contiguous(hard):
    x, _ = _float_input(37, 4, 4, 0.5, seed=3)
    x_t = x.t()  # [4, 37] view, not contiguous
    assert not x_t.is_contiguous()
    v_init = torch.linspace(-1, 1, 37)
    spikes, v_last, _ = lif_forward_triton(x_t, v_init, 4, 0.5, 0.9, 0.0, hard)
    ref_spikes, ref_v = reference.multilevel_lif(x_t, 4, 0.5, 0.9, 0.0, _reset(hard), v_init=v_init)
    assert mismatches(spikes, ref_spikes) == 0 and mismatches(v_last, ref_v) == 0


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("shape", [(4, 37), (3, 1)])
def test_forward_frame_broadcast_over_time(hard, shape):
    # a direct-encoding input: one frame expanded over T (stride 0), read in place
    t_steps, n = shape
    frame, _ = _float_input(1, n, 2, 0.5, seed=4)
    x = frame.expand(t_steps, n)
    assert x.stride(0) == 0
    spikes, v_last, h = lif_forward_triton(x, None, 2, 0.5, 0.9, 0.0, hard)
    ref_spikes, ref_v = reference.multilevel_lif(x.contiguous(), 2, 0.5, 0.9, 0.0, _reset(hard))
    assert mismatches(spikes, ref_spikes) == 0 and mismatches(v_last, ref_v) == 0
    assert mismatches(h, _reference_h(x.contiguous(), None, 2, 0.5, 0.9, 0.0, _reset(hard))) == 0
    if n > 1:  # the frame exercises the spiking range, so the test can fail
        assert (spikes[-1] > 0).any() and (spikes == 0).any()


def test_forward_and_backward_without_optional_outputs():
    # v_last / grad_v_init not asked for: [0], never written; the rest unchanged
    x, v_init = _float_input(4, 37, 2, 1.0, seed=8)
    full = lif_forward_triton(x, v_init, 2, 1.0, 0.5, 0.0, True)
    spikes, v_last, h = lif_forward_triton(x, v_init, 2, 1.0, 0.5, 0.0, True, emit_v_last=False)
    assert v_last.shape == (0,) and torch.equal(spikes, full[0]) and torch.equal(h, full[2])
    grad_spikes = torch.randn(4, 37, generator=torch.Generator().manual_seed(0))
    gx_full, _ = lif_backward_triton(grad_spikes, None, h, 2, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
    gx, gv = lif_backward_triton(grad_spikes, None, h, 2, 1.0, 0.5, 0.0, True, "atan", 2.0, False,
                                 emit_grad_v_init=False)
    assert gv.shape == (0,) and torch.equal(gx, gx_full)


# --------------------------------------------------------------------------- backward


def _dyadic_case(t_steps, n, seed):
    """Inputs on which float32 arithmetic is exact with v_th = 1, decay in {1/2, 1}, v_reset = 1/4."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-48, 81, (t_steps, n), generator=g).double() / 16
    v_init = torch.randint(-16, 17, (n,), generator=g).double() / 16
    grad_spikes = torch.randn(t_steps, n, generator=g, dtype=torch.float64)
    grad_v = torch.randn(n, generator=g, dtype=torch.float64)
    return x, v_init, grad_spikes, grad_v


def _check_grads(x, v_init, grad_spikes, grad_v, s_bits, v_th, decay, v_reset, hard, surrogate, alpha, detach):
    """Kernel (float32) vs autograd of the reference in x's dtype; returns the reference spikes."""
    xr = x.clone().requires_grad_()
    vr = v_init.clone().requires_grad_()
    spikes, v = reference.multilevel_lif(xr, s_bits, v_th, decay, v_reset, _reset(hard), surrogate, alpha, detach, vr)
    loss = 0
    if grad_spikes is not None:
        loss = loss + (spikes * grad_spikes).sum()
    if grad_v is not None:
        loss = loss + (v * grad_v).sum()
    ref_gx, ref_gv = torch.autograd.grad(loss, (xr, vr))

    k_spikes, _, h = lif_forward_triton(x.float(), v_init.float(), s_bits, v_th, decay, v_reset, hard)
    assert mismatches(k_spikes.to(x.dtype), spikes.detach()) == 0  # same trajectory
    resolved = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
    gx, gv = lif_backward_triton(
        None if grad_spikes is None else grad_spikes.float(), None if grad_v is None else grad_v.float(),
        h, s_bits, v_th, decay, v_reset, hard, surrogate, resolved, detach,
    )
    assert gx.dtype == gv.dtype == torch.float32 and gx.shape == x.shape and gv.shape == v_init.shape
    tol = GRAD_TOL[x.dtype]
    scale = max(1.0, float(ref_gx.abs().max()), float(ref_gv.abs().max()))
    torch.testing.assert_close(gx.to(x.dtype), ref_gx, rtol=tol["rtol"], atol=tol["atol"] * scale)
    torch.testing.assert_close(gv.to(x.dtype), ref_gv, rtol=tol["rtol"], atol=tol["atol"] * scale)
    return spikes


@pytest.mark.parametrize("surrogate", ["rect", "atan", "sigmoid"])
@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("s_bits", [1, 2, 4, 8])
def test_backward_vs_autograd_float64(surrogate, hard, detach, s_bits):
    # s_bits = 8 sums 255 terms per step: shorter run under the interpreter
    t_steps, n = (4, 37) if s_bits == 8 else (16, 130)
    x, v_init, grad_spikes, grad_v = _dyadic_case(t_steps, n, seed=s_bits * 31 + hard * 7 + detach)
    if s_bits == 8:
        x = x * 40  # reach the upper levels
    spikes = _check_grads(x, v_init, grad_spikes, grad_v, s_bits, 1.0, 0.5, 0.25, hard, surrogate, None, detach)
    assert (spikes > 0).any() and (spikes == 0).any()


@pytest.mark.parametrize(("surrogate", "alpha"), [("rect", 0.5), ("rect", 2.0), ("atan", 5.0), ("sigmoid", 1.5)])
@pytest.mark.parametrize("hard", [True, False])
def test_backward_alpha(surrogate, alpha, hard):
    # rect with alpha = 0.5: windows of width 2 overlap (count 2 inside); alpha = 2: gaps between them
    x, v_init, grad_spikes, grad_v = _dyadic_case(4, 37, seed=11)
    _check_grads(x, v_init, grad_spikes, grad_v, 2, 1.0, 0.5, 0.0, hard, surrogate, alpha, False)


@pytest.mark.parametrize(("t_steps", "n"), SHAPES)
@pytest.mark.parametrize("grads", ["both", "spikes", "v_last"])
def test_backward_shapes_and_missing_grads(t_steps, n, grads):
    x, v_init, grad_spikes, grad_v = _dyadic_case(t_steps, n, seed=t_steps + n)
    _check_grads(
        x, v_init, None if grads == "v_last" else grad_spikes, None if grads == "spikes" else grad_v,
        2, 1.0, 1.0, 0.25, t_steps % 2 == 0, "atan", None, False,
    )


@pytest.mark.parametrize("surrogate", ["rect", "atan", "sigmoid"])
@pytest.mark.parametrize("hard", [True, False])
def test_backward_general_params_vs_float32_autograd(surrogate, hard):
    v_th = 0.7
    x, v_init = _float_input(16, 37, 4, v_th, seed=5)
    g = torch.Generator().manual_seed(6)
    grad_spikes, grad_v = torch.randn(16, 37, generator=g), torch.randn(37, generator=g)
    _check_grads(x, v_init, grad_spikes, grad_v, 4, v_th, 0.8, -0.1, hard, surrogate, None, False)


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("alpha", [0.5, None, 20.0])
def test_backward_level_window_far_outside_and_between_levels(surrogate, alpha):
    # s_bits = 8, a smooth surrogate: the level sum runs over a window around h / v_th (atan: the
    # far levels in closed form); membranes far below level 1, far above level 255, between and on
    # levels, and NaN/inf, against the float64 reference's full sum
    u = torch.cat([torch.linspace(-40.0, 300.0, 97), torch.tensor([0.5, 1.0, 127.5, 255.0, 255.5])])
    x = u.double().unsqueeze(0)  # T = 1, v_th = 1: h = x
    grad_spikes = torch.ones_like(x)
    xr = x.clone().requires_grad_()
    spikes, _ = reference.multilevel_lif(xr, 8, 1.0, 0.5, 0.0, "soft", surrogate, alpha)
    (ref_gx,) = torch.autograd.grad((spikes * grad_spikes).sum(), (xr,))
    _, _, h = lif_forward_triton(x.float(), None, 8, 1.0, 0.5, 0.0, False)
    resolved = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
    gx, _ = lif_backward_triton(grad_spikes.float(), None, h, 8, 1.0, 0.5, 0.0, False, surrogate, resolved, True)
    # relative error of the level sum: closed-form tail (atan) / left-out terms (sigmoid) <= 1e-5, plus
    # float32 rounding of u - l near l = 255 and of sigmoid terms below 2^-24 (the same in the full sum)
    torch.testing.assert_close(gx.double(), ref_gx, rtol=3e-5 if resolved < 10 else 3e-4,
                               atol=1e-6 * float(ref_gx.abs().max()))
    special = torch.tensor([[float("nan"), float("inf"), -float("inf")]])
    _, _, hs = lif_forward_triton(special, None, 8, 1.0, 0.5, 0.0, False)
    gs, _ = lif_backward_triton(torch.ones_like(special), None, hs, 8, 1.0, 0.5, 0.0, False, surrogate, resolved,
                                True)
    assert gs[0, 0].isnan() and gs[0, 1] == 0 and gs[0, 2] == 0  # as the full sum: NaN, and 0 at +-inf


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("surrogate", ["rect", "atan"])
@pytest.mark.parametrize("v_last_used", [True, False])
def test_backward_nan_matches_reference(hard, surrogate, v_last_used):
    """NaN/inf inputs, at the last step too: NaN gradients exactly where the reference's are; with
    grad_v_last None (v_T unused) the last step's membrane path contributes nothing, not 0 * NaN."""
    x, v_init, grad_spikes, grad_v = _dyadic_case(4, 37, seed=2)
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[3, 7] = float("nan")
    x[3, 9] = float("inf")
    xr = x.clone().requires_grad_()
    spikes, v = reference.multilevel_lif(xr, 2, 1.0, 0.5, 0.0, _reset(hard), surrogate)
    loss = (spikes * grad_spikes).sum() + ((v * grad_v).sum() if v_last_used else 0)
    (ref_gx,) = torch.autograd.grad(loss, (xr,))
    _, _, h = lif_forward_triton(x.float(), None, 2, 1.0, 0.5, 0.0, hard)
    gx, _ = lif_backward_triton(grad_spikes.float(), grad_v.float() if v_last_used else None, h, 2, 1.0, 0.5, 0.0,
                                hard, surrogate, DEFAULT_ALPHA[surrogate], False)
    if not v_last_used and surrogate == "rect":
        assert gx[3, 7] == 0 and gx[3, 9] == 0  # the documented contract, whatever the reset
    assert torch.equal(gx.isnan(), ref_gx.isnan())
    keep = ~ref_gx.isnan()
    assert keep[:, :3].all()  # other neurons unaffected
    torch.testing.assert_close(gx.double()[keep], ref_gx[keep], **GRAD_TOL[torch.float64])


# --------------------------------------------------------------------------- integer mode

INT_CASES = [(1, 0), (7, 1), (1000, 3), (5, 31)]  # (theta, leak_shift)


@pytest.mark.parametrize(("t_steps", "n"), SHAPES)
@pytest.mark.parametrize("s_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("hard", [True, False])
def test_int_bit_exact(t_steps, n, s_bits, hard):
    for i, (theta, leak_shift) in enumerate(INT_CASES):
        g = torch.Generator().manual_seed(t_steps * 100 + n + i)
        hi = (_levels(s_bits) + 2) * theta
        x = torch.randint(-hi, hi + 1, (t_steps, n), generator=g, dtype=torch.int32)
        v_init = None if i % 2 else torch.randint(-hi, hi + 1, (n,), generator=g, dtype=torch.int32)
        v_reset = -3 if hard else 0
        levels, v_last = lif_int_triton(x, v_init, s_bits, theta, leak_shift, v_reset, hard)
        ref_levels, ref_v = reference.multilevel_lif_int(x, s_bits, theta, leak_shift, v_reset, _reset(hard), v_init)
        assert levels.dtype == torch.uint8 and v_last.dtype == torch.int32
        assert int((levels != ref_levels).sum()) == 0, (theta, leak_shift)
        assert int((v_last != ref_v).sum()) == 0, (theta, leak_shift)


@pytest.mark.parametrize("hard", [True, False])
def test_int_negative_values_floor_division(hard):
    # h < 0, where floor (the contract) and truncation (Triton's //) differ: floor(-7 / 5) = -2,
    # trunc = -1; both clamp to level 0. A negative theta makes negative h spike (positive quotients,
    # where the two agree) and positive h give quotients in (-1, 0) and below.
    x = torch.arange(-40, 41, dtype=torch.int32).reshape(1, -1).repeat(3, 1)
    x[1] = -x[1]
    for theta in (5, -5, -1):
        levels, v_last = lif_int_triton(x, None, 2, theta, 1, 2, hard)
        ref_levels, ref_v = reference.multilevel_lif_int(x, 2, theta, 1, 2, _reset(hard))
        assert int((levels != ref_levels).sum()) == 0 and int((v_last != ref_v).sum()) == 0, theta


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError):
        lif_forward_triton(x.double(), None, 1, 1.0, 0.5, 0.0, True)
    with pytest.raises(TypeError):
        lif_forward_triton(x.int(), None, 1, 1.0, 0.5, 0.0, True)
    with pytest.raises(ValueError):
        lif_forward_triton(torch.zeros(0, 3), None, 1, 1.0, 0.5, 0.0, True)
    with pytest.raises(ValueError):
        lif_forward_triton(torch.zeros(6), None, 1, 1.0, 0.5, 0.0, True)
    with pytest.raises(ValueError):
        lif_forward_triton(x, torch.zeros(4), 1, 1.0, 0.5, 0.0, True)
    with pytest.raises(ValueError):
        lif_forward_triton(x, None, 3, 1.0, 0.5, 0.0, True)
    with pytest.raises(ValueError):
        lif_backward_triton(None, None, x, 16, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
    with pytest.raises(ValueError):
        lif_int_triton(x.int(), None, 0, 3, 1, 0, True)
    with pytest.raises(ValueError):
        lif_backward_triton(None, None, x, 1, 1.0, 0.5, 0.0, True, "tanh", 1.0, False)
    with pytest.raises(ValueError):
        lif_backward_triton(None, None, x, 1, 1.0, 0.5, 0.0, True, "atan", None, False)
    with pytest.raises(ValueError):
        lif_backward_triton(torch.zeros(3, 2), None, x, 1, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
    with pytest.raises(TypeError):
        lif_int_triton(x, None, 1, 3, 0, 0, True)
    with pytest.raises(ValueError):
        lif_int_triton(x.int(), None, 1, 3, 32, 0, True)
    with pytest.raises(ValueError):
        lif_int_triton(x.int(), None, 1, 0, 1, 0, True)


# --------------------------------------------------------------------------- GPU (larger shapes, half inputs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("s_bits", [1, 4, 8])
@pytest.mark.parametrize("hard", [True, False])
def test_gpu_large_and_half(s_bits, hard):
    t_steps, n, v_th, decay = 8, 100_003, 0.7, 0.8
    x, v_init = _float_input(t_steps, n, s_bits, v_th, seed=s_bits)
    ref_spikes, ref_v = reference.multilevel_lif(x, s_bits, v_th, decay, 0.1, _reset(hard), v_init=v_init)
    spikes, v_last, h = lif_forward_triton(x.cuda(), v_init.cuda(), s_bits, v_th, decay, 0.1, hard)
    # the CPU reference is the oracle (torch on CUDA divides by a scalar through its reciprocal)
    assert mismatches(spikes.cpu(), ref_spikes) == 0 and mismatches(v_last.cpu(), ref_v) == 0

    g = torch.Generator().manual_seed(1)
    grad_spikes, grad_v = torch.randn(t_steps, n, generator=g), torch.randn(n, generator=g)
    xr, vr = x.clone().requires_grad_(), v_init.clone().requires_grad_()
    rs, rv = reference.multilevel_lif(xr, s_bits, v_th, decay, 0.1, _reset(hard), "atan", None, False, vr)
    ref_gx, ref_gv = torch.autograd.grad((rs * grad_spikes).sum() + (rv * grad_v).sum(), (xr, vr))
    gx, gv = lif_backward_triton(grad_spikes.cuda(), grad_v.cuda(), h, s_bits, v_th, decay, 0.1, hard, "atan", 2.0,
                                 False)
    scale = max(1.0, float(ref_gx.abs().max()))
    torch.testing.assert_close(gx.cpu(), ref_gx, rtol=5e-5, atol=5e-5 * scale)
    torch.testing.assert_close(gv.cpu(), ref_gv, rtol=5e-5, atol=5e-5 * scale)

    for dtype in (torch.float16, torch.bfloat16):
        # internal math is float32: the half run is the float32 reference on the rounded input
        xh = x.cuda().to(dtype)  # (no bfloat16 on the CPU)
        ref_s, ref_v = reference.multilevel_lif(xh.float().cpu(), s_bits, v_th, decay, 0.1, _reset(hard), v_init=v_init)
        s16, v16, h16 = lif_forward_triton(xh, v_init.cuda(), s_bits, v_th, decay, 0.1, hard)
        assert s16.dtype == h16.dtype == dtype and v16.dtype == torch.float32
        assert mismatches(s16, ref_s.cuda().to(dtype)) == 0 and mismatches(v16.cpu(), ref_v) == 0
        # the backward of a half run sees h rounded to half: same as the float32 kernel on those values
        gs16 = grad_spikes.to(dtype).cuda()
        out16 = lif_backward_triton(gs16, None, h16, s_bits, v_th, decay, 0.1, hard, "sigmoid", 4.0, False)
        out32 = lif_backward_triton(gs16.float(), None, h16.float(), s_bits, v_th, decay, 0.1, hard, "sigmoid", 4.0,
                                    False)
        # grad_x is written in h's dtype, rounded once from the float32 result
        assert out16[0].dtype == dtype and torch.equal(out16[0], out32[0].to(dtype))
        assert torch.equal(out16[1], out32[1])

    xi = torch.randint(-3000, 3000, (t_steps, n), dtype=torch.int32)
    levels, vi = lif_int_triton(xi.cuda(), None, s_bits, 37, 2, -5, hard)
    ref_l, ref_vi = reference.multilevel_lif_int(xi, s_bits, 37, 2, -5, _reset(hard))
    assert int((levels.cpu() != ref_l).sum()) == 0 and int((vi.cpu() != ref_vi).sum()) == 0


# --------------------------------------------------------------------------- compiled for a GPU (no GPU needed)

_COMPILE_SCRIPT = r"""
import itertools, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qsnn_kernels.triton import lif as K

def compile_(fn, sig, const, fusion):
    # what Triton's launcher specializes on for 16-byte aligned tensors and N % 16 == 0
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig.get(name, "")[:1] == "*" or name in ("N", "last")}
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=4, enable_fp_fusion=fusion)).asm["ptx"]

scalars = lambda names, ty: {n: ty for n in names}
for dt, hard, given, broadcast in itertools.product(("fp32", "fp16", "bf16"), (True, False), (True, False),
                                                    (True, False)):
    ptx = compile_(K._lif_fwd_kernel, {"x_ptr": "*" + dt, "v_init_ptr": "*fp32", "spikes_ptr": "*" + dt,
                   "h_ptr": "*" + dt, "v_last_ptr": "*fp32", **scalars(("T", "N"), "i32"),
                   **scalars(("v_th", "decay", "v_reset"), "fp32")},
                   dict(LEVELS=15, HARD_RESET=hard, HAS_V_INIT=given, SAVE_H=given, EMIT_V_LAST=given,
                        X_BROADCAST=broadcast, BLOCK=1024), False)
    # bit-exactness on the GPU rests on these two: IEEE division and no contraction into FMA
    assert "div.rn.f32" in ptx and not re.search(r"\bfma\.", ptx), (dt, hard)
    assert "ld.global.v4" in ptx or dt != "fp32", "aligned float32 rows should load as 16-byte vectors"
for sur, hard, detach, levels, given, dt in itertools.product((0, 1, 2), (True, False), (True, False), (1, 15, 255),
                                                              (True, False), ("fp32", "bf16")):
    if (not given or dt != "fp32") and levels != 15:  # these change only the loop's ends and the stores
        continue
    window = sur != 0 and levels == 255
    compile_(K._lif_bwd_kernel, {**scalars(("grad_spikes_ptr", "grad_v_last_ptr", "h_ptr", "grad_x_ptr"), "*" + dt),
             "grad_v_init_ptr": "*fp32", **scalars(("T", "N", "last", "reach"), "i32"),
             **scalars(("v_th", "decay", "v_reset", "alpha", "half_width", "atan_scale"), "fp32")},
             dict(LEVELS=levels, HARD_RESET=hard, SURROGATE=sur, DETACH_RESET=detach, HAS_GRAD_SPIKES=given,
                  HAS_GRAD_V_LAST=given, EMIT_GRAD_V_INIT=given, WINDOW=window, BLOCK=256), True)
for hard, given in itertools.product((True, False), (True, False)):
    compile_(K._lif_int_kernel, {"x_ptr": "*i32", "v_init_ptr": "*i32", "levels_ptr": "*u8", "v_last_ptr": "*i32",
             **scalars(("T", "N", "theta", "leak_shift", "v_reset"), "i32")},
             dict(LEVELS=255, HARD_RESET=hard, HAS_V_INIT=given, BLOCK=1024), False)
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """Every kernel variant lowers to sm_90 PTX and cubin (the interpreter skips that path)."""
    done = run_without_interpreter(_COMPILE_SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
