"""The executable spec: plain PyTorch, obviously correct, slow.

Every backend (C++ CPU, CUDA, Triton, HLS) is tested against these functions, bit-exactly
where the contract is integer. They follow DESIGN.md's numeric contracts:

* packing: :func:`pack_bits` / :func:`unpack_bits` (layout in :mod:`qsnn_kernels.bits`);
* weights (Eq. 5): :func:`quantize_weight`, :func:`fake_quantize_weight`;
* the bit-serial GEMM (Eq. 3): :func:`bitserial_matmul` (the definition) and
  :func:`bitserial_matmul_popcount` (the AND + popcount form the kernels use);
* the multi-level LIF neuron (Eqs. 6-7): :func:`multilevel_lif` (float, surrogate gradient)
  and :func:`multilevel_lif_int` (integer, the hardware contract).

Inputs are validated only as far as the spec needs; the public API validates fully.
"""

from __future__ import annotations

import math

import torch

from .bits import WORD_BITS, check_bits, num_words, SPIKE_BITS, WEIGHT_BITS
from .choices import DEFAULT_ALPHA, REDUCTIONS, RESETS, check_choice

__all__ = [
    "pack_bits",
    "unpack_bits",
    "quantize_weight",
    "fake_quantize_weight",
    "bitserial_matmul",
    "bitserial_matmul_popcount",
    "SURROGATES",
    "surrogate_grad",
    "multilevel_lif",
    "multilevel_lif_int",
    "batch_norm_statistics",
    "batch_norm_scale_shift",
    "batch_norm_lif",
    "spike_attention",
    "conv2d_levels",
    "spiking_layer_int",
    "SEW_CONNECTS",
    "sew_connect_levels",
]


# --------------------------------------------------------------------------- packing


def pack_bits(x: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Pack integer codes ``[..., K]`` into bit planes ``[bits, ..., ceil(K/32)]`` (int32 words).

    ``signed``: two's-complement codes (1-bit: -1 -> 0, +1 -> 1); else unsigned levels.
    """
    k = x.shape[-1]
    codes = x.to(torch.int64)
    if signed and bits == 1:
        codes = (codes + 1) // 2
    codes = codes & ((1 << bits) - 1)  # two's-complement bit pattern
    pad = num_words(k) * WORD_BITS - k
    codes = torch.nn.functional.pad(codes, (0, pad))
    codes = codes.reshape(*x.shape[:-1], num_words(k), WORD_BITS)
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=x.device)
    planes = []
    for p in range(bits):
        bit = (codes >> p) & 1
        word = (bit << shifts).sum(-1)  # < 2^32, exact in int64
        planes.append(word)
    words = torch.stack(planes)
    # reinterpret the low 32 bits as a signed int32 bit pattern
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_bits(planes: torch.Tensor, k: int, signed: bool) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[bits, ..., words]`` -> ``[..., k]``.

    Returns int8 for signed codes and uint8 for unsigned levels.
    """
    bits = planes.shape[0]
    words = planes.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=planes.device)
    per_bit = (words.unsqueeze(-1) >> shifts) & 1  # [bits, ..., words, 32]
    per_bit = per_bit.flatten(-2)[..., :k]
    codes = torch.zeros(per_bit.shape[1:], dtype=torch.int64, device=planes.device)
    for p in range(bits):
        codes |= per_bit[p] << p
    if signed:
        if bits == 1:
            codes = 2 * codes - 1
        else:
            codes = torch.where(codes >= 1 << (bits - 1), codes - (1 << bits), codes)
        return codes.to(torch.int8)
    return codes.to(torch.uint8)


# --------------------------------------------------------------------------- weights (Eq. 5)


_F32_MAX = torch.finfo(torch.float32).max


