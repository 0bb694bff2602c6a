"""The weight gradient of a convolution of sparse spike levels on the CPU: the op
``qsnn::spike_conv2d_weight_grad`` (stride 1, dilation 1, groups 1).

A spiking layer's input is mostly zeros (55-85% of the levels in a SEW-ResNet); the dense
convolution backward multiplies every one of them into the weight gradient. The kernel
(csrc/spike_conv_cpu.cpp) lists the nonzero levels of each input channel once and sums only
their products, AVX2 where the CPU has it. The spike-input convolutions of ``models/int8.py``
use it in their backward where it applies (:func:`applies`).

Op contract::

    spike_conv2d_weight_grad(grad [N, Cout, H', W'] float32, levels [N, C, H, W] uint8, in_scale,
                             kernel_size, padding) -> [Cout, C, kh, kw] float32
        grad_weight[co, ci, i, j] = in_scale * sum over n, y, x of
                                    levels[n, ci, y, x] * grad[n, co, y + padding[0] - i, x + padding[1] - j]

with ``H' = H + 2 * padding[0] - kh + 1`` (likewise W'), each padding in ``[0, kernel size)``:
the weight gradient of ``conv2d(levels * in_scale, weight, padding=padding)``. It sums the same
products as the dense backward in another order, so it equals it to float rounding. Bad input
(dtype, device, shapes, padding) is a TypeError/ValueError before the kernel runs. Oracle: the
backward of ``torch.nn.functional.conv2d`` on ``levels * in_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["applies", "spike_conv2d_weight_grad"]

torch.library.define("qsnn::spike_conv2d_weight_grad",
                     "(Tensor grad, Tensor levels, float in_scale, int[2] kernel_size, int[2] padding) -> Tensor")


@torch.library.register_fake("qsnn::spike_conv2d_weight_grad")
def _fake(grad, levels, in_scale, kernel_size, padding):
    return grad.new_empty((grad.shape[1], levels.shape[1], *kernel_size), dtype=torch.float32)


def applies(device: torch.device, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], groups: int) -> bool:
    """Whether the op computes the weight gradient of this convolution: levels on the CPU,
    stride 1, dilation 1, groups 1 and each padding below its kernel size."""
    return (torch.device(device).type == "cpu" and list(stride) == [1, 1] and list(dilation) == [1, 1] and groups == 1
            and all(0 <= p < k for p, k in zip(padding, kernel_size)))


def spike_conv2d_weight_grad(grad: torch.Tensor, levels: torch.Tensor, in_scale: float, kernel_size: Sequence[int],
                             padding: Sequence[int]) -> torch.Tensor:
    """The weight gradient of the convolution of the spikes ``levels * in_scale`` (uint8 levels)
    for the output gradient ``grad`` (op ``qsnn::spike_conv2d_weight_grad``; the module docstring
    has the contract)."""
    return torch.ops.qsnn.spike_conv2d_weight_grad(grad, levels, float(in_scale), list(kernel_size), list(padding))
