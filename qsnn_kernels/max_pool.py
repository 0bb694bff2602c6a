"""2-D max pool that saves its argmax in one byte: the ops ``qsnn::max_pool2d_offsets`` and
``qsnn::max_pool2d_offsets_backward`` and the function :func:`max_pool2d_offsets`.

torch's max pool keeps, for its backward, an int64 index into the input plane per output element
(8 bytes). These ops keep the argmax's offset in its window, ``r * kw + s`` (uint8: windows of at
most 256 elements), and rebuild the position in the backward. Values and gradients are torch's
``max_pool2d`` (dilation 1, floor mode, padding with -inf) bit for bit: the same choice of argmax
(the first maximum in window order; a NaN replaces the maximum) and the gradients of each input
element added in the order of the output positions. Oracle: ``torch.nn.functional.max_pool2d``.

Op contract::

    max_pool2d_offsets(x [N, C, H, W], kernel, stride, padding) -> (y [N, C, H', W'] x.dtype,
                                                                     offsets uint8, y's shape)
    max_pool2d_offsets_backward(grad [N, C, H', W'], offsets, input_shape, kernel, stride, padding)
        -> grad_x [N, C, H, W] in grad's dtype

Kernels: CUDA, Triton (qsnn_kernels/triton/max_pool.py: one pass each way, no atomics); CPU, C++
(csrc/max_pool_cpu.cpp: one pass each way, channels-last or not; float32 and float64).
"""

from __future__ import annotations

import torch

__all__ = ["max_pool2d_offsets"]

MAX_WINDOW = 256
"""Largest ``kh * kw`` whose offsets fit a byte."""

torch.library.define("qsnn::max_pool2d_offsets",
                     "(Tensor x, int[2] kernel, int[2] stride, int[2] padding) -> (Tensor, Tensor)")
torch.library.define("qsnn::max_pool2d_offsets_backward",
                     "(Tensor grad, Tensor offsets, SymInt[4] input_shape, int[2] kernel, int[2] stride, "
                     "int[2] padding) -> Tensor")


def _output_size(shape, kernel, stride, padding) -> tuple[int, int]:
    return tuple((shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2))


def output_like(x: torch.Tensor, shape, dtype) -> torch.Tensor:
    """An empty output of the ops (every kernel's and the fakes'): channels-last when ``x`` is
    channels-last and not also contiguous (the output and offsets follow ``x``, the input gradient
    the offsets), else contiguous."""
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=x.device, memory_format=fmt)


@torch.library.register_fake("qsnn::max_pool2d_offsets")
def _forward_fake(x, kernel, stride, padding):
    oh, ow = _output_size(x.shape, kernel, stride, padding)
    y = output_like(x, (x.shape[0], x.shape[1], oh, ow), x.dtype)
    return y, torch.empty_like(y, dtype=torch.uint8)


@torch.library.register_fake("qsnn::max_pool2d_offsets_backward")
def _backward_fake(grad, offsets, input_shape, kernel, stride, padding):
    return output_like(offsets, input_shape, grad.dtype)


def _forward_triton(x, kernel, stride, padding):
    from .triton.max_pool import max_pool2d_offsets_triton

    return max_pool2d_offsets_triton(x, kernel, stride, padding)


def _backward_triton(grad, offsets, input_shape, kernel, stride, padding):
    from .triton.max_pool import max_pool2d_offsets_backward_triton

    return max_pool2d_offsets_backward_triton(grad, offsets, input_shape, kernel, stride, padding)


TRITON_KERNELS = {"max_pool2d_offsets": _forward_triton, "max_pool2d_offsets_backward": _backward_triton}
"""The ops' CUDA kernels, also their CPU kernels within
:func:`qsnn_kernels.triton_on_cpu.triton_kernels_on_cpu` (tests, ``TRITON_INTERPRET=1``)."""

for _name, _kernel in TRITON_KERNELS.items():
    torch.library.register_kernel(f"qsnn::{_name}", "cuda", _kernel)


def _setup_context(ctx, inputs, output):
    x, kernel, stride, padding = inputs
    ctx.save_for_backward(output[1])
    ctx.args = (list(x.shape), list(kernel), list(stride), list(padding))
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad, _grad_offsets):
    if grad is None:
        return None, None, None, None
    (offsets,) = ctx.saved_tensors
    return torch.ops.qsnn.max_pool2d_offsets_backward(grad, offsets, *ctx.args), None, None, None


torch.library.register_autograd("qsnn::max_pool2d_offsets", _backward, setup_context=_setup_context)


def _pair(value, name: str) -> list[int]:
    pair = [value, value] if isinstance(value, int) else list(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"max_pool2d_offsets: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def max_pool2d_offsets(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """``torch.nn.functional.max_pool2d(x, kernel_size, stride, padding)`` (values and gradient,
    bit for bit) whose backward saves one byte per output element (module docstring).
    ``x``: a float ``[N, C, H, W]`` tensor (CPU or CUDA). Raises TypeError/ValueError for other
    ranks and dtypes, windows of more than 256 elements, a padding over half the window, or an
    output of size 0."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise TypeError(f"max_pool2d_offsets: x must be a float [N, C, H, W] tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    kernel = _pair(kernel_size, "kernel_size")
    stride = _pair(kernel if stride is None else stride, "stride")
    padding = _pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or kernel[0] * kernel[1] > MAX_WINDOW:
        raise ValueError(f"max_pool2d_offsets: kernel {kernel} and stride {stride} must be >= 1, the window at most "
                         f"{MAX_WINDOW} elements")
    if any(p < 0 or 2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"max_pool2d_offsets: padding {padding} must be in [0, kernel / 2]")
    if min(_output_size(x.shape, kernel, stride, padding)) < 1:
        raise ValueError(f"max_pool2d_offsets: the window {kernel} does not fit the padded input {tuple(x.shape[2:])}")
    return torch.ops.qsnn.max_pool2d_offsets(x, kernel, stride, padding)[0]