def quantize_weight(w: torch.Tensor, w_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization (Eq. 5): ``w ~ scale[n] * q[n, ...]``.

    ``w`` is first rounded to float32 (a float64 value beyond float32's range becomes inf).

    * W >= 2: ``scale = max|w_n| / (2^(W-1) - 1)`` in float32, ``q = clamp(round(w / scale),
      -2^(W-1), 2^(W-1)-1)`` (round half to even, torch.round). A channel whose scale is 0 (all
      zeros, or a max so small that the division underflows) gets scale 1 and q = 0; a scale
      that rounded up so that ``qmax * scale`` overflows to inf (max|w| within a rounding of
      float32's max) is taken one float32 step down: a finite weight never dequantizes to inf.
    * W = 1: ``q = sign(w)`` with sign(0) = +1 and ``scale = mean|w_n|`` (the L2-optimal binary
      scale), summed in float64 and rounded once to float32 (so float32-max weights do not
      overflow the sum); an all-zero channel gets scale 0.
    * Non-finite: a channel holding a NaN or +-inf gets scale NaN and the codes of a zero weight
      (0; +1 for W = 1), so ``scale * q`` is NaN across that channel: NaN propagates to the layer's
      output and the loss, never a finite stand-in. (Packing to integer codes refuses such a weight
      instead: :meth:`qsnn_kernels.PackedWeight.from_float`.)

    This is the contract of every backend (csrc/quantize_cpu.cpp bit for bit).
    Returns ``q`` (int8, same shape as ``w``) and ``scale`` (float32, ``[w.shape[0]]``).
    """
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    w32 = w.detach().to(torch.float32)
    flat = w32.reshape(w32.shape[0], math.prod(w32.shape[1:]))
    # a channel is non-finite exactly when its max|w| (W >= 2; amax propagates NaN) or its float64
    # sum of |w| (W = 1; finite float32 values cannot overflow it) is: no pass of its own
    if w_bits == 1:
        total = flat.abs().sum(dim=1, dtype=torch.float64)
        finite = torch.isfinite(total)
        scale = torch.where(finite, (total / flat.shape[1]).to(torch.float32), math.nan)
        q = ((flat >= 0) | ~finite[:, None]).to(torch.int8) * 2 - 1  # int8 throughout: 5x faster than int64
    else:
        qmax = (1 << (w_bits - 1)) - 1
        amax = flat.abs().amax(dim=1)
        finite = torch.isfinite(amax)
        scale = amax / qmax
        # rounded up so far that qmax * scale overflows (max|w| near float32's max): one step down
        scale = torch.where(scale * qmax <= _F32_MAX, scale, torch.nextafter(scale, torch.zeros_like(scale)))
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        scale = torch.where(finite, scale, math.nan)
        # a NaN scale makes the channel's codes NaN, then 0; finite channels hold no NaN
        q = torch.clamp(torch.round(flat / scale[:, None]), -qmax - 1, qmax).nan_to_num_(0.0)
    return q.to(torch.int8).reshape(w.shape), scale


def dequantize_weight(w: torch.Tensor, w_bits: int) -> torch.Tensor:
    """``scale * q`` of :func:`quantize_weight`, computed in float32 and returned in ``w``'s dtype; no gradient."""
    q, scale = quantize_weight(w, w_bits)
    return (q.to(torch.float32) * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)


def fake_quantize_weight(w: torch.Tensor, w_bits: int) -> torch.Tensor:
    """``scale * q`` in ``w``'s dtype with a straight-through gradient (identity) to ``w``."""
    return w + (dequantize_weight(w, w_bits) - w).detach()


# --------------------------------------------------------------------------- bit-serial GEMM (Eq. 3)



def _reduce(y: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce per-plane results ``[P, M, N]`` (int64) per DESIGN.md."""
    if reduce == "none":
        return y
    if reduce == "time":
        return y.sum(0)
    weights = torch.tensor([1 << p for p in range(y.shape[0])], dtype=torch.int64, device=y.device)
    return (y * weights[:, None, None]).sum(0)


def bitserial_matmul(x: torch.Tensor, q: torch.Tensor, reduce: str = "none") -> torch.Tensor:
    """The definition: ``Y_p = x_p @ q^T`` per plane/step, then reduced; int32, exact.

    ``x``: integer levels ``[P, M, K]``; ``q``: integer weight codes ``[N, K]``.
    ``reduce``: "none" -> ``[P, M, N]``; "time" -> ``sum_p Y_p``; "bitplane" -> ``sum_p 2^p Y_p``.
    Computed in int64 and checked to fit int32.
    """
    check_choice(reduce, REDUCTIONS, "reduce")
    y = torch.einsum("pmk,nk->pmn", x.to(torch.int64), q.to(torch.int64))
    y = _reduce(y, reduce)
    if y.numel() and (y.abs().max() >= 2**31):
        raise OverflowError("bit-serial GEMM result does not fit int32")
    return y.to(torch.int32)


def _popcount32(words: torch.Tensor) -> torch.Tensor:
    """Population count of int64 tensors holding 32-bit patterns."""
    v = words & 0xFFFFFFFF
    count = torch.zeros_like(v)
    for b in range(WORD_BITS):
        count += (v >> b) & 1
    return count


def bitserial_matmul_popcount(
    x_planes: torch.Tensor, w_planes: torch.Tensor, s_bits: int, reduce: str = "none"
) -> torch.Tensor:
    """The AND + popcount form of Eq. 3 on packed planes; equal to :func:`bitserial_matmul`.

    ``x_planes``: ``[P * s_bits, M, words]``, P steps (or bit planes) of ``s_bits``-bit levels,
    plane ``p * s_bits + b`` holding bit ``b`` of step ``p``. ``w_planes``: ``[W, N, words]``.
    ``Y_p = sum_b 2^b sum_q sign_q 2^q popcount(A_pb & B_q)`` with sign_q = -1 for the top plane of
    a W >= 2 code; for W = 1, ``sum_b 2^b (2 popcount(A_pb & B) - popcount(A_pb))``.
    """
    w_bits = w_planes.shape[0]
    a = x_planes.to(torch.int64)
    b = w_planes.to(torch.int64)
    steps = a.shape[0] // s_bits
    a = a.reshape(steps, s_bits, a.shape[1], 1, a.shape[2])  # [P, S, M, 1, words]
    y = torch.zeros(steps, a.shape[2], b.shape[1], dtype=torch.int64, device=a.device)
    for sb in range(s_bits):
        ap = a[:, sb]  # [P, M, 1, words]
        if w_bits == 1:
            both = _popcount32(ap & b[0][None, None]).sum(-1)
            ones = _popcount32(ap).sum(-1)
            y += (2 * both - ones) << sb
            continue
        for wq in range(w_bits):
            sign = -1 if wq == w_bits - 1 else 1
            y += sign * (_popcount32(ap & b[wq][None, None]).sum(-1) << (wq + sb))
    y = _reduce(y, reduce)
    return y.to(torch.int32)


# --------------------------------------------------------------------------- multi-level LIF (Eqs. 6-7)



def _atan(z: torch.Tensor, alpha: float) -> torch.Tensor:
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)


def _sigmoid(z: torch.Tensor, alpha: float) -> torch.Tensor:
    sg = torch.sigmoid(alpha * z)
    return alpha * sg * (1 - sg)


def _rect(z: torch.Tensor, alpha: float) -> torch.Tensor:
    return (z.abs() < 0.5 / alpha).to(z.dtype) * alpha


SURROGATES = {
    # name: (derivative g'(z) of one step at z = (h - l*v_th)/v_th, default alpha)
    "rect": (_rect, DEFAULT_ALPHA["rect"]),  # alpha * 1[|z| < 1/(2 alpha)]: straight-through in each level's window
    "atan": (_atan, DEFAULT_ALPHA["atan"]),  # (alpha/2) / (1 + (pi/2 alpha z)^2), SpikingJelly's ATan
    "sigmoid": (_sigmoid, DEFAULT_ALPHA["sigmoid"]),  # alpha sig(alpha z)(1 - sig(alpha z))
}
"""Surrogate gradients for the staircase ``clamp(floor(h / v_th), 0, L)``, ``L = 2^S - 1``.

The surrogate of the staircase's derivative with respect to ``h`` is a sum over its L steps,
``d level / d h ~ (1 / v_th) * sum_{l=1..L} g'((h - l v_th) / v_th)``; with ``rect`` and alpha = 1
this is 1/v_th on ``[v_th/2, (L + 1/2) v_th)``, i.e. straight-through over the spiking range.
"""


def surrogate_grad(h: torch.Tensor, v_th: float, levels: int, surrogate: str, alpha: float | None = None):
    """``d level / d h`` of the staircase under ``surrogate`` (see :data:`SURROGATES`)."""
    fn, default_alpha = SURROGATES[surrogate]
    a = default_alpha if alpha is None else alpha
    total = torch.zeros_like(h)
    for level in range(1, levels + 1):
        total = total + fn(h / v_th - level, a)
    return total / v_th


class _Staircase(torch.autograd.Function):
    """Integer level ``clamp(floor(h / v_th), 0, levels)`` (as h's dtype) with a surrogate backward."""

    @staticmethod
    def forward(h, v_th, levels, surrogate, alpha):
        return torch.clamp(torch.floor(h / v_th), 0, levels)

    @staticmethod
    def setup_context(ctx, inputs, output):  # separate from forward: torch.func transforms need that
        h, *args = inputs
        ctx.save_for_backward(h)
        ctx.args = tuple(args)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return grad * surrogate_grad(h, *ctx.args), None, None, None, None


def multilevel_lif(
    x: torch.Tensor,
    s_bits: int = 1,
    v_th: float = 1.0,
    decay: float = 0.5,
    v_reset: float = 0.0,
    reset: str = "hard",
    surrogate: str = "atan",
    alpha: float | None = None,
    detach_reset: bool = False,
    v_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-level LIF over ``x = [T, ...]`` input currents (float mode).

    For t = 1..T, with L = 2^s_bits - 1::

        h_t = decay * v_{t-1} + x_t
        s_t = clamp(floor(h_t / v_th), 0, L)
        v_t = v_reset if s_t > 0 else h_t        (reset="hard")
        v_t = h_t - s_t * v_th                   (reset="soft")

    Returns ``(s * v_th, v_T)``: the spike values ``[T, ...]`` and the final membrane potential.
    Backward: BPTT with the staircase surrogate of :data:`SURROGATES`. The hard reset is
    ``v_t = h_t (1 - r_t) + v_reset r_t`` with ``r_t = 1[h_t >= v_th]``, whose surrogate is one step
    of the same family; ``detach_reset`` cuts the gradient through ``r_t`` (hard) or ``s_t`` (soft).
    NaN input propagates: a neuron that sees a NaN current emits NaN spike values and keeps a NaN
    membrane from that step on (floor and clamp pass NaN through); other neurons are unaffected.
    """
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    check_choice(reset, RESETS, "reset")
    check_choice(surrogate, tuple(SURROGATES), "surrogate")
    levels = (1 << s_bits) - 1
    v = torch.zeros_like(x[0]) if v_init is None else v_init.to(x.dtype)
    out = []
    for t in range(x.shape[0]):
        h = decay * v + x[t]
        s = _Staircase.apply(h, v_th, levels, surrogate, alpha)
        out.append(s * v_th)
        if reset == "hard":
            r = _Staircase.apply(h, v_th, 1, surrogate, alpha)
            if detach_reset:
                r = r.detach()
            v = h * (1 - r) + v_reset * r
        else:
            v = h - (s.detach() if detach_reset else s) * v_th
    return torch.stack(out), v


def multilevel_lif_int(
    x: torch.Tensor,
    s_bits: int,
    theta: int,
    leak_shift: int = 0,
    v_reset: int = 0,
    reset: str = "hard",
    v_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer multi-level LIF: the hardware contract that hls/ mirrors bit-exactly.

    ``x``: int32 ``[T, ...]``. For t = 1..T::

        h_t = (v_{t-1} >> leak_shift) + x_t              (arithmetic shift: decay = 2^-leak_shift)
        s_t = clamp(floor_div(h_t, theta), 0, 2^s_bits - 1)
        v_t = v_reset if s_t > 0 else h_t                (hard) ;  h_t - s_t * theta   (soft)

    Returns ``(levels uint8 [T, ...], v_T int32)``. Raises OverflowError if h leaves int32.
    """
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    check_choice(reset, RESETS, "reset")
    levels = (1 << s_bits) - 1
    v = torch.zeros_like(x[0], dtype=torch.int64) if v_init is None else v_init.to(torch.int64)
    out = []
    for t in range(x.shape[0]):
        h = (v >> leak_shift) + x[t].to(torch.int64)
        if h.numel() and (h.min() < -(2**31) or h.max() >= 2**31):
            raise OverflowError(f"membrane potential leaves int32 at step {t}")
        s = torch.clamp(torch.div(h, theta, rounding_mode="floor"), 0, levels)
        v = torch.where(s > 0, torch.full_like(h, v_reset), h) if reset == "hard" else h - s * theta
        out.append(s.to(torch.uint8))
    return torch.stack(out), v.to(torch.int32)


# --------------------------------------------------------------------------- batch norm + LIF


def batch_norm_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, var)`` ``[C]`` of ``x [T, B, C, ...]`` over every dim but the channel dim 2 (the
    T * B samples and their positions), var biased (divided by the count), in x's dtype."""
    dims = [d for d in range(x.dim()) if d != 2]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


def batch_norm_scale_shift(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch norm as the per-channel affine map ``y = x * scale + shift``:
    ``scale = weight * rsqrt(var + eps)``, ``shift = bias - mean * scale`` (x's dtype, ``[C]``)."""
    scale = weight * torch.rsqrt(var + eps)
    return scale, bias - mean * scale


def batch_norm_lif(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor | None = None,
                   var: torch.Tensor | None = None, eps: float = 1e-5, s_bits: int = 1, v_th: float = 1.0,
                   decay: float = 0.5, v_reset: float = 0.0, reset: str = "hard", surrogate: str = "atan",
                   alpha: float | None = None, detach_reset: bool = False) -> torch.Tensor:
    """Batch norm over the channel dim 2 of ``x [T, B, C, ...]``, then :func:`multilevel_lif`:
    the spike values ``[T, B, C, ...]``.

    ``mean``/``var`` None: the batch statistics of ``x`` (:func:`batch_norm_statistics`; training
    mode, differentiated through as a batch norm is); given: those constants (eval mode, running
    statistics). The normalized input is ``x * scale + shift`` per channel
    (:func:`batch_norm_scale_shift`), two roundings, so a kernel that computes the same map from
    the same statistics gets the same membranes bit for bit. Running statistics are not updated."""
    if mean is None or var is None:
        mean, var = batch_norm_statistics(x)
    scale, shift = batch_norm_scale_shift(weight, bias, mean, var, eps)
    shape = (1, 1, -1) + (1,) * (x.dim() - 3)
    y = x * scale.view(shape) + shift.view(shape)
    return multilevel_lif(y, s_bits, v_th, decay, v_reset, reset, surrogate, alpha, detach_reset)[0]


# --- spiking self-attention


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Spiking self-attention's products without a softmax, per head:
    ``y = scale * Q (K^T V)`` (= ``scale * (Q K^T) V``) on ``[..., N, D]`` tokens, the heads
    being ``num_heads`` consecutive groups of ``D / num_heads`` channels. Computed in float64,
    returned in q's dtype (one rounding). ``q``, ``k``, ``v``: float, one shape.
    """
    *lead, n, d = q.shape
    h = num_heads
    qh, kh, vh = (t.to(torch.float64).reshape(*lead, n, h, d // h).transpose(-3, -2) for t in (q, k, v))
    y = scale * (qh @ (kh.transpose(-2, -1) @ vh))
    return y.transpose(-3, -2).reshape(q.shape).to(q.dtype)


# --- integer inference
# The integer datapath of a converted convolutional QSNN (models/convert.py, integer=True): spike
# levels channels-last, the convolution as exact integer arithmetic, the spiking layer's integer
# epilogue (per-channel bias and threshold, a fixed-point fraction) and the SEW connect of levels.


def conv2d_levels(levels: torch.Tensor, q: torch.Tensor, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1)) -> torch.Tensor:
    """Exact convolution of integer levels with integer weight codes, channels last.

    ``levels``: integer ``[T, N, H, W, C]``; ``q``: integer codes ``[Cout, kh, kw, C]``; zero
    padding (level 0), groups = 1. Returns int32 ``[T, N, H', W', Cout]``,
    ``Y[t, n, o, p, c] = sum_{i, j, k} levels[t, n, o*sh - ph + i*dh, p*sw - pw + j*dw, k] * q[c, i, j, k]``.
    Computed in float64 (exact: every partial sum is below 2^53) and checked to fit int32
    (OverflowError otherwise).
    """
    t, n = levels.shape[:2]
    x = levels.reshape(t * n, *levels.shape[2:]).permute(0, 3, 1, 2).to(torch.float64)
    w = q.permute(0, 3, 1, 2).to(torch.float64)
    y = torch.nn.functional.conv2d(x, w, None, tuple(stride), tuple(padding), tuple(dilation))
    if y.numel() and y.abs().max() >= 2**31:
        raise OverflowError("conv2d_levels: a result does not fit int32")
    y = y.permute(0, 2, 3, 1).to(torch.int32)
    return y.reshape(t, n, *y.shape[1:])


def spiking_layer_int(y: torch.Tensor, bias: torch.Tensor, theta: torch.Tensor, frac_bits: int, s_bits: int,
                      leak_shift: int = 1, reset: str = "hard") -> torch.Tensor:
    """The integer epilogue of a spiking layer: input current, then the integer multi-level LIF.

    ``y``: int32 GEMM results ``[T, ..., N]`` (channels last); ``bias``, ``theta``: integers
    ``[N]`` (theta >= 1), broadcast over the channel dimension; ``frac_bits`` >= 0 the fixed-point
    fraction of the current. For t = 1..T, with L = 2^s_bits - 1 and v_0 = 0::

        x_t = (y_t << frac_bits) + bias
        h_t = (v_{t-1} >> leak_shift) + x_t
        s_t = clamp(floor_div(h_t, theta), 0, L)
        v_t = 0 if s_t > 0 else h_t            (hard) ;  h_t - s_t * theta   (soft)

    which is :func:`multilevel_lif_int` with one threshold per channel and v_reset = 0 (with a
    scalar theta, ``frac_bits = 0`` and ``bias = 0`` the two agree bit for bit). Returns the levels
    uint8 ``[T, ..., N]``. Raises OverflowError if x or h leaves int32.
    """
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    check_choice(reset, RESETS, "reset")
    top = (1 << s_bits) - 1
    bias, theta = bias.to(torch.int64), theta.to(torch.int64)
    v = torch.zeros(y.shape[1:], dtype=torch.int64, device=y.device)
    out = []
    for t in range(y.shape[0]):
        x = (y[t].to(torch.int64) << frac_bits) + bias
        h = (v >> leak_shift) + x
        if h.numel() and (torch.minimum(x, h).min() < -(2**31) or torch.maximum(x, h).max() >= 2**31):
            raise OverflowError(f"spiking_layer_int: the current or the membrane leaves int32 at step {t}")
        s = torch.clamp(torch.div(h, theta, rounding_mode="floor"), 0, top)
        v = torch.where(s > 0, torch.zeros_like(h), h) if reset == "hard" else h - s * theta
        out.append(s.to(torch.uint8))
    return torch.stack(out)


SEW_CONNECTS = ("ADD", "AND", "IAND")
"""The SEW connect functions g(A, S) of levels (:func:`sew_connect_levels`)."""


def sew_connect_levels(a: torch.Tensor, s: torch.Tensor, connect: str, s_bits: int) -> torch.Tensor:
    """SEW-ResNet's connect function on integer levels of one width, L = 2^s_bits - 1:
    ``"ADD"`` min(A + S, L) (the sum clamped to the top level), ``"AND"`` min(A, S),
    ``"IAND"`` min(L - A, S). For s_bits = 1 these are OR, AND and (NOT A) AND S. Returns uint8."""
    check_choice(connect, SEW_CONNECTS, "connect")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    top = (1 << s_bits) - 1
    a, s = a.to(torch.int64), s.to(torch.int64)
    if connect == "ADD":
        out = torch.clamp(a + s, max=top)
    elif connect == "AND":
        out = torch.minimum(a, s)
    else:
        out = torch.minimum(top - a, s)
    return out.to(torch.uint8)
