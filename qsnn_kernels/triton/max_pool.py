"""Triton kernels of the 2-D max pool with one-byte argmax offsets: the CUDA kernels of the ops
``qsnn::max_pool2d_offsets`` and ``qsnn::max_pool2d_offsets_backward`` (:mod:`qsnn_kernels.max_pool`).

Forward: one program per block of output elements; each walks its window (``KH x KW``, dilation
1) with torch's rule (a value replaces the maximum when it is greater or NaN; the first window
element inside the input is the start), and writes the maximum and its offset ``r * KW + s`` in
the window as uint8. Backward: one program per block of input elements; each gathers the
gradients of the windows whose argmax it is, in the order torch's own backward adds them (output
positions in row-major order), so the result is torch's bit for bit in float32. No atomics.
Tensors are read and written with their strides (contiguous and channels-last alike).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_device
from ..max_pool import output_like

__all__ = ["max_pool2d_offsets_triton", "max_pool2d_offsets_backward_triton"]


@triton.jit
def _decompose(idx, C, H, W):
    w = idx % W
    h = (idx // W) % H
    c = (idx // (W * H)) % C
    n = idx // (W * H * C)
    return n, c, h, w


@triton.jit
def _max_pool_fwd_kernel(
    x_ptr, y_ptr, off_ptr, total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, oh, ow = _decompose(idx, C, OH, OW)
    h0 = oh * stride_h - pad_h
    w0 = ow * stride_w - pad_w
    base = x_ptr + n * sxn + c * sxc
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    # torch starts from the window's first element inside the input
    arg = (tl.maximum(-h0, 0) * KW + tl.maximum(-w0, 0)).to(tl.int32)
    for r in tl.static_range(KH):
        for s in tl.static_range(KW):
            ih = h0 + r
            iw = w0 + s
            inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            val = tl.load(base + ih * sxh + iw * sxw, mask=inside, other=float("-inf")).to(tl.float32)
            take = inside & ((val > best) | (val != val))
            best = tl.where(take, val, best)
            arg = tl.where(take, r * KW + s, arg)
    out = n * syn + c * syc + oh * syh + ow * syw
    tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(off_ptr + out, arg.to(tl.uint8), mask=mask)


@triton.jit
def _max_pool_bwd_kernel(
    grad_ptr, off_ptr, gx_ptr, total, C, H, W, OH, OW,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, ih, iw = _decompose(idx, C, H, W)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    # windows containing (ih, iw) at offset (r, s): oh = (ih + pad_h - r) / stride_h; r descending
    # gives oh ascending, s descending ow ascending: torch's order of the additions
    for rr in tl.static_range(KH):
        r = KH - 1 - rr
        oh_num = ih + pad_h - r
        oh = oh_num // stride_h
        row_ok = (oh_num >= 0) & (oh_num % stride_h == 0) & (oh < OH)
        for ss in tl.static_range(KW):
            s = KW - 1 - ss
            ow_num = iw + pad_w - s
            ow = ow_num // stride_w
            ok = mask & row_ok & (ow_num >= 0) & (ow_num % stride_w == 0) & (ow < OW)
            at_off = n * son + c * soc + oh * soh + ow * sow
            hit = ok & (tl.load(off_ptr + at_off, mask=ok, other=255).to(tl.int32) == r * KW + s)
            at = n * sgn + c * sgc + oh * sgh + ow * sgw
            acc += tl.where(hit, tl.load(grad_ptr + at, mask=hit, other=0.0).to(tl.float32), 0.0)
    tl.store(gx_ptr + n * sxn + c * sxc + ih * sxh + iw * sxw, acc.to(gx_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, total: int, device: torch.device, *args, **meta):
    block = 1024 if device.type == "cuda" else 128
    grid = (triton.cdiv(total, block),)
    with on_device(device):
        kernel[grid](*args, **meta, BLOCK=block, num_warps=4 if device.type == "cuda" else 1)


def max_pool2d_offsets_triton(x, kernel, stride, padding):
    """``(y, offsets uint8)`` of :func:`qsnn_kernels.max_pool.max_pool2d_offsets` (its contract)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = output_like(x, (n, c, oh, ow), x.dtype)
    offsets = torch.empty_like(y, dtype=torch.uint8)  # y's layout
    total = y.numel()
    if total:
        _launch(_max_pool_fwd_kernel, total, x.device, x, y, offsets, total, c, h, w, oh, ow, *x.stride(), *y.stride(),
                sh, sw, ph, pw, KH=kh, KW=kw)
    return y, offsets


def max_pool2d_offsets_backward_triton(grad, offsets, input_shape, kernel, stride, padding):
    """``grad_x`` of :func:`qsnn_kernels.max_pool.max_pool2d_offsets` (its contract), ``grad``'s dtype."""
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    gx = output_like(offsets, (n, c, h, w), grad.dtype)
    total = gx.numel()
    if total:
        _launch(_max_pool_bwd_kernel, total, grad.device, grad, offsets, gx, total, c, h, w, grad.shape[2],
                grad.shape[3], *grad.stride(), *offsets.stride(), *gx.stride(), sh, sw, ph, pw, KH=kh, KW=kw)
    return gx
