"""Spiking self-attention's products in one op: ``y = scale * Q (K^T V)`` per head, without a
softmax (Spikformer's SSA), on tokens ``[..., N, D]``: the ops ``qsnn::spike_attention`` and
``qsnn::spike_attention_backward`` and the function :func:`spike_attention`.

Unfused, the products run on head views ``[..., h, N, d]`` of the token tensors: each batched
product copies its strided operands and the result is copied back to ``[..., N, D]``. The op reads
and writes the token layout directly, and its backward keeps Q, K, V (the inputs: spikes, which
the model holds anyway) and the heads' ``K^T V`` (float32, ``d x d`` per head).

Op contract::

    spike_attention(q, k, v [..., N, D] one float dtype, num_heads, scale) -> (y [..., N, D] q.dtype,
                                                                            kv [R, num_heads, d, d] float32)
    spike_attention_backward(grad_y, q, k, v, kv, num_heads, scale) -> (grad_q, grad_k, grad_v)

``d = D / num_heads``, R the product of the leading dimensions. Kernels: CUDA, Triton
(qsnn_kernels/triton/spike_attention.py); CPU, the same products in torch operations. Values
agree with :func:`qsnn_kernels.reference.spike_attention` up to float32 sums (half-precision
inputs: products of the inputs on tensor cores, ``K^T V`` as two halves, 16 significant bits).
"""

from __future__ import annotations

import math

import torch

__all__ = ["spike_attention"]

torch.library.define("qsnn::spike_attention", "(Tensor q, Tensor k, Tensor v, int num_heads, float scale) -> "
                                              "(Tensor, Tensor)")
torch.library.define("qsnn::spike_attention_backward",
                     "(Tensor grad_y, Tensor q, Tensor k, Tensor v, Tensor kv, int num_heads, float scale) -> "
                     "(Tensor, Tensor, Tensor)")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(q, k, v, num_heads) -> None:
    torch._check_type(q.dtype in DTYPES and k.dtype == q.dtype and v.dtype == q.dtype,
                 lambda: f"spike_attention: q, k, v must share one dtype of {DTYPES}, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    torch._check_value(q.dim() >= 2 and k.shape == q.shape and v.shape == q.shape,
                       lambda: f"spike_attention: q, k, v must be [..., N, D] of one shape, got {tuple(q.shape)}, "
                               f"{tuple(k.shape)}, {tuple(v.shape)}")
    torch._check_value(num_heads >= 1 and q.shape[-1] % num_heads == 0,
                       lambda: f"spike_attention: D = {q.shape[-1]} must be a multiple of num_heads = {num_heads}")
    torch._check_type(k.device == q.device and v.device == q.device,
                 lambda: f"spike_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _kv_shape(q, num_heads):
    d = q.shape[-1] // num_heads
    return (math.prod(q.shape[:-2]), num_heads, d, d)


@torch.library.register_fake("qsnn::spike_attention")
def _forward_fake(q, k, v, num_heads, scale):
    _check(q, k, v, num_heads)
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(_kv_shape(q, num_heads),
                                                                                  dtype=torch.float32)


@torch.library.register_fake("qsnn::spike_attention_backward")
def _backward_fake(grad_y, q, k, v, kv, num_heads, scale):
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    return t.reshape(-1, t.shape[-2], num_heads, t.shape[-1] // num_heads).transpose(1, 2)  # [R, h, N, d]


def _tokens(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).reshape(like.shape).to(like.dtype).contiguous()


def _forward_torch(q, k, v, num_heads, scale):
    """The CPU kernel: the products in torch operations, float32 sums (half inputs are widened)."""
    _check(q, k, v, num_heads)
    qh, kh, vh = (_heads(t, num_heads).to(torch.float32) for t in (q, k, v))
    kv = kh.transpose(-2, -1) @ vh
    return _tokens((qh @ kv) * scale, q), kv.contiguous()


def _backward_torch(grad_y, q, k, v, kv, num_heads, scale):
    gy, qh, kh, vh = (_heads(t, num_heads).to(torch.float32) for t in (grad_y, q, k, v))
    grad_kv = (qh.transpose(-2, -1) @ gy) * scale
    grad_q = (gy @ kv.transpose(-2, -1)) * scale
    return _tokens(grad_q, q), _tokens(vh @ grad_kv.transpose(-2, -1), q), _tokens(kh @ grad_kv, q)


def _forward_triton(q, k, v, num_heads, scale):
    from .triton.spike_attention import spike_attention_triton

    _check(q, k, v, num_heads)
    return spike_attention_triton(q, k, v, num_heads, scale)


def _backward_triton(grad_y, q, k, v, kv, num_heads, scale):
    from .triton.spike_attention import spike_attention_backward_triton

    return spike_attention_backward_triton(grad_y, q, k, v, kv, num_heads, scale)


TRITON_KERNELS = {"spike_attention": _forward_triton, "spike_attention_backward": _backward_triton}
"""The ops' CUDA kernels, also their CPU kernels within
:func:`qsnn_kernels.triton_on_cpu.triton_kernels_on_cpu` (tests, ``TRITON_INTERPRET=1``)."""

for _name, _kernel in TRITON_KERNELS.items():
    torch.library.register_kernel(f"qsnn::{_name}", "cuda", _kernel)
torch.library.register_kernel("qsnn::spike_attention", "cpu", _forward_torch)
torch.library.register_kernel("qsnn::spike_attention_backward", "cpu", _backward_torch)


def _setup_context(ctx, inputs, output):
    q, k, v, num_heads, scale = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.args = (num_heads, scale)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, _grad_kv):
    if grad_y is None:
        return None, None, None, None, None
    q, k, v, kv = ctx.saved_tensors
    grads = torch.ops.qsnn.spike_attention_backward(grad_y, q, k, v, kv, *ctx.args)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None)


torch.library.register_autograd("qsnn::spike_attention", _backward, setup_context=_setup_context)


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float = 1.0
                    ) -> torch.Tensor:
    """``scale * Q (K^T V)`` per head (``num_heads`` groups of consecutive channels) on tokens
    ``[..., N, D]``, in q's dtype, with its gradients (module docstring: op contract, kernels,
    precision). Raises TypeError/ValueError on mixed dtypes, shapes or devices, a dtype outside
    float32/bfloat16/float16, or ``D`` not a multiple of ``num_heads``, before any kernel runs."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"spike_attention: {name} must be a tensor, got {type(t).__name__}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int):
        raise TypeError(f"spike_attention: num_heads must be an int, got {num_heads!r}")
    return torch.ops.qsnn.spike_attention(q, k, v, num_heads, float(scale))[0]
