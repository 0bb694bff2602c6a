"""Triton kernels of the per-output-channel weight quantization (Eq. 5): the CUDA kernels of the ops
``qsnn::quantize_weight`` and ``qsnn::dequantized_weight`` (:mod:`qsnn_kernels.quantize`); and of
the spike side, ``qsnn::spike_levels`` (:func:`spike_levels_triton`, at the end).

Oracle: :func:`qsnn_kernels.reference.quantize_weight` and
:func:`qsnn_kernels.reference.dequantize_weight`, whose docstrings hold the contract (special
values, the zero and overflowing scales, W = 1). A quantized layer runs this on every training
step, where the torch formula takes about a dozen launches and as many passes over the weight;
here it is one launch, one program per output channel, reading the channel twice (its scale, then
its codes) and writing the codes (int8) or the dequantized weight (the weight's dtype) once.

Exactness: W >= 2 is bit-identical to the reference (``max|w|`` is exact in any order, the scale
and codes use a correctly rounded division and round half to even, as torch on the CPU does);
W = 1 sums ``|w|`` in float64 in the kernel's order and rounds once to float32, as the C++ kernel
does in its own order: equal to the reference, or rarely one float32 rounding apart.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..bits import WEIGHT_BITS, check_bits
from .device import on_device

__all__ = ["quantize_weight_triton", "dequantized_weight_triton", "spike_levels_triton"]

FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _round_half_even(v):
    # torch.round of a float32; |v| >= 2^23 is already an integer (its fraction is 0)
    r = tl.floor(v)
    frac = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), r + 1.0, r)


@triton.jit
def _quantize_rows_kernel(
    w_ptr, codes_ptr, dequant_ptr, scale_ptr, K,
    W_BITS: tl.constexpr, EMIT_CODES: tl.constexpr, EMIT_DEQUANT: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * K
    offs = tl.arange(0, BLOCK)
    # pass 1: the channel's scale
    if W_BITS == 1:
        total = tl.zeros([BLOCK], dtype=tl.float64)
        for k0 in range(0, K, BLOCK):
            w = tl.load(w_ptr + base + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            total += tl.abs(w).to(tl.float64)
        s = tl.sum(total, axis=0)
        finite = tl.abs(s) < float("inf")  # false for NaN and inf
        scale = tl.where(finite, (s / K).to(tl.float32), float("nan"))
    else:
        qmax: tl.constexpr = (1 << (W_BITS - 1)) - 1
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        bad = tl.zeros([BLOCK], dtype=tl.int32)  # NaN or inf seen
        for k0 in range(0, K, BLOCK):
            a = tl.abs(tl.load(w_ptr + base + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32))
            bad = bad | (~(a < float("inf"))).to(tl.int32)
            amax = tl.where(a > amax, a, amax)
        amax = tl.max(amax, axis=0)
        finite = tl.max(bad, axis=0) == 0
        scale = tl.div_rn(amax, qmax * 1.0)
        # rounded up so far that qmax * scale overflows: one float32 step down (scale > 0 there)
        down = (scale.to(tl.int32, bitcast=True) - 1).to(tl.float32, bitcast=True)
        scale = tl.where(scale * qmax <= FLOAT32_MAX, scale, down)
        scale = tl.where(scale == 0.0, 1.0, scale)
        scale = tl.where(finite, scale, float("nan"))
    tl.store(scale_ptr + row, scale)
    # pass 2: the codes (and/or scale * code)
    for k0 in range(0, K, BLOCK):
        mask = k0 + offs < K
        w = tl.load(w_ptr + base + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        if W_BITS == 1:
            q = tl.where((w >= 0.0) | (finite == 0), 1.0, -1.0)
        else:
            q = _round_half_even(tl.div_rn(w, scale))
            q = tl.where(q < -qmax - 1.0, -qmax - 1.0, tl.where(q > qmax * 1.0, qmax * 1.0, q))
            q = tl.where(q == q, q, 0.0)  # a NaN channel's codes are 0
        if EMIT_CODES:
            tl.store(codes_ptr + base + k0 + offs, q.to(tl.int8), mask=mask)
        if EMIT_DEQUANT:
            tl.store(dequant_ptr + base + k0 + offs, (q * scale).to(dequant_ptr.dtype.element_ty), mask=mask)


def _rows(w: torch.Tensor) -> torch.Tensor:
    if not w.is_floating_point() or w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"w must be a non-empty float tensor [N, ...], got {w.dtype} {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1).contiguous()


def _launch(w: torch.Tensor, w_bits: int, codes, dequant, scale) -> None:
    rows = _rows(w)
    n, k = rows.shape
    block = min(1024 if w.device.type == "cuda" else 128, triton.next_power_of_2(max(k, 16)))
    grid = (n,)
    args = (rows, codes if codes is not None else scale, dequant if dequant is not None else scale, scale, k)
    meta = dict(W_BITS=w_bits, EMIT_CODES=codes is not None, EMIT_DEQUANT=dequant is not None, BLOCK=block,
                num_warps=4 if w.device.type == "cuda" else 1, enable_fp_fusion=False)
    with on_device(w.device):
        _quantize_rows_kernel[grid](*args, **meta)


def quantize_weight_triton(w: torch.Tensor, w_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int8, ``w``'s shape) and scales (float32 ``[N]``) of
    :func:`qsnn_kernels.reference.quantize_weight`, in one launch."""
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    codes = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    _launch(w, w_bits, codes, None, scale)
    return codes, scale


