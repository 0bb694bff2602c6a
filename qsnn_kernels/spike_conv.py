"""Convolution of sparse spike levels on the CPU: the ops ``qsnn::spike_conv2d`` (the forward) and
``qsnn::spike_conv2d_weight_grad`` (the weight gradient), stride 1, dilation 1, groups 1.

A spiking layer's input is mostly zeros (55-85% of the levels in a SEW-ResNet); a dense
convolution multiplies every one of them. The kernels (csrc/spike_conv_cpu.cpp) list the nonzero
levels of each input channel once and add only their products, AVX2 where the CPU has it. The
spike-input convolutions of ``models/int8.py`` use them on the CPU where they apply
(:func:`applies`).

Op contract::

    spike_conv2d(levels [N, C, H, W] uint8, codes [Cout, C, kh, kw] int8, scale [Cout] float32,
                 in_scale, padding) -> [N, Cout, H', W'] float32
        out[n, co, y, x] = (sum over ci, i, j of levels[n, ci, y - padding[0] + i, x - padding[1] + j]
                            * codes[co, ci, i, j]) * (scale[co] * in_scale)
    spike_conv2d_weight_grad(grad [N, Cout, H', W'] float32, levels [N, C, H, W] uint8, in_scale,
                             kernel_size, padding) -> [Cout, C, kh, kw] float32
        grad_weight[co, ci, i, j] = in_scale * sum over n, y, x of
                                    levels[n, ci, y, x] * grad[n, co, y + padding[0] - i, x + padding[1] - j]

with ``H' = H + 2 * padding[0] - kh + 1`` (likewise W'), each padding in ``[0, kernel size)``
(zero padding). The forward's sums are exact where float32 holds them (every partial sum below
2^24: ``C * kh * kw * max level * max |code| < 2^24``, which the caller checks), so its values are
the exact integer product times ``scale[co] * in_scale`` (that factor rounded to float32 first),
rounded once. Where more of the levels are nonzero than ``kMaxForwardDensity``
(csrc/spike_conv_cpu.cpp) it runs the dense float convolution of the same integers instead:
faster there, and as exact. The weight gradient is that of ``conv2d(levels * in_scale, weight)``:
it sums the same products as the dense backward in another order, so it equals it to float
rounding. Bad input (dtype, device, shapes, padding) is a TypeError/ValueError before the kernels
run.
Oracle: ``torch.nn.functional.conv2d`` and its backward on ``levels * in_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["applies", "spike_conv2d", "spike_conv2d_weight_grad"]

torch.library.define("qsnn::spike_conv2d",
                     "(Tensor levels, Tensor codes, Tensor scale, float in_scale, int[2] padding) -> Tensor")
torch.library.define("qsnn::spike_conv2d_weight_grad",
                     "(Tensor grad, Tensor levels, float in_scale, int[2] kernel_size, int[2] padding) -> Tensor")


@torch.library.register_fake("qsnn::spike_conv2d")
def _forward_fake(levels, codes, scale, in_scale, padding):
    oh, ow = (levels.shape[2 + i] + 2 * padding[i] - codes.shape[2 + i] + 1 for i in range(2))
    return levels.new_empty((levels.shape[0], codes.shape[0], oh, ow), dtype=torch.float32)


@torch.library.register_fake("qsnn::spike_conv2d_weight_grad")
def _weight_grad_fake(grad, levels, in_scale, kernel_size, padding):
    return grad.new_empty((grad.shape[1], levels.shape[1], *kernel_size), dtype=torch.float32)


def applies(device: torch.device, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], groups: int) -> bool:
    """Whether the ops compute this convolution: levels on the CPU, stride 1, dilation 1, groups 1
    and each padding below its kernel size."""
    return (torch.device(device).type == "cpu" and list(stride) == [1, 1] and list(dilation) == [1, 1] and groups == 1
            and all(0 <= p < k for p, k in zip(padding, kernel_size)))


def spike_conv2d(levels: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, in_scale: float,
                 padding: Sequence[int]) -> torch.Tensor:
    """The convolution of spike ``levels`` (uint8) with weight ``codes`` (int8), each output
    channel times ``scale[co] * in_scale`` (op ``qsnn::spike_conv2d``; the module docstring has
    the contract)."""
    return torch.ops.qsnn.spike_conv2d(levels, codes, scale, float(in_scale), list(padding))


def spike_conv2d_weight_grad(grad: torch.Tensor, levels: torch.Tensor, in_scale: float, kernel_size: Sequence[int],
                             padding: Sequence[int]) -> torch.Tensor:
    """The weight gradient of the convolution of the spikes ``levels * in_scale`` (uint8 levels)
    for the output gradient ``grad`` (op ``qsnn::spike_conv2d_weight_grad``; the module docstring
    has the contract)."""
    return torch.ops.qsnn.spike_conv2d_weight_grad(grad, levels, float(in_scale), list(kernel_size), list(padding))
