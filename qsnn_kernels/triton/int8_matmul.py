"""Triton kernel of the exact int8 GEMM of spike-input layers: integer spike levels times integer
operands (weight codes, or other spike levels) on int8 tensor cores with int32 accumulation, and
a fused epilogue to float: ``out[m, n] = float(acc[m, n]) * (col_scale[n] * alpha) + bias[n]``.

It is the CUDA kernel of ``qsnn::int8_linear`` (:mod:`models.int8`: levels x weight codes, the
epilogue scale ``scale[n] * in_scale`` of Eq. 5, output in x's dtype, e.g. bfloat16 under
autocast). It also takes batched operands (levels x levels, as in Spikformer's attention
products); the models do not call it so: their attention products run in the autocast dtype
(:class:`models.layers.SpikeMatmul`).

Contract (:func:`int8_matmul_triton`): ``a [B, M, K]`` or ``[M, K]`` and ``b [B, N, K]`` or
``[N, K]`` (shared by every batch), int8 or uint8 holding values that fit int8 (uint8 levels up to
127, i.e. s_bits <= 7: tensor cores multiply signed int8); any strides. The int32 sum is exact
(the caller keeps ``K * max|a| * max|b| < 2^31``), and the epilogue rounds as the CPU op does: the
float32 product ``col_scale[n] * alpha`` first, then ``float(acc)`` times it, then the bias, then one
rounding to the output dtype. Oracle: ``torch._int_mm`` / an int64 matmul on the CPU, then the
same float32 epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_device

__all__ = ["int8_conv2d_triton", "int8_matmul_triton", "spike_linear_weight_grad_triton"]


@triton.jit
def _grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output rows and columns, the tiles taken in grouped order: GROUP_M row tiles
    share their column tiles in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * tiles_n
    first_m = (pid // group) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % rows_in_group
    pid_n = (pid % group) // rows_in_group
    return pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _int8_matmul_kernel(
    a_ptr, b_ptr, col_scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak, stride_bb, stride_bn, stride_bk, stride_ob, stride_om, stride_on,
    alpha,
    HAS_COL_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    rm, rn = _grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + batch * stride_ab + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < K - k0), other=0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < K - k0) & (rn[None, :] < N), other=0)
        # uint8 levels <= 127 are the same bits as int8
        acc = tl.dot(a.to(tl.int8, bitcast=True), b.to(tl.int8, bitcast=True), acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    y = acc.to(tl.float32)
    if HAS_COL_SCALE:
        y = y * (tl.load(col_scale_ptr + rn, mask=rn < N, other=0.0) * alpha)[None, :]
    else:
        y = y * alpha
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + batch * stride_ob + rm[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


# Tiles for sm_90's int8 MMA (K tiles of 64-128 bytes); the autotuner picks per (M, N, K) bucket
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4))
]
_int8_matmul_tuned = triton.autotune(_CONFIGS, key=["M", "N", "K"])(_int8_matmul_kernel)

INTERPRETER_TILE = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}
"""The fixed tile under TRITON_INTERPRET=1 (CPU tensors): small, as the interpreter is slow."""

INTEGER_DTYPES = (torch.int8, torch.uint8)


def _batched(t: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if t.dtype not in INTEGER_DTYPES:
        raise TypeError(f"int8_matmul: {name} must be int8 or uint8, got {t.dtype}")
    if t.dim() == 2:
        return t.unsqueeze(0), False
    if t.dim() != 3:
        raise ValueError(f"int8_matmul: {name} must be [M, K] or [B, M, K], got shape {tuple(t.shape)}")
    return t, True


def int8_matmul_triton(a: torch.Tensor, b: torch.Tensor, col_scale: torch.Tensor | None = None, alpha: float = 1.0,
                       bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``out = float(a @ b^T) * (col_scale * alpha) + bias`` in ``out_dtype`` (the module docstring
    has the contract): ``a [B, M, K]`` or ``[M, K]``, ``b [B, N, K]`` or ``[N, K]``; ``col_scale``
    and ``bias`` ``[N]`` or None. Returns ``[B, M, N]`` (``[M, N]`` for a 2-D ``a``). Raises
    TypeError/ValueError on dtypes, shapes or devices that do not match."""
    a3, batched = _batched(a, "a")
    b3, _ = _batched(b, "b")
    batch, m, k = a3.shape
    if b3.shape[-1] != k or b3.shape[0] not in (1, batch):
        raise ValueError(f"int8_matmul: a {tuple(a.shape)} and b {tuple(b.shape)} do not match ([B, M, K], [B|1, N, K])")
    n = b3.shape[1]
    for t, name in ((col_scale, "col_scale"), (bias, "bias")):
        if t is not None and (t.shape != (n,) or not t.is_floating_point()):
            raise ValueError(f"int8_matmul: {name} must be a float [N] = [{n}], got {t.dtype} {tuple(t.shape)}")
    if any(t is not None and t.device != a.device for t in (b, col_scale, bias)):
        raise ValueError("int8_matmul: every tensor must be on a's device")
    if not out_dtype.is_floating_point:
        raise TypeError(f"int8_matmul: out_dtype must be a float dtype, got {out_dtype}")
    out = torch.empty((batch, m, n), dtype=out_dtype, device=a.device)
    if col_scale is not None:
        col_scale = col_scale.to(torch.float32).contiguous()
    if m and n:
        stride_bb = b3.stride(0) if b3.shape[0] == batch and batch > 1 else 0
        args = (a3, b3, col_scale if col_scale is not None else out, bias if bias is not None else out, out,
                m, n, k, a3.stride(0), a3.stride(1), a3.stride(2), stride_bb, b3.stride(1), b3.stride(2),
                out.stride(0), out.stride(1), out.stride(2), float(alpha))
        flags = dict(HAS_COL_SCALE=col_scale is not None, HAS_BIAS=bias is not None)
        if a.device.type == "cuda":
            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), batch)

            with on_device(a.device):
                _int8_matmul_tuned[grid](*args, **flags)
        else:
            tile = INTERPRETER_TILE
            grid = (triton.cdiv(m, tile["BLOCK_M"]) * triton.cdiv(n, tile["BLOCK_N"]), batch)
            _int8_matmul_kernel[grid](*args, **flags, **tile, num_warps=1)
    return out if batched else out[0]