def dequantized_weight_triton(w: torch.Tensor, w_bits: int) -> torch.Tensor:
    """``scale * q`` in ``w``'s dtype and shape (contiguous), the values of
    :func:`qsnn_kernels.reference.dequantize_weight`, in one launch without writing the codes."""
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    out = torch.empty(w.shape, dtype=w.dtype, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    _launch(w, w_bits, None, out, scale)
    return out


# --------------------------------------------------------------------------- spike levels


@triton.jit
def _spike_levels_kernel(x_ptr, levels_ptr, bad_ptr, n, scale, inv_scale,
                         TOP: tl.constexpr, UNIT_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if UNIT_SCALE:
        level = _round_half_even(x)
        back = level
    else:
        level = _round_half_even(x * inv_scale)
        back = level * scale
    good = (back == x) & (level >= 0.0) & (level <= TOP * 1.0)  # false for NaN
    tl.store(levels_ptr + offs, tl.where(good, level, 0.0).to(levels_ptr.dtype.element_ty), mask=mask)
    bad = tl.sum((mask & ~good).to(tl.int64), axis=0)
    tl.atomic_add(bad_ptr, bad, sem="relaxed")  # an integer count: the same in any order


def _spans_its_elements(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``numel`` consecutive memory slots (dense, no overlap: its
    strides, sorted, are the running products of its sizes; size-1 dimensions aside)."""
    expected = 1
    for size, stride in sorted(((n, st) for n, st in zip(t.shape, t.stride()) if n != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def spike_levels_triton(x: torch.Tensor, scale: float, s_bits: int, is_signed: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The levels (int8 when ``is_signed``, else uint8; ``x``'s shape, and its strides when ``x``
    is dense) and the int64 count of elements that are not ``s_bits`` spikes at ``scale``: the
    values of :func:`qsnn_kernels.quantize._spike_levels_torch` (the formula in float32, round half
    to even), in one pass over ``x`` (a non-dense ``x`` is made contiguous first)."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got {x.dtype}")
    if not _spans_its_elements(x):
        x = x.contiguous()
    levels = torch.empty_like(x, dtype=torch.int8 if is_signed else torch.uint8)  # x's strides (dense)
    bad = torch.zeros((), dtype=torch.int64, device=x.device)
    n = x.numel()
    if n:
        # a dense tensor spans n consecutive elements from its offset, its levels alike (same strides)
        flat_x, flat_levels = (t.as_strided((n,), (1,)) for t in (x, levels))
        block = 1024 if x.device.type == "cuda" else 128
        with on_device(x.device):
            _spike_levels_kernel[(triton.cdiv(n, block),)](
                flat_x, flat_levels, bad, n, float(scale), 1.0 / float(scale), TOP=(1 << s_bits) - 1,
                UNIT_SCALE=float(scale) == 1.0, BLOCK=block, num_warps=4 if x.device.type == "cuda" else 1,
                enable_fp_fusion=False)
    return levels, bad
