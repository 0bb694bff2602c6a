"""Convolution as a GEMM: the output size and the im2col columns, one place for both."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv_output_size", "im2col_hwc"]


def conv_output_size(size, kernel, stride, padding, dilation=(1, 1)) -> tuple[int, int]:
    """``(H', W')`` of a 2-d convolution of input ``size = (H, W)`` (torch.nn.Conv2d's formula,
    zero padding): ``(H + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1`` per axis.
    Every argument is a pair of ints; a result < 1 means the kernel does not fit."""
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))


def im2col_hwc(x: torch.Tensor, kernel, stride, padding, dilation=(1, 1)) -> tuple[torch.Tensor, int, int]:
    """``x [N, C, H, W]`` (any dtype; differentiable) -> ``(cols, H', W')`` with ``cols``
    ``[N * H' * W', kh * kw * C]``: row ``(n, h', w')`` holds the receptive field of that output
    position in (kh, kw, C) order, zero padding, so ``cols @ w.permute(0, 2, 3, 1).reshape(Cout, -1).T``
    is the convolution (groups = 1). ``H', W'`` are :func:`conv_output_size`'s.

    Built from kh * kw strided slices of the NHWC view, each copied with C contiguous."""
    kh, kw = kernel
    n, c = x.shape[0], x.shape[1]
    oh, ow = conv_output_size(x.shape[2:], kernel, stride, padding, dilation)
    xh = x.permute(0, 2, 3, 1)
    if padding[0] or padding[1]:
        xh = F.pad(xh, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    span_h, span_w = (oh - 1) * stride[0] + 1, (ow - 1) * stride[1] + 1
    rows = [slice(i * dilation[0], i * dilation[0] + span_h, stride[0]) for i in range(kh)]
    cols = [slice(j * dilation[1], j * dilation[1] + span_w, stride[1]) for j in range(kw)]
    slices = [xh[:, r, s, :] for r in rows for s in cols]
    if len(slices) == 1:
        return slices[0].reshape(n * oh * ow, c), oh, ow
    return torch.stack(slices, dim=3).reshape(n * oh * ow, kh * kw * c), oh, ow
