"""Triton kernels of the multi-level LIF neuron (Eqs. 6-7), fused over all T steps.

Oracle: :func:`qsnn_kernels.reference.multilevel_lif` (float) and
:func:`qsnn_kernels.reference.multilevel_lif_int` (integer). The public API, op registration and
autograd live in :mod:`qsnn_kernels.lif`; these launchers are the ops' CUDA kernels (and their CPU
kernels under ``TRITON_INTERPRET=1``) and expect inputs it has validated (they re-check only
shapes, dtypes and names, cheaply). Surrogate names and codes: :data:`qsnn_kernels.choices.SURROGATES`.

Design
* One program per block of neurons; the program loops over T inside the kernel, carrying the
  membrane ``v`` (forward) or the gradient ``dv = dL/dv_t`` (backward, reverse loop) in registers,
  and loads step t+1 (forward; t-1 backward) before it computes step t, so that two steps of loads
  are in flight even when N alone cannot cover the memory latency.
* The forward stores the pre-reset membrane ``h_t`` for the backward, in x's dtype: **4 bytes per
  neuron per step for float32 input, 2 for float16/bfloat16** (``h_t`` is all the backward needs:
  the level, the reset indicator and every surrogate are functions of it).
  Traffic per neuron and step, in elements of x's dtype: the forward reads x (once per neuron for
  a frame broadcast over T, which is read in place) and writes spikes and, only when a backward
  follows, h; the backward reads h and grad_spikes (none when the spikes got no gradient) and
  writes grad_x in x's dtype: 3 each way, 6 bytes in bfloat16. The ``[N]`` state tensors (v_last,
  grad_v_init) are written only when asked for.
* Internal math is float32 whatever x's dtype; float64 input is rejected (TypeError). With
  float32 input the forward is bit-exact with the reference on CPU: every step rounds as the
  reference does (``fl(fl(decay * v) + x)``, a correctly rounded ``h / v_th`` via ``div_rn``,
  and the forward kernels are compiled without FMA contraction). Note that torch itself on CUDA
  divides by a Python scalar through its reciprocal, so the reference run *on a GPU* may differ
  from the CPU reference (and from this kernel) by one ulp of ``h / v_th``: compare with the
  reference on the CPU. With float16/bfloat16 input, x is widened exactly, so the forward equals
  the float32 reference on ``x.float()`` with spikes and h rounded to x's dtype; the backward then
  sees h rounded to x's dtype (the gradient of the float32 computation at that rounded h).
* The surrogate of the staircase, summed over all L = 2^s_bits - 1 levels: a closed form (a count
  of the level windows that contain ``h / v_th``) for "rect"; for "atan" and "sigmoid" a loop over
  the levels within ``reach`` of the nearest one (:func:`smooth_surrogate_reach`; all L when the
  window would cover them): sigmoid terms beyond it are below float32 rounding, atan terms beyond
  it are summed in closed form (integral plus the Euler-Maclaurin correction, :func:`_atan_tail`),
  so s_bits = 8 costs about 9-11 terms per element-step, not 255, for a relative error of the sum
  below 1e-5 (tested against the float64 reference over the whole level range).
  Without ``grad_v_last`` (v_T unused) the last step's membrane path is left out, as in the
  reference's autograd, so a NaN membrane there gives no NaN gradient.
* Integer mode: int32 throughout, leak ``v >> leak_shift`` (arithmetic shift of a signed int).
  Triton's ``//`` truncates like C, the contract floors; after the clamp to [0, L] the two give the
  same level (see the kernel), which the tests check on negative h and a negative theta. No
  overflow check inside: the contract is that ``h`` fits int32 (the API checks).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..bits import SPIKE_BITS, check_bits
from ..choices import SURROGATES, check_choice
from ..lif import broadcast_over_time
from .device import on_device

__all__ = ["lif_forward_triton", "lif_backward_triton", "lif_int_triton"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------- kernels


@triton.jit
def _clamp_keep_nan(q, hi: tl.constexpr):
    # clamp(q, 0, hi) that lets NaN through, as torch.clamp does (comparisons with NaN are false)
    return tl.where(q < 0.0, 0.0, tl.where(q > hi, hi, q))


@triton.jit
def _initial_state(ptr, offs, mask, PRESENT: tl.constexpr, BLOCK: tl.constexpr, DTYPE: tl.constexpr):
    # the carried state at the start of the time loop: loaded if the tensor was given, else zeros
    if PRESENT:
        state = tl.load(ptr + offs, mask=mask, other=0).to(DTYPE)
    else:
        state = tl.zeros([BLOCK], dtype=DTYPE)
    return state


@triton.jit
def _lif_step(h, v_th, v_reset, LEVELS: tl.constexpr, HARD_RESET: tl.constexpr):
    """(level, v): one forward step from the membrane ``h`` (the reference's operations, so inf/NaN
    end up alike; compiled without FMA contraction by the forward kernels)."""
    q = tl.floor(tl.div_rn(h, v_th))  # correctly rounded, as torch divides on the CPU
    level = _clamp_keep_nan(q, LEVELS)
    if HARD_RESET:
        r = _clamp_keep_nan(q, 1.0)
        v = h * (1.0 - r) + v_reset * r
    else:
        v = h - level * v_th
    return level, v


@triton.jit
def _lif_fwd_kernel(
    x_ptr, v_init_ptr, spikes_ptr, h_ptr, v_last_ptr,
    T, N, v_th, decay, v_reset,
    LEVELS: tl.constexpr, HARD_RESET: tl.constexpr, HAS_V_INIT: tl.constexpr, SAVE_H: tl.constexpr,
    EMIT_V_LAST: tl.constexpr, X_BROADCAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = _initial_state(v_init_ptr, offs, mask, HAS_V_INIT, BLOCK, tl.float32)
    x_ptrs = x_ptr + offs  # pointer arithmetic is 64-bit: T * N may exceed 2^31
    s_ptrs = spikes_ptr + offs
    h_ptrs = h_ptr + offs
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    for t in range(T):
        # the next step's load goes out before this step's arithmetic: two steps in flight, for
        # when N alone cannot fill the memory pipeline
        if not X_BROADCAST:
            x_next = tl.load(x_ptrs + N, mask=mask & (t + 1 < T), other=0.0)
        h = decay * v + x.to(tl.float32)
        level, v = _lif_step(h, v_th, v_reset, LEVELS, HARD_RESET)
        tl.store(s_ptrs, (level * v_th).to(spikes_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=mask)
        if not X_BROADCAST:  # a frame broadcast over T is read once, in place
            x = x_next
            x_ptrs += N
        s_ptrs += N
        h_ptrs += N
    if EMIT_V_LAST:
        tl.store(v_last_ptr + offs, v, mask=mask)


@triton.jit
def _smooth_term(u, level, alpha, atan_scale, SURROGATE: tl.constexpr):
    """The un-scaled term of level ``level``: ``1 / (1 + t^2)`` (atan) or ``sig (1 - sig)`` (sigmoid)."""
    if SURROGATE == 1:
        t = atan_scale * (u - level)
        term = 1.0 / (1.0 + t * t)
    else:
        sg = tl.sigmoid(alpha * (u - level))
        term = sg * (1.0 - sg)
    return term


@triton.jit
def _atan_of_small(d):
    # atan(d) for 0 <= d <= 1/4 (Taylor to d^11: relative error below 1e-8 there)
    d2 = d * d
    return d * (1.0 + d2 * (-1.0 / 3 + d2 * (0.2 + d2 * (-1.0 / 7 + d2 * (1.0 / 9 + d2 * (-1.0 / 11))))))


@triton.jit
def _atan_tail(u, first, last, atan_scale):
    """``sum_{l=first..last} 1 / (1 + (a (u - l))^2)`` (a = atan_scale) for a run of levels at least
    4 / a away from u on one side, in closed form: the integral over [first - 1/2, last + 1/2] and the
    Euler-Maclaurin correction ``-(f'(z_hi) - f'(z_lo)) / 24``; 0 for an empty run."""
    big_a = atan_scale * (u - first + 0.5)
    big_b = atan_scale * (u - last - 0.5)
    # atan(A) - atan(B) = atan((A - B) / (1 + AB)) for AB > 0, and here (A - B) / (1 + AB) <= 1/4
    integral = _atan_of_small((big_a - big_b) / (1.0 + big_a * big_b)) / atan_scale
    qa = 1.0 + big_a * big_a
    qb = 1.0 + big_b * big_b
    correction = (atan_scale / 12.0) * (big_a / (qa * qa) - big_b / (qb * qb))  # -(f'(z_hi) - f'(z_lo)) / 24
    return tl.where(last >= first, integral + correction, 0.0)


@triton.jit
def _surrogate_sum(u, alpha, half_width, atan_scale, reach, LEVELS: tl.constexpr, SURROGATE: tl.constexpr,
                   WINDOW: tl.constexpr):
    """``sum_{l=1..LEVELS} g'(u - l)`` for the surrogate code SURROGATE (qsnn_kernels.choices.SURROGATES).

    With ``WINDOW`` (a smooth surrogate, ``2 reach + 1 < LEVELS``) only the levels within ``reach`` of
    the nearest level are summed term by term: for sigmoid the others are below float32 rounding
    (``reach >= 17 / alpha``), for atan they are summed in closed form (:func:`_atan_tail`,
    ``reach >= 4 / atan_scale``); relative error of the sum below 1e-5 beyond float32 rounding."""
    if SURROGATE == 0:
        # rect: alpha * #{integer l in [1, LEVELS] : |u - l| < half_width}; NaN/inf count 0
        lo = tl.floor(u - half_width) + 1.0
        hi = tl.ceil(u + half_width) - 1.0
        lo = tl.where(lo < 1.0, 1.0, lo)
        hi = tl.where(hi > LEVELS, LEVELS, hi)
        total = alpha * tl.where(hi >= lo, hi - lo + 1.0, 0.0)
    else:
        acc = tl.zeros_like(u)
        if WINDOW:
            finite = tl.abs(u) < float("inf")
            centre = tl.floor(u + 0.5)
            centre = tl.where(centre < 1.0, 1.0, tl.where(centre > LEVELS, LEVELS, centre))
            centre = tl.where(finite, centre, 1.0)  # NaN/inf: restored below
            for k in range(-reach, reach + 1):
                level = centre + k
                term = _smooth_term(u, level, alpha, atan_scale, SURROGATE)
                acc += tl.where((level >= 1.0) & (level <= LEVELS), term, 0.0)
            if SURROGATE == 1:
                lo = tl.where(centre - reach < 1.0, 1.0, centre - reach)
                hi = tl.where(centre + reach > LEVELS, LEVELS, centre + reach)
                acc += _atan_tail(u, 1.0, lo - 1.0, atan_scale) + _atan_tail(u, hi + 1.0, LEVELS * 1.0, atan_scale)
            # every term is 0 at +-inf and NaN at NaN, as the full sum
            acc = tl.where(finite, acc, tl.where(u == u, 0.0, u))
        else:
            for level in range(1, LEVELS + 1):
                acc += _smooth_term(u, level, alpha, atan_scale, SURROGATE)
        if SURROGATE == 1:
            total = 0.5 * alpha * acc  # atan: (alpha / 2) / (1 + (pi/2 * alpha * z)^2)
        else:
            total = alpha * acc  # sigmoid: alpha * sig(alpha z) * (1 - sig(alpha z))
    return total


@triton.jit
def _membrane_grad(h, dv, gs, last, v_th, v_reset, alpha, half_width, atan_scale, reach,
                   LEVELS: tl.constexpr, HARD_RESET: tl.constexpr, SURROGATE: tl.constexpr,
                   DETACH_RESET: tl.constexpr, WINDOW: tl.constexpr, HAS_GRAD_SPIKES: tl.constexpr):
    """dL/dh_t of one backward step from ``dv = dL/dv_t`` and ``gs = dL/dspikes_t`` (float32; not
    read without HAS_GRAD_SPIKES); ``last``: v_t received no gradient (step T without grad_v_last),
    so its membrane path contributes nothing, as in the reference's autograd (not 0 * dv/dh, which
    is NaN for a NaN h)."""
    u = tl.div_rn(h, v_th)
    # d spikes / d h = v_th * d level / d h = stair (the 1/v_th of the level cancels)
    stair = _surrogate_sum(u, alpha, half_width, atan_scale, reach, LEVELS, SURROGATE, WINDOW)
    if HARD_RESET:
        # v_t = h (1 - r) + v_reset r, r = 1[h >= v_th] with a one-level surrogate
        r = _clamp_keep_nan(tl.floor(u), 1.0)
        dv_dh = 1.0 - r
        if not DETACH_RESET:
            dv_dh += (v_reset - h) * (_surrogate_sum(u, alpha, half_width, atan_scale, 0, 1, SURROGATE, False) / v_th)
    else:
        # v_t = h - level * v_th
        if DETACH_RESET:
            dv_dh = 1.0
        else:
            dv_dh = 1.0 - stair
    dh = tl.where(last, 0.0, dv * dv_dh)
    if HAS_GRAD_SPIKES:
        dh += gs * stair
    return dh


@triton.jit
def _lif_bwd_kernel(
    grad_spikes_ptr, grad_v_last_ptr, h_ptr, grad_x_ptr, grad_v_init_ptr,
    T, N, last, v_th, decay, v_reset, alpha, half_width, atan_scale, reach,
    LEVELS: tl.constexpr, HARD_RESET: tl.constexpr, SURROGATE: tl.constexpr, DETACH_RESET: tl.constexpr,
    HAS_GRAD_SPIKES: tl.constexpr, HAS_GRAD_V_LAST: tl.constexpr, EMIT_GRAD_V_INIT: tl.constexpr,
    WINDOW: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dv = _initial_state(grad_v_last_ptr, offs, mask, HAS_GRAD_V_LAST, BLOCK, tl.float32)
    h_ptrs = h_ptr + last + offs
    gs_ptrs = grad_spikes_ptr + last + offs
    gx_ptrs = grad_x_ptr + last + offs
    h_saved = tl.load(h_ptrs, mask=mask, other=0.0)
    gs = tl.zeros([BLOCK], dtype=tl.float32)  # not read without grad_spikes
    if HAS_GRAD_SPIKES:
        gs = tl.load(gs_ptrs, mask=mask, other=0.0).to(tl.float32)
    for t in range(T):
        more = mask & (t + 1 < T)  # prefetch the previous step, as in the forward
        h_next = tl.load(h_ptrs - N, mask=more, other=0.0)
        if HAS_GRAD_SPIKES:
            gs_next = tl.load(gs_ptrs - N, mask=more, other=0.0).to(tl.float32)
        # t == 0 is step T: without grad_v_last its v_T received no gradient
        dh = _membrane_grad(h_saved.to(tl.float32), dv, gs, (t == 0) & (not HAS_GRAD_V_LAST), v_th,
                            v_reset, alpha, half_width, atan_scale, reach, LEVELS, HARD_RESET, SURROGATE,
                            DETACH_RESET, WINDOW, HAS_GRAD_SPIKES)
        if HAS_GRAD_SPIKES:
            gs = gs_next
        tl.store(gx_ptrs, dh.to(grad_x_ptr.dtype.element_ty), mask=mask)
        dv = decay * dh
        h_saved = h_next
        h_ptrs -= N
        gs_ptrs -= N
        gx_ptrs -= N
    if EMIT_GRAD_V_INIT:
        tl.store(grad_v_init_ptr + offs, dv, mask=mask)


@triton.jit
def _lif_int_kernel(
    x_ptr, v_init_ptr, levels_ptr, v_last_ptr,
    T, N, theta, leak_shift, v_reset,
    LEVELS: tl.constexpr, HARD_RESET: tl.constexpr, HAS_V_INIT: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = _initial_state(v_init_ptr, offs, mask, HAS_V_INIT, BLOCK, tl.int32)
    x_ptrs = x_ptr + offs
    s_ptrs = levels_ptr + offs
    x = tl.load(x_ptrs, mask=mask, other=0)
    for t in range(T):
        x_next = tl.load(x_ptrs + N, mask=mask & (t + 1 < T), other=0)  # prefetch, as in the float kernel
        h = (v >> leak_shift) + x
        # Triton's // truncates (C semantics) where the contract says floor_div; the two differ only
        # when the exact quotient is negative and not an integer, and then both are <= 0, which the
        # clamp maps to level 0: the clamped levels agree, for either sign of h and theta.
        q = h // theta
        level = tl.where(q < 0, 0, tl.where(q > LEVELS, LEVELS, q))
        if HARD_RESET:
            v = tl.where(level > 0, v_reset, h)
        else:
            v = h - level * theta
        tl.store(s_ptrs, level.to(tl.uint8), mask=mask)
        x = x_next
        x_ptrs += N
        s_ptrs += N
    tl.store(v_last_ptr + offs, v, mask=mask)


# --------------------------------------------------------------------------- launchers


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _launch_config(n: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, num_warps): on a GPU, blocks of up to 1024 neurons but at least ~8 programs per SM
    (each program's T loop is serial, so parallelism comes from programs); under the interpreter
    (CPU) at most 128 neurons, few programs."""
    if device.type != "cuda":
        return min(128, triton.next_power_of_2(max(n, 16))), 1
    block, target = 1024, 8 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    while block > 128 and triton.cdiv(n, block) < target:
        block //= 2
    return block, max(1, block // 256)


def _run(kernel, grid_n, device, *args, fp_fusion=False, **meta):
    """Launch on x's device; ``fp_fusion=False`` forbids FMA contraction (the forward must round
    every product as the reference does; the backward, compared with a tolerance, may fuse)."""
    block, num_warps = _launch_config(grid_n, device)
    grid = (triton.cdiv(grid_n, block),)
    with on_device(device):
        kernel[grid](*args, **meta, BLOCK=block, num_warps=num_warps, enable_fp_fusion=fp_fusion)


def _check_2d(name: str, t: torch.Tensor, shape=None, dtypes=None) -> torch.Tensor:
    if t.dim() != 2 and shape is None:
        raise ValueError(f"{name} must be [T, N], got shape {tuple(t.shape)}")
    if t.dim() == 2 and t.shape[1] >= 2**31:
        raise ValueError(f"{name}: N must be below 2^31 (int32 offsets), got {t.shape[1]}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {dtypes}, got {t.dtype}")
    return t.contiguous()


def smooth_surrogate_reach(surrogate: str, alpha: float) -> int:
    """Levels on each side of the nearest one that the backward sums term by term for a smooth
    surrogate (``_surrogate_sum``): sigmoid terms farther out are below float32 rounding of the
    sum (``exp(-alpha d)``), atan terms farther out are summed in closed form, which needs
    ``atan_scale * reach >= 4``."""
    if surrogate == "sigmoid":
        return math.ceil(17.0 / alpha)
    return max(4, math.ceil(4.0 / (math.pi / 2 * alpha)))


def lif_forward_triton(x, v_init, s_bits, v_th, decay, v_reset, hard_reset, save_h=True, emit_v_last=True):
    """Float forward over all T in one launch.

    ``x``: ``[T, N]`` float32 (or float16/bfloat16 on a GPU), T >= 1, contiguous or one frame
    broadcast over T (:func:`qsnn_kernels.lif.broadcast_over_time`, read in place); others are copied. ``v_init``:
    ``[N]`` float32 or None (zeros). Returns ``(spikes, v_last, h)``: spike values ``level * v_th``
    ``[T, N]`` in x's dtype, the final membrane ``[N]`` float32 (``[0]``, never written, when
    ``emit_v_last`` is False), and the pre-reset membrane ``h`` ``[T, N]`` in x's dtype (saved for
    :func:`lif_backward_triton`; ``[0, N]``, never written, when ``save_h`` is False). Math in
    float32; for float32 x the result equals :func:`qsnn_kernels.reference.multilevel_lif` on the
    CPU bit for bit (NaN propagates as there). Raises ValueError/TypeError on a bad shape or dtype.
    """
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    broadcast = broadcast_over_time(x)
    if not broadcast:
        x = _check_2d("x", x, dtypes=FLOAT_DTYPES)
    elif x.dtype not in FLOAT_DTYPES or x.shape[1] >= 2**31:
        raise TypeError(f"x must be one of {FLOAT_DTYPES} with N below 2^31, got {x.dtype}, N = {x.shape[1]}")
    t_steps, n = x.shape
    if t_steps == 0:
        raise ValueError("x must have T >= 1 steps")
    if v_init is not None:
        v_init = _check_2d("v_init", v_init, shape=(n,), dtypes=(torch.float32,))
    spikes = torch.empty((t_steps, n), dtype=x.dtype, device=x.device)
    h = torch.empty((t_steps if save_h else 0, n), dtype=x.dtype, device=x.device)
    v_last = torch.empty(n if emit_v_last else 0, dtype=torch.float32, device=x.device)
    if n:
        _run(
            _lif_fwd_kernel, n, x.device,
            x, v_init if v_init is not None else x, spikes, h if save_h else spikes,
            v_last if emit_v_last else spikes,
            t_steps, n, float(v_th), float(decay), float(v_reset),
            LEVELS=(1 << s_bits) - 1, HARD_RESET=bool(hard_reset), HAS_V_INIT=v_init is not None,
            SAVE_H=bool(save_h), EMIT_V_LAST=bool(emit_v_last), X_BROADCAST=broadcast,
        )
    return spikes, v_last, h


def lif_backward_triton(grad_spikes, grad_v_last, h, s_bits, v_th, decay, v_reset, hard_reset,
                        surrogate, alpha, detach_reset, emit_grad_v_init=True):
    """BPTT over all T in one launch (reverse loop), from the saved ``h`` alone.

    ``grad_spikes``: ``[T, N]`` (any float dtype) or None (zero, never materialized);
    ``grad_v_last``: ``[N]`` or None (v_T received no gradient: the last step's membrane path then
    contributes nothing, as in the reference's autograd, even where that path is NaN); ``h``: from
    :func:`lif_forward_triton`. ``surrogate`` a name of :data:`qsnn_kernels.choices.SURROGATES`,
    ``alpha`` its resolved (non-None) parameter. Returns ``(grad_x [T, N] in h's dtype,
    grad_v_init [N] float32)`` (``[0]``, never written, without ``emit_grad_v_init``), equal to
    autograd of :func:`qsnn_kernels.reference.multilevel_lif` up to float32 rounding of the
    surrogate terms and, for atan and sigmoid with ``2 reach + 1 < L`` levels
    (:func:`smooth_surrogate_reach`), a relative error below 1e-5 of the level sum, whose far
    levels are summed in closed form (atan) or left out below rounding (sigmoid). Raises
    ValueError/TypeError on a bad shape, dtype, surrogate or alpha.
    """
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    h = _check_2d("h", h, dtypes=FLOAT_DTYPES)
    t_steps, n = h.shape
    check_choice(surrogate, tuple(SURROGATES), "surrogate", "lif_backward")
    if alpha is None or not alpha > 0:
        raise ValueError(f"alpha must be a resolved positive float, got {alpha!r}")
    if grad_spikes is not None:
        grad_spikes = _check_2d("grad_spikes", grad_spikes, shape=h.shape, dtypes=FLOAT_DTYPES)
    if grad_v_last is not None:
        grad_v_last = _check_2d("grad_v_last", grad_v_last, shape=(n,), dtypes=FLOAT_DTYPES)
    grad_x = torch.empty(t_steps, n, dtype=h.dtype, device=h.device)
    grad_v_init = torch.empty(n if emit_grad_v_init else 0, dtype=torch.float32, device=h.device)
    levels = (1 << s_bits) - 1
    alpha = float(alpha)
    reach = smooth_surrogate_reach(surrogate, alpha)
    if n and t_steps:
        _run(
            _lif_bwd_kernel, n, h.device,
            grad_spikes if grad_spikes is not None else h, grad_v_last if grad_v_last is not None else h,
            h, grad_x, grad_v_init if emit_grad_v_init else grad_x,
            t_steps, n, (t_steps - 1) * n, float(v_th), float(decay), float(v_reset), alpha, 0.5 / alpha,
            math.pi / 2 * alpha, reach,
            LEVELS=levels, HARD_RESET=bool(hard_reset), SURROGATE=SURROGATES[surrogate],
            DETACH_RESET=bool(detach_reset), HAS_GRAD_SPIKES=grad_spikes is not None,
            HAS_GRAD_V_LAST=grad_v_last is not None, EMIT_GRAD_V_INIT=bool(emit_grad_v_init),
            WINDOW=surrogate != "rect" and 2 * reach + 1 < levels, fp_fusion=True,
        )
    elif n and emit_grad_v_init:
        grad_v_init.copy_(grad_v_last if grad_v_last is not None else torch.zeros_like(grad_v_init))
    return grad_x, grad_v_init


def lif_int_triton(x, v_init, s_bits, theta, leak_shift, v_reset, hard_reset):
    """Integer forward (the hardware contract) over all T in one launch.

    ``x``: ``[T, N]`` int32, T >= 1; ``v_init``: ``[N]`` int32 or None (zeros); ``theta`` a nonzero
    int32 threshold, ``leak_shift`` in [0, 31], ``v_reset`` int32. Returns ``(levels uint8 [T, N],
    v_last int32 [N])``, bit-exact with :func:`qsnn_kernels.reference.multilevel_lif_int` as long
    as every ``h`` fits int32 (not checked here; it wraps).
    """
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    x = _check_2d("x", x, dtypes=(torch.int32,))
    t_steps, n = x.shape
    if t_steps == 0:
        raise ValueError("x must have T >= 1 steps")
    if v_init is not None:
        v_init = _check_2d("v_init", v_init, shape=(n,), dtypes=(torch.int32,))
    if not 0 <= int(leak_shift) <= 31:
        raise ValueError(f"leak_shift must be in [0, 31], got {leak_shift}")
    if int(theta) == 0 or not -(2**31) <= int(theta) < 2**31 or not -(2**31) <= int(v_reset) < 2**31:
        raise ValueError(f"theta must be a nonzero int32 and v_reset an int32, got {theta}, {v_reset}")
    levels = torch.empty(t_steps, n, dtype=torch.uint8, device=x.device)
    v_last = torch.empty(n, dtype=torch.int32, device=x.device)
    if n:
        _run(
            _lif_int_kernel, n, x.device,
            x, v_init if v_init is not None else x, levels, v_last,
            t_steps, n, int(theta), int(leak_shift), int(v_reset),
            LEVELS=(1 << s_bits) - 1, HARD_RESET=bool(hard_reset), HAS_V_INIT=v_init is not None,
        )
    return levels, v_last
