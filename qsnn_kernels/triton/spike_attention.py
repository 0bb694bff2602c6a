"""Triton kernels of spiking self-attention's products (the CUDA kernels of
``qsnn::spike_attention`` and ``qsnn::spike_attention_backward``, :mod:`qsnn_kernels.spike_attention`).

One program per (row of leading dimensions, head) holds the head's ``K^T V`` (``d x d``, float32)
in registers: the forward reads K and V once to build it, then Q once to write
``y = scale * Q (K^T V)`` straight into the ``[..., N, D]`` token layout (no head transposes, no
copies); the backward reads Q and the gradient once (``grad_q``, and ``grad_kv = scale * Q^T
grad_y``), then K and V once (``grad_k = V grad_kv^T``, ``grad_v = K grad_kv``).

Precision: products on tensor cores in the inputs' dtype, sums in float32. The float32 right
operands (``K^T V``, ``grad_kv``) enter a half-precision product as two halves, ``hi + lo``
(16 significant bits; exact for integer ``K^T V`` below 2^16); float32 inputs multiply in IEEE
float32 (no TF32). Oracle: :func:`qsnn_kernels.reference.spike_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_device

__all__ = ["spike_attention_backward_triton", "spike_attention_triton"]


@triton.jit
def _dot_right_float32(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` for a float32 ``b``: IEEE float32, or ``b`` as two halves of a's dtype."""
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        hi = b.to(a.dtype)
        acc = tl.dot(a, hi, acc)
        acc = tl.dot(a, (b - hi.to(tl.float32)).to(a.dtype), acc)
    return acc


@triton.jit
def _dot_inputs(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _spike_attention_kernel(q_ptr, k_ptr, v_ptr, y_ptr, kv_ptr, N, D, H, scale,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                            IEEE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    base = r * N * D + head * HEAD_DIM
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    in_head = rd < HEAD_DIM
    kv = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        mask = ((n0 + rn)[:, None] < N) & in_head[None, :]
        offs = base + (n0 + rn)[:, None] * D + rd[None, :]
        k = tl.load(k_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        kv = _dot_inputs(tl.trans(k), v, kv, IEEE)
    kv_offs = ((r * H + head) * HEAD_DIM + rd[:, None]) * HEAD_DIM + rd[None, :]
    tl.store(kv_ptr + kv_offs, kv, mask=in_head[:, None] & in_head[None, :])
    for n0 in range(0, N, BLOCK_N):
        mask = ((n0 + rn)[:, None] < N) & in_head[None, :]
        offs = base + (n0 + rn)[:, None] * D + rd[None, :]
        q = tl.load(q_ptr + offs, mask=mask, other=0.0)
        y = _dot_right_float32(q, kv, tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), IEEE)
        tl.store(y_ptr + offs, (y * scale).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _spike_attention_backward_kernel(gy_ptr, q_ptr, k_ptr, v_ptr, kv_ptr, gq_ptr, gk_ptr, gv_ptr, N, D, H, scale,
                                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                                     IEEE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    base = r * N * D + head * HEAD_DIM
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    in_head = rd < HEAD_DIM
    kv_offs = ((r * H + head) * HEAD_DIM + rd[:, None]) * HEAD_DIM + rd[None, :]
    kv_t = tl.trans(tl.load(kv_ptr + kv_offs, mask=in_head[:, None] & in_head[None, :], other=0.0))
    grad_kv = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        mask = ((n0 + rn)[:, None] < N) & in_head[None, :]
        offs = base + (n0 + rn)[:, None] * D + rd[None, :]
        q = tl.load(q_ptr + offs, mask=mask, other=0.0)
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(q.dtype)
        gq = _dot_right_float32(gy, kv_t, tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), IEEE)
        tl.store(gq_ptr + offs, (gq * scale).to(gq_ptr.dtype.element_ty), mask=mask)
        grad_kv = _dot_inputs(tl.trans(q), gy, grad_kv, IEEE)
    grad_kv = grad_kv * scale
    grad_kv_t = tl.trans(grad_kv)
    for n0 in range(0, N, BLOCK_N):
        mask = ((n0 + rn)[:, None] < N) & in_head[None, :]
        offs = base + (n0 + rn)[:, None] * D + rd[None, :]
        k = tl.load(k_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        gk = _dot_right_float32(v, grad_kv_t, tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), IEEE)
        gv = _dot_right_float32(k, grad_kv, tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), IEEE)
        tl.store(gk_ptr + offs, gk.to(gk_ptr.dtype.element_ty), mask=mask)
        tl.store(gv_ptr + offs, gv.to(gv_ptr.dtype.element_ty), mask=mask)


def _meta(n: int, head_dim: int, dtype: torch.dtype, cuda: bool) -> dict:
    """Tile and warps: the head's ``d x d`` float32 matrices live in registers, so wide heads and
    float32 (IEEE products, no tensor cores) take 8 warps and float32 shorter token tiles (sm_90a,
    ``tests/test_spike_attention.py`` compiles them: no spills in half precision)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    ieee = dtype == torch.float32
    if not cuda:
        return dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=16, IEEE=ieee, num_warps=1)
    block_n = 32 if ieee or block_d > 64 else 64
    return dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=block_n, IEEE=ieee,
                num_warps=8 if ieee or block_d >= 64 else 4)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-2], t.shape[-1]).contiguous()


def spike_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, kv)``: ``y = scale * Q (K^T V)`` per head in q's shape and dtype (contiguous), and the
    heads' ``K^T V``, float32 ``[R, num_heads, d, d]`` (R: the product of the leading dimensions),
    which the backward reads. ``q``, ``k``, ``v``: ``[..., N, D]`` of one float dtype (float32,
    bfloat16, float16), ``D`` a multiple of ``num_heads``; the op checks them."""
    n, dim = q.shape[-2], q.shape[-1]
    head_dim = dim // num_heads
    q3, k3, v3 = _rows(q), _rows(k), _rows(v)
    rows = q3.shape[0]
    y = torch.empty_like(q3)
    kv = torch.empty((rows, num_heads, head_dim, head_dim), dtype=torch.float32, device=q.device)
    if rows and n and dim:
        with on_device(q.device):
            _spike_attention_kernel[(rows, num_heads)](q3, k3, v3, y, kv, n, dim, num_heads, float(scale),
                                                       **_meta(n, head_dim, q.dtype, q.is_cuda))
    elif kv.numel():
        kv.zero_()
    return y.view(q.shape), kv


def spike_attention_backward_triton(grad_y: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                    kv: torch.Tensor, num_heads: int, scale: float
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k, grad_v)`` of :func:`spike_attention_triton` for the gradient ``grad_y``
    of y, in q's shape and dtype, from q, k, v and the forward's ``kv``."""
    n, dim = q.shape[-2], q.shape[-1]
    head_dim = dim // num_heads
    gy3, q3, k3, v3 = _rows(grad_y), _rows(q), _rows(k), _rows(v)
    rows = q3.shape[0]
    grads = [torch.empty_like(q3) for _ in range(3)]
    if rows and n and dim:
        with on_device(q.device):
            _spike_attention_backward_kernel[(rows, num_heads)](
                gy3, q3, k3, v3, kv.contiguous(), *grads, n, dim, num_heads, float(scale),
                **_meta(n, head_dim, q.dtype, q.is_cuda))
    else:
        for g in grads:
            g.zero_()
    return tuple(g.view(q.shape) for g in grads)