# --------------------------------------------------------------------------- convolution (implicit GEMM)


@triton.jit
def _int8_conv2d_kernel(
    x_ptr, w_ptr, col_scale_ptr, out_ptr,
    N, H, W, C, OH, OW, CO,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    stride_on, stride_oc, stride_op,
    alpha,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # x: levels [N, H, W, C] (channels-last); w: codes [CO, KH, KW, C]; out[n, co, p], p = oh * OW + ow
    M = N * OH * OW
    rm, rn = _grouped_tile(M, CO, BLOCK_M, BLOCK_N, GROUP_M)
    rc = tl.arange(0, BLOCK_K)
    img = rm // (OH * OW)
    pos = rm % (OH * OW)
    oh = pos // OW
    ow = pos % OW
    row_ok = rm < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for r in tl.static_range(KH):
        ih = oh * stride_h - pad_h + r * dil_h
        for s in tl.static_range(KW):
            iw = ow * stride_w - pad_w + s * dil_w
            inside = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # zero padding: level 0
            x_row = ((img.to(tl.int64) * H + ih) * W + iw) * C
            w_col = ((rn.to(tl.int64) * KH + r) * KW + s) * C
            for c0 in range(0, C, BLOCK_K):
                c = c0 + rc
                a = tl.load(x_ptr + x_row[:, None] + c[None, :], mask=inside[:, None] & (c[None, :] < C), other=0)
                b = tl.load(w_ptr + w_col[None, :] + c[:, None], mask=(c[:, None] < C) & (rn[None, :] < CO), other=0)
                acc = tl.dot(a.to(tl.int8, bitcast=True), b.to(tl.int8, bitcast=True), acc, out_dtype=tl.int32)
    y = acc.to(tl.float32) * (tl.load(col_scale_ptr + rn, mask=rn < CO, other=0.0) * alpha)[None, :]
    out_ptrs = out_ptr + img.to(tl.int64)[:, None] * stride_on + rn[None, :] * stride_oc + pos[:, None] * stride_op
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (rn[None, :] < CO))


_CONV_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in ((128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 128, 32, 8, 4))
]
_int8_conv2d_tuned = triton.autotune(_CONV_CONFIGS, key=["C", "CO", "OH", "OW", "KH", "KW"])(_int8_conv2d_kernel)


def int8_conv2d_triton(levels: torch.Tensor, codes: torch.Tensor, col_scale: torch.Tensor, alpha: float,
                       stride, padding, dilation, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convolution (groups = 1, zero padding) of integer levels ``[N, C, H, W]`` (uint8 <= 127 or
    int8, any layout; read channels-last) with int8 codes ``[CO, C, kh, kw]`` as an implicit GEMM
    (no im2col) on int8 tensor cores: ``out = float(acc) * (col_scale[co] * alpha)``, ``[N, CO, OH,
    OW]`` contiguous in ``out_dtype``. Exact int32 sums as :func:`int8_matmul_triton`."""
    if levels.dtype not in INTEGER_DTYPES or codes.dtype != torch.int8:
        raise TypeError(f"int8_conv2d: levels must be int8/uint8 and codes int8, got {levels.dtype}, {codes.dtype}")
    if levels.dim() != 4 or codes.dim() != 4 or levels.shape[1] != codes.shape[1]:
        raise ValueError(f"int8_conv2d: levels [N, C, H, W] and codes [CO, C, kh, kw] expected, got "
                         f"{tuple(levels.shape)}, {tuple(codes.shape)}")
    n, c, h, w = levels.shape
    co, _, kh, kw = codes.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"int8_conv2d: the kernel {(kh, kw)} does not fit the padded input {(h, w)}")
    x_hwc = levels.permute(0, 2, 3, 1).contiguous()
    w_hwc = codes.permute(0, 2, 3, 1).contiguous()
    out = torch.empty((n, co, oh, ow), dtype=out_dtype, device=levels.device)
    args = (x_hwc, w_hwc, col_scale.to(torch.float32).contiguous(), out, n, h, w, c, oh, ow, co, sh, sw, ph, pw, dh,
            dw, out.stride(0), out.stride(1), 1, float(alpha))
    if n * oh * ow and co:
        if levels.device.type == "cuda":
            def grid(meta):
                return (triton.cdiv(n * oh * ow, meta["BLOCK_M"]) * triton.cdiv(co, meta["BLOCK_N"]),)

            with on_device(levels.device):
                _int8_conv2d_tuned[grid](*args, KH=kh, KW=kw)
        else:
            tile = INTERPRETER_TILE
            grid = (triton.cdiv(n * oh * ow, tile["BLOCK_M"]) * triton.cdiv(co, tile["BLOCK_N"]),)
            _int8_conv2d_kernel[grid](*args, KH=kh, KW=kw, **tile, num_warps=1)
    return out


# --------------------------------------------------------------------------- the linear's weight gradient


@triton.jit
def _spike_linear_weight_grad_kernel(
    g_ptr, levels_ptr, partial_ptr, bias_partial_ptr,
    M, N, K, rows_per_split,
    stride_gm, stride_gn, stride_lm, stride_lk, stride_ps, stride_pn,
    IEEE: tl.constexpr, BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # partial[split, n, k] = sum over this split's rows m of g[m, n] * level[m, k]; with BIAS the
    # programs of the first column tile also write bias_partial[split, n] = sum of g[m, n] (the
    # bias gradient from the gradient tiles already loaded)
    split = tl.program_id(1)
    rn, rk = _grouped_tile(N, K, BLOCK_N, BLOCK_K, GROUP_M)
    first = split * rows_per_split
    last = tl.minimum(first + rows_per_split, M)
    rm = first + tl.arange(0, BLOCK_M)
    g_ptrs = g_ptr + rm[None, :].to(tl.int64) * stride_gm + rn[:, None] * stride_gn
    l_ptrs = levels_ptr + rm[:, None].to(tl.int64) * stride_lm + rk[None, :] * stride_lk
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(first, last, BLOCK_M):
        inside = rm < last - m0 + first
        gt = tl.load(g_ptrs, mask=(rn[:, None] < N) & inside[None, :], other=0.0)
        if BIAS:
            bias_acc += tl.sum(gt.to(tl.float32), axis=1)
        lv = tl.load(l_ptrs, mask=inside[:, None] & (rk[None, :] < K), other=0)
        # levels <= 255 are exact in every float dtype: converted in registers, never in memory (through
        # float32: Triton's interpreter turns uint8 into bfloat16 wrongly, a GPU the same either way)
        if IEEE:
            acc = tl.dot(gt, lv.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(gt, lv.to(tl.float32).to(gt.dtype), acc)
        g_ptrs += BLOCK_M * stride_gm
        l_ptrs += BLOCK_M * stride_lm
    out_ptrs = partial_ptr + split * stride_ps + rn[:, None] * stride_pn + rk[None, :]
    tl.store(out_ptrs, acc, mask=(rn[:, None] < N) & (rk[None, :] < K))
    if BIAS:
        first_column = tl.min(rk, axis=0) == 0
        tl.store(bias_partial_ptr + split * N + rn, bias_acc, mask=(rn < N) & first_column)


_WEIGHT_GRAD_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_M": bm, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bn, bk, bm, w, s in ((128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 64, 4, 3))
]
_WEIGHT_GRAD_TILE = {"BLOCK_N": 128, "BLOCK_K": 128}
"""The output tile the launcher counts programs by when it splits the rows (the configs' largest)."""
_WEIGHT_GRAD_INTERPRETER_TILE = {"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_M": 32, "GROUP_M": 4}
_spike_linear_weight_grad_tuned = triton.autotune(_WEIGHT_GRAD_CONFIGS, key=["N", "K", "rows_per_split"])(
    _spike_linear_weight_grad_kernel)
WEIGHT_GRAD_PROGRAMS = 264
"""Programs to aim for (two per multiprocessor of an H100/H200): the reduction over M is split
until the output tiles times the splits reach it (a [512, 512] gradient has 16 tiles of 128 x 128)."""


def spike_linear_weight_grad_triton(grad: torch.Tensor, levels: torch.Tensor, alpha: float, bias: bool = False
                                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, bias_grad)``: ``out[n, k] = alpha * sum_m grad[m, n] * level[m, k]``, float32 ``[N, K]``,
    the weight gradient of a linear whose input was ``level * alpha``, reading the one-byte levels
    (uint8, or int8 >= 0) and the gradient (float32, bfloat16 or float16) as they are, the levels
    turned into the gradient's dtype in registers (exact); with ``bias``, ``bias_grad[n] = sum_m
    grad[m, n]`` (float32 ``[N]``) from the same loads, else None. Products summed in float32
    (float32 gradients in IEEE float32, no TF32) over splits of M whose partial sums are added in a
    fixed order: deterministic."""
    if not grad.is_floating_point() or grad.dtype == torch.float64 or levels.dtype not in INTEGER_DTYPES:
        raise TypeError(f"spike_linear_weight_grad: grad must be float32/bfloat16/float16 and levels uint8/int8, got "
                        f"{grad.dtype}, {levels.dtype}")
    if grad.dim() != 2 or levels.dim() != 2 or grad.shape[0] != levels.shape[0] or grad.device != levels.device:
        raise ValueError(f"spike_linear_weight_grad: grad [M, N] and levels [M, K] on one device expected, got "
                         f"{tuple(grad.shape)} on {grad.device}, {tuple(levels.shape)} on {levels.device}")
    m, n = grad.shape
    k = levels.shape[1]
    if m == 0 or n == 0 or k == 0:
        zeros = torch.zeros((n, k), dtype=torch.float32, device=grad.device)
        return zeros, zeros.new_zeros((n,)) if bias else None
    cuda = grad.device.type == "cuda"
    tile = _WEIGHT_GRAD_TILE if cuda else _WEIGHT_GRAD_INTERPRETER_TILE
    tiles = triton.cdiv(n, tile["BLOCK_N"]) * triton.cdiv(k, tile["BLOCK_K"])
    row_step = 256 if cuda else tile["BLOCK_M"]  # splits of whole row blocks
    splits = min(max(WEIGHT_GRAD_PROGRAMS // tiles, 1) if cuda else 2, triton.cdiv(m, row_step))
    rows_per_split = triton.cdiv(triton.cdiv(m, splits), row_step) * row_step
    splits = triton.cdiv(m, rows_per_split)
    partial = torch.empty((splits, n, k), dtype=torch.float32, device=grad.device)
    bias_partial = torch.empty((splits, n), dtype=torch.float32, device=grad.device) if bias else partial
    args = (grad, levels, partial, bias_partial, m, n, k, rows_per_split, grad.stride(0), grad.stride(1),
            levels.stride(0), levels.stride(1), partial.stride(0), partial.stride(1))
    flags = dict(IEEE=grad.dtype == torch.float32, BIAS=bias)
    if cuda:
        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(k, meta["BLOCK_K"]), splits)

        with on_device(grad.device):
            _spike_linear_weight_grad_tuned[grid](*args, **flags)
    else:
        _spike_linear_weight_grad_kernel[(tiles, splits)](*args, **flags, **tile, num_warps=1)
    out = partial.sum(0) if splits > 1 else partial[0]
    bias_grad = (bias_partial.sum(0) if splits > 1 else bias_partial[0]) if bias else None
    return (out.mul_(alpha) if alpha != 1.0 else out), bias_grad
